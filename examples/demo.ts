/**
 * `npm start` (= `npm run demo`): a short, readable tour of Conclave's recipes.
 *
 * Target: CONCLAVE_ENDPOINTS=host:port,… (a real etcd) if set; otherwise an embedded 3-node Raft
 * cluster in this process (memory storage). Every scene runs with several independent clients,
 * as separate processes would; "crashing" a process means closing its client without cleaning up,
 * so the store only learns of it when the session's lease expires. On the embedded cluster the
 * election scene also kills the store member that leads Raft. It prints what happens and exits 0.
 */
import { z } from 'zod';
import {
  Counter,
  Election,
  type KV,
  Mutex,
  type Observation,
  PickStrategy,
  ServiceRegistry,
  ServiceResolver,
  Session,
  setConfig,
  toText,
  WorkQueue,
  watchConfig,
} from '../index.js';
import { openTarget, type Target } from './target.js';

const log = (...a: unknown[]) => console.log('  ', ...a);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const secondsSince = (t: number) => `${((performance.now() - t) / 1000).toFixed(1)} s`;

/** Waits (bounded) until `cond()` holds. */
async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function lockContention(t: Target, name: string, ttlSeconds: number): Promise<void> {
  console.log('\n1. Four workers contend for one Mutex (FIFO); fencing tokens grow with each owner');
  const sessions = await Promise.all(
    [1, 2, 3, 4].map(async () => Session.create(await t.client(), { ttlSeconds })),
  );
  let inside = 0;
  let overlaps = 0;
  const tokens: number[] = [];
  await Promise.all(
    sessions.map(async (s, i) => {
      for (let round = 0; round < 2; round++) {
        await using lock = await new Mutex(s, name).lock();
        if (++inside > 1) overlaps++;
        tokens.push(lock.token);
        log(`worker ${i + 1} holds the lock, token ${lock.token}`);
        await sleep(15);
        inside--;
      }
    }),
  );
  const increasing = tokens.every((tk, i) => i === 0 || tk > tokens[i - 1]!);
  log(`8 critical sections, ${overlaps} overlaps; tokens strictly increasing: ${increasing}`);
  await Promise.all(sessions.map((s) => s.close()));
}

async function electionFailover(t: Target, name: string, ttlSeconds: number): Promise<void> {
  console.log("\n2. An election: the leader's process crashes, the next candidate takes over");
  const candidates = await Promise.all(
    ['node-a', 'node-b', 'node-c'].map(async (id) => {
      const kv = await t.client();
      return { id, kv, session: await Session.create(kv, { ttlSeconds }) };
    }),
  );
  const [a, b, c] = candidates as [(typeof candidates)[0], (typeof candidates)[0], (typeof candidates)[0]];
  const watcher = new AbortController();
  const seen: string[] = [];
  const observer = (async () => {
    const s = await Session.create(await t.client(), { ttlSeconds });
    for await (const o of new Election(s, name).observe({
      signal: watcher.signal,
    }) as AsyncIterable<Observation>)
      seen.push(o.leader ? toText(o.leader.value) : '(no leader)');
  })().catch(() => undefined);

  const leaderA = await new Election(a.session, name).campaign('node-a');
  log(`node-a leads, term ${leaderA.token}`);
  const others = [b, c].map(async (x) => ({ x, l: await new Election(x.session, name).campaign(x.id) }));
  await sleep(100);
  const crashedAt = performance.now();
  await a.kv.close(); // node-a's process dies: no resign, its lease runs out
  log(`node-a crashed; its session's lease (${ttlSeconds} s) must expire first`);
  const next = await Promise.race(others);
  log(`${next.x.id} leads after ${secondsSince(crashedAt)}, term ${next.l.token} (> ${leaderA.token})`);

  if (t.killLeaderMember) {
    const id = await t.killLeaderMember(300);
    log(
      `store member ${id} (the Raft leader) killed and restarted; ${next.x.id} still leads: ${!next.l.lost.aborted}`,
    );
  }
  await next.l.resign();
  const third = await others[next.x === b ? 1 : 0]!;
  log(`${next.x.id} resigned; ${third.x.id} leads, term ${third.l.token}`);
  await until(() => seen.at(-1) === third.x.id, 'the observer to see the last leader');
  log(`an observer saw: ${seen.join(' → ')}`);
  watcher.abort();
  await observer;
  await third.l.resign();
  await Promise.all([b, c].map((x) => x.session.close()));
}

const AppConfig = z.object({
  poolSize: z.number().int().min(1).max(64),
  timeoutMs: z.number().int().positive(),
});

async function configHotReload(t: Target, prefix: string): Promise<void> {
  console.log('\n3. Config hot reload: a multi-key update lands atomically; an invalid one is rejected');
  (await setConfig(t.kv, prefix, { poolSize: 8, timeoutMs: 500 })).unwrap();
  await using watcher = await watchConfig(await t.client(), prefix, { schema: AppConfig });
  const changes = watcher.changes();
  log(`service starts with ${JSON.stringify(watcher.current)} (revision ${watcher.revision})`);
  await setConfig(t.kv, prefix, { poolSize: 16, timeoutMs: 250 });
  const u = (await changes.next()).value!;
  log(
    `${u.type} at revision ${u.revision}: ${JSON.stringify(u.config)} (${u.changedKeys.length} keys, one revision)`,
  );
  await t.kv.put(`${prefix}poolSize`, '1000');
  const r = (await changes.next()).value!;
  const why = r.result.isErr() ? r.result.error.issues.map((i) => i.message).join('; ') : '';
  log(`${r.type} at revision ${r.revision} (${why}); still serving ${JSON.stringify(watcher.current)}`);
  await changes.return(undefined);
}

