/**
 * `npm start`: a short, readable tour of Conclave's KV contract and Session.
 *
 * Target: CONCLAVE_ENDPOINTS=host:port,… (real etcd) if set; otherwise the embedded 3-node Raft
 * store (`embedded:?nodes=3`, memory storage); a private etcd from the `etcd` binary on PATH only
 * if the embedded backend cannot start. It prints what happens and exits 0.
 */
import { type ConclaveError, connect, Election, type KV, Mutex, Session, toText } from '../src/index.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../test/harness/etcd.js';

const log = (...a: unknown[]) => console.log('  ', ...a);

async function openTarget(): Promise<{ kv: KV; label: string; cluster?: EtcdCluster }> {
  const env = process.env.CONCLAVE_ENDPOINTS;
  if (env) return { kv: await connect(`etcd://${env}`), label: `etcd at ${env}` };
  try {
    const kv = await connect('embedded:?nodes=3');
    return { kv, label: 'embedded 3-node Raft cluster' };
  } catch (err) {
    console.log(`(embedded Raft backend unavailable: ${(err as Error).message})`);
  }
  if (!etcdBinary()) {
    throw new Error(
      'no target: set CONCLAVE_ENDPOINTS=host:port or install etcd (apt-get install -y etcd-server)',
    );
  }
  const cluster = (await startEtcd({ members: 3 }))!;
  return {
    kv: await connect({ backend: 'etcd', endpoints: cluster.endpoints }),
    label: `a private 3-member etcd (${cluster.endpoints.join(', ')})`,
    cluster,
  };
}

async function counterWithCas(kv: KV, key: string): Promise<void> {
  console.log('\n1. Four workers increment one counter with compare-and-swap on mod revision');
  await kv.put(key, '0');
  let conflicts = 0;
  const worker = async () => {
    for (let i = 0; i < 25; i++) {
      while (true) {
        const cur = (await kv.get(key))!;
        const next = String(Number(toText(cur.value)) + 1);
        const t = await kv.txn({
          compare: [{ key, target: 'mod', result: '=', value: cur.modRevision }],
          success: [{ type: 'put', key, value: next }],
          failure: [],
        });
        if (t.succeeded) break;
        conflicts++;
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  log(`final value ${toText((await kv.get(key))!.value)} (expected 100), ${conflicts} CAS conflicts retried`);
}

async function configWatch(kv: KV, prefix: string): Promise<void> {
  console.log('\n2. A watcher sees a multi-key config update as one revision');
  const w = kv.watch(prefix, { prefix: true, prevKv: true });
  await w.ready;
  const t = await kv.txn({
    compare: [],
    success: [
      { type: 'put', key: `${prefix}pool-size`, value: '16' },
      { type: 'put', key: `${prefix}timeout-ms`, value: '250' },
    ],
    failure: [],
  });
  for await (const batch of w) {
    log(
      `revision ${batch.revision}: ${batch.events.map((e) => `${toText(e.kv.key).slice(prefix.length)}=${toText(e.kv.value)}`).join(', ')} (txn revision ${t.revision})`,
    );
    break;
  }
  await w.close();
}

async function sessionLoss(kv: KV, key: string): Promise<void> {
  console.log('\n3. A session holds a key under its lease; revoking the lease fires session.lost');
  const s = await Session.create(kv, { ttlSeconds: 5 });
  await kv.put(key, 'owned', { lease: s.lease });
  log(`session lease ${s.lease.toString(16)} holds ${key}`);
  const lost = new Promise<unknown>((r) => s.lost.addEventListener('abort', () => r(s.lost.reason)));
  await kv.lease.revoke(s.lease);
  const reason = (await lost) as ConclaveError;
  log(`session.lost fired: ${reason.code} — key now ${(await kv.get(key)) ? 'present' : 'gone'}`);
  await s.close();
}

async function lockContention(kv: KV, name: string): Promise<void> {
  console.log('\n4. Three workers contend for one Mutex; tokens (fencing) grow with each owner');
  const sessions = await Promise.all([1, 2, 3].map(() => Session.create(kv, { ttlSeconds: 5 })));
  let inside = 0;
  await Promise.all(
    sessions.map(async (s, i) => {
      for (let round = 0; round < 2; round++) {
        await using lock = await new Mutex(s, name).lock();
        inside++;
        log(`worker ${i + 1} holds the lock, token ${lock.token}, ${inside} inside`);
        await new Promise((r) => setTimeout(r, 20));
        inside--;
      }
    }),
  );
  await Promise.all(sessions.map((s) => s.close()));
}

async function electionFailover(kv: KV, name: string): Promise<void> {
  console.log("\n5. An election: the leader's session dies, the next candidate takes over");
  const a = await Session.create(kv, { ttlSeconds: 5 });
  const b = await Session.create(kv, { ttlSeconds: 5 });
  const leaderA = await new Election(a, name).campaign('node-a');
  log(`node-a leads, term ${leaderA.token}`);
  const next = new Election(b, name).campaign('node-b');
  await new Promise((r) => setTimeout(r, 100));
  await kv.lease.revoke(a.lease); // node-a's session dies
  const leaderB = await next;
  log(`node-a lost leadership: ${leaderA.lost.aborted}; node-b leads, term ${leaderB.token}`);
  await leaderB.resign();
  await Promise.all([a.close(), b.close()]);
}

async function main(): Promise<void> {
  const { kv, label, cluster } = await openTarget();
  console.log(`Conclave demo on ${label}`);
  const run = `demo/${Date.now().toString(36)}/`;
  try {
    await counterWithCas(kv, `${run}counter`);
    await configWatch(kv, `${run}config/`);
    await sessionLoss(kv, `${run}owner`);
    await lockContention(kv, `${run}lock`);
    await electionFailover(kv, `${run}election`);
    console.log('\nDone.');
  } finally {
    await kv.delete(run, { prefix: true }).catch(() => undefined);
    await kv.close();
    await cluster?.stop();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`demo failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
