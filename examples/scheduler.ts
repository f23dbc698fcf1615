/**
 * A leader-elected scheduler: `npx tsx examples/scheduler.ts` (`CONCLAVE_ENDPOINTS=host:port` for
 * a real etcd).
 *
 * Three scheduler instances run `election.runWhileLeader(job)` in one `Election`; only the leader
 * runs the periodic job, and its loop stops the moment its leadership is lost.
 * Each run is recorded with a txn guarded by `leadership.guard()`, so a run is written only while
 * its instance still leads: the fencing token (the leadership's create revision) of recorded runs
 * never goes down, even when a paused ex-leader wakes up and tries to run the job late.
 *
 * Scenes: the first leader runs the job; its process crashes (its client vanishes without
 * resigning) and another instance takes over once the crashed session's lease expires; the
 * crashed leader, "waking up", is fenced off; on the embedded store, the store member that leads
 * Raft is killed and the scheduler keeps its leadership and keeps running. Exits 0.
 */
import { Election, type KV, type Leadership, Session, toText } from '../index.js';
import { openTarget } from './target.js';

const jobIntervalMs = 100;

interface Run {
  readonly n: number;
  readonly by: string;
  readonly token: number;
}

/** One scheduler instance: runs the job while it leads (`runWhileLeader`). */
class Scheduler {
  leadership: Leadership | undefined;
  runs = 0;
  error: unknown;
  readonly #stop = new AbortController();
  done: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly kv: KV,
    readonly session: Session,
    readonly prefix: string,
    readonly log: (line: string) => void,
  ) {}

  start(): void {
    // A crashed or stopped instance's loop ends with an error (closed client, lost session,
    // abort); keep it for inspection instead of letting it surface as an unhandled rejection.
    this.done = this.#loop().catch((err: unknown) => {
      this.error = err;
    });
  }

  #loop(): Promise<void> {
    const election = new Election(this.session, `${this.prefix}election`);
    // Campaigns, runs the function while leading (its signal aborts when leadership is lost),
    // resigns when it returns, and campaigns again; stop() ends it normally.
    return election.runWhileLeader(
      async ({ signal, token, leadership }) => {
        this.leadership = leadership;
        this.log(`${this.name} leads (token ${token})`);
        while (!signal.aborted) {
          if (!(await runJob(this.kv, this.prefix, this.name, leadership))) return;
          this.runs++;
          await new Promise((r) => setTimeout(r, jobIntervalMs));
        }
      },
      { value: this.name, signal: this.#stop.signal },
    );
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.done;
  }
}

/**
 * Records one run of the job, only if `leadership` still holds (one txn: the guard, then the
 * sequence number bump and the run record). Returns false when fenced off.
 */
async function runJob(kv: KV, prefix: string, by: string, leadership: Leadership): Promise<boolean> {
  const seqKey = `${prefix}seq`;
  const cur = await kv.get(seqKey);
  const n = cur ? Number(toText(cur.value)) + 1 : 1;
  const run: Run = { n, by, token: leadership.token };
  const t = await kv.txn({
    compare: [leadership.guard(), { key: seqKey, target: 'mod', result: '=', value: cur?.modRevision ?? 0 }],
    success: [
      { type: 'put', key: seqKey, value: String(n) },
      { type: 'put', key: `${prefix}runs/${String(n).padStart(6, '0')}`, value: JSON.stringify(run) },
    ],
    failure: [],
  });
  return t.succeeded;
}

async function waitRuns(s: Scheduler, count: number, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  const start = s.runs;
  while (s.runs < start + count) {
    if (s.error) throw new Error(`${s.name} stopped: ${String(s.error)}`);
    if (Date.now() > until)
      throw new Error(`${s.name} ran ${s.runs - start} of ${count} jobs in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs the scenes; every line goes through `log` (the test reads them). */
export async function runScenario(log: (line: string) => void): Promise<void> {
  const target = await openTarget();
  const prefix = `examples/scheduler/${Date.now().toString(36)}/`;
  log(`on ${target.label}`);
  const ttlSeconds = Math.max(2, target.minTtlSeconds);
  const instances: Scheduler[] = [];
  try {
    for (const name of ['sched-a', 'sched-b', 'sched-c']) {
      const kv = await target.client();
      const session = await Session.create(kv, { ttlSeconds });
      instances.push(new Scheduler(name, kv, session, prefix, log));
    }
    const [a, b, c] = instances as [Scheduler, Scheduler, Scheduler];
    a.start();
    await waitRuns(a, 3);
    b.start();
    c.start();
    log(`${a.name} ran the job ${a.runs} times; ${b.name} and ${c.name} wait`);

    // sched-a's process crashes: its client disappears, nothing is resigned or revoked.
    const stale = a.leadership!;
    const crashedAt = performance.now();
    await a.kv.close();
    log(`${a.name} crashed; its lease expires within ${ttlSeconds} s`);
    while (!b.leadership && !c.leadership) await new Promise((r) => setTimeout(r, 10));
    const next = b.leadership ? b : c;
    log(`${next.name} took over after ${((performance.now() - crashedAt) / 1000).toFixed(1)} s`);
    await waitRuns(next, 3);

    // The crashed leader "wakes up" (say, after a long GC pause) and tries to run the job.
    const zombie = await target.client();
    const ran = await runJob(zombie, prefix, a.name, stale);
    log(`${a.name} woke up and tried to run the job: ${ran ? 'IT RAN (fencing failed!)' : 'fenced off'}`);

    if (target.killLeaderMember) {
      const id = await target.killLeaderMember(500);
      log(
        `store member ${id} (the Raft leader) killed; ${next.name} still leads: ${!next.leadership!.lost.aborted}`,
      );
      await waitRuns(next, 3);
      log(`${next.name} kept running the job through the store failover`);
    }

    const runs = await target.kv.range(`${prefix}runs/`, { prefix: true });
    const records = runs.kvs.map((kv) => JSON.parse(toText(kv.value)) as Run);
    const monotonic = records.every((r, i) => i === 0 || r.token >= records[i - 1]!.token);
    const gapless = records.every((r, i) => r.n === i + 1);
    log(
      `${records.length} runs recorded by ${[...new Set(records.map((r) => r.by))].join(', ')}; tokens never went down: ${monotonic}; no run number skipped or repeated: ${gapless}`,
    );
  } finally {
    await Promise.all(instances.slice(1).map((s) => s.stop()));
    await Promise.all(instances.map((s) => s.session.close().catch(() => undefined)));
    await target.kv.delete(prefix, { prefix: true }).catch(() => undefined);
    await target.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log('Leader-elected scheduler');
  runScenario((line) => console.log(`  ${line}`)).then(
    () => {
      console.log('Done.');
      process.exit(0);
    },
    (err) => {
      console.error(`scheduler failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      process.exit(1);
    },
  );
}