async function workQueue(t: Target, name: string, ttlSeconds: number): Promise<void> {
  console.log(
    '\n4. A work queue: a consumer crashes mid-job; its job comes back after the visibility timeout',
  );
  const producer = new WorkQueue(await Session.create(t.kv, { ttlSeconds }), name, {
    visibilityTimeoutSeconds: ttlSeconds,
    attemptsMax: 2,
  });
  for (let i = 1; i <= 5; i++) await producer.add(`job-${i}`);
  await producer.add('poison');
  log(
    `added job-1..job-5 and a "poison" job that always fails; stats ${JSON.stringify(await stats(producer))}`,
  );

  // Consumer A claims one job and its process dies before acking.
  const kvA = await t.client();
  const crashed = await new WorkQueue(await Session.create(kvA, { ttlSeconds }), name, {
    visibilityTimeoutSeconds: ttlSeconds,
  }).claim();
  const crashedAt = performance.now();
  log(`consumer A claimed ${toText(crashed.value)} (attempt 1) and crashed`);
  await kvA.close();

  // Consumer B processes everything, two at a time.
  const b = new WorkQueue(await Session.create(await t.client(), { ttlSeconds }), name, {
    visibilityTimeoutSeconds: ttlSeconds,
  });
  const done: string[] = [];
  const stop = new AbortController();
  const processing = b.process(
    async (job) => {
      const what = toText(job.value);
      if (what === 'poison') throw new Error('cannot parse the payload');
      done.push(what);
      if (job.id === crashed.id)
        log(`consumer B got ${what} back after ${secondsSince(crashedAt)} and finished it`);
    },
    { concurrency: 2, signal: stop.signal },
  );
  await until(() => done.length === 5, 'all five jobs');
  let s = await stats(producer);
  await until(() => s.dead === 1 && s.ready + s.inFlight + s.delayed === 0, 'the dead letter', 20_000).catch(
    () => undefined,
  );
  for (let i = 0; i < 100 && !(s.dead === 1 && s.ready + s.inFlight === 0); i++) {
    await sleep(50);
    s = await stats(producer);
  }
  // Stopping is the normal end: process() resolves once its running handlers have settled their
  // jobs; it would reject only on a failure (the session lost, the store failing).
  stop.abort();
  await processing;
  const dead = await producer.deadLetters();
  log(`done: ${[...done].sort().join(', ')} — each once; stats ${JSON.stringify(s)}`);
  log(
    `dead letter: ${dead.map((d) => `${toText(d.value)} after ${d.attempts} attempts (${d.lastError})`).join(', ')}`,
  );
  await Promise.all([producer.close(), b.close()]);
}

async function stats(q: WorkQueue) {
  const { ready, inFlight, delayed, dead } = await q.stats();
  return { ready, inFlight, delayed, dead };
}

async function serviceDiscovery(t: Target, service: string, ttlSeconds: number): Promise<void> {
  console.log('\n5. Service discovery: two instances register; one dies and drops out of the live list');
  const registry = new ServiceRegistry();
  const kv1 = await t.client();
  const s1 = await Session.create(kv1, { ttlSeconds });
  const s2 = await Session.create(await t.client(), { ttlSeconds });
  await registry.register(s1, service, { id: 'api-1', addr: '10.0.0.1:8080', metadata: { zone: 'a' } });
  await registry.register(s2, service, { id: 'api-2', addr: '10.0.0.2:8080', metadata: { zone: 'b' } });
  await using resolver = await new ServiceResolver(await t.client(), service).start();
  const changes = resolver.changes();
  log(`resolver sees ${resolver.instances.map((i) => `${i.id}@${i.addr}`).join(', ')}`);
  const picks = [1, 2, 3, 4].map(() => resolver.pick({ strategy: PickStrategy.RoundRobin })?.id);
  log(`round-robin picks: ${picks.join(', ')}`);
  const raw = await t.kv.get(`${service}/api-1`);
  log(`stored as etcd's naming JSON: ${raw ? toText(raw.value) : '(missing)'}`);
  const diedAt = performance.now();
  await kv1.close(); // api-1's process dies
  while (resolver.instances.some((i) => i.id === 'api-1')) {
    const c = await changes.next();
    if (c.done) break;
  }
  log(
    `api-1 died; the resolver dropped it after ${secondsSince(diedAt)}; live: ${resolver.instances.map((i) => i.id).join(', ')}`,
  );
  await changes.return(undefined);
  await registry.close().catch(() => undefined);
  await s2.close();
}

async function counter(kv: KV, name: string): Promise<void> {
  console.log('\n6. A Counter: four clients add concurrently; no update is lost');
  const c = new Counter(kv, name);
  await Promise.all(
    [1, 2, 3, 4].map(async () => {
      for (let i = 0; i < 25; i++) await c.increment();
    }),
  );
  log(`final value ${(await c.get()).value} (expected 100)`);
}

async function main(): Promise<void> {
  const t = await openTarget();
  console.log(`Conclave demo on ${t.label}`);
  const run = `demo/${Date.now().toString(36)}/`;
  const ttlSeconds = Math.max(2, t.minTtlSeconds);
  try {
    await lockContention(t, `${run}lock`, ttlSeconds);
    await electionFailover(t, `${run}election`, ttlSeconds);
    await configHotReload(t, `${run}config/`);
    await workQueue(t, `${run}jobs`, ttlSeconds);
    await serviceDiscovery(t, `${run}services/api`, ttlSeconds);
    await counter(t.kv, `${run}counter`);
    console.log('\nDone.');
  } finally {
    await t.kv.delete(run, { prefix: true }).catch(() => undefined);
    await t.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`demo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
