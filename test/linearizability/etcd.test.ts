/**
 * The checker validated on real etcd: a recorded workload through Conclave's etcd client against
 * a 3-member etcd (one member SIGKILLed mid-run when we started the processes) must come out 'ok';
 * the same history with one injected anomaly must come out 'illegal'.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { checkOperations } from './checker.js';
import { type EtcdOperation, etcdModelAt } from './model.js';
import { runWorkload, type WorkloadResult } from './recorder.js';

const available = !!process.env.ETCD_ENDPOINTS || !!etcdBinary();
const run = available || process.env.REQUIRE_ETCD === '1';
if (!run) console.warn('\n!!!!!!!! SKIPPING the etcd linearizability test: no etcd !!!!!!!!\n');
const seed = Number(process.env.LIN_SEED ?? 17);

describe.skipIf(!run)('linearizability on real etcd (3 members)', () => {
  let cluster: EtcdCluster | undefined;
  const kvs: KV[] = [];
  let recorded: WorkloadResult;

  beforeAll(async () => {
    cluster = await startEtcd({ members: 3 });
    if (!cluster) throw new Error('etcd is required but was not found');
    for (let i = 0; i < 8; i++) kvs.push(await connect({ backend: 'etcd', endpoints: cluster.endpoints }));
  });
  afterAll(async () => {
    await Promise.all(kvs.map((kv) => kv.close()));
    await cluster?.stop();
  });

  it(`a recorded workload is linearizable (seed ${seed}; replay: LIN_SEED=${seed})`, async () => {
    const prefix = `lin/${seed}/${Date.now()}/`;
    let killed = false;
    const killer = (async () => {
      // A member SIGKILLed a third of the way in: clients on it fail over; the other two keep quorum.
      if (!cluster?.pids.length) return;
      await new Promise((r) => setTimeout(r, 1500));
      process.kill(cluster.pids[2]!, 'SIGKILL');
      killed = true;
    })();
    recorded = await runWorkload(kvs, prefix, { seed, opsMax: 2500, durationMs: 6000, opTimeoutMs: 2000 });
    await killer;
    const h = recorded.history;
    const model = etcdModelAt(recorded.initialRevision);
    const r = checkOperations(model, h, { timeoutMs: 10_000 });
    console.log(
      `etcd: ${h.length} ops recorded in ${recorded.elapsedMs.toFixed(0)} ms (${recorded.unknown} unknown,${killed ? ' member m2 SIGKILLed at 1.5 s,' : ''} ${recorded.dropped} failed without effect) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    if (r.result === 'illegal') console.log(r.report);
    // A loaded 2-core machine records a few hundred; enough to check (the verdict is what matters).
    expect(h.length).toBeGreaterThan(100);
    expect(r.result).toBe('ok');
  }, 40_000);

  it('the same history with a read edited to a stale value is illegal', () => {
    const h = recorded.history;
    // A get that saw mod revision m, where an earlier definite write of that key at a lower
    // revision exists and the write at m returned before the get was invoked: hand the get the
    // older value, so it is stale for certain.
    const writes = h.filter((o) => o.output?.type === 'put' && o.input.type === 'put');
    let edited: EtcdOperation[] | undefined;
    for (const [i, g] of h.entries()) {
      if (g.input.type !== 'get' || g.output?.type !== 'get' || !g.output.kv) continue;
      const key = g.input.key;
      const kv = g.output.kv;
      const latest = writes.find(
        (w) => w.input.type === 'put' && w.input.key === key && w.output!.revision === kv.mod,
      );
      if (!latest || latest.return >= g.call) continue;
      const older = writes.find(
        (w) =>
          w.input.type === 'put' &&
          w.input.key === key &&
          w.output!.revision < kv.mod &&
          w.output!.revision >= kv.create,
      );
      if (older?.input.type !== 'put') continue;
      edited = h.slice();
      edited[i] = {
        ...g,
        output: {
          ...g.output,
          kv: { ...kv, value: older.input.value, mod: older.output!.revision, version: kv.version - 1 },
        },
      };
      break;
    }
    expect(edited, 'no read in the history qualified for the stale edit').toBeDefined();
    const r = checkOperations(etcdModelAt(recorded.initialRevision), edited!, { timeoutMs: 10_000 });
    if (r.result === 'illegal') console.log(`stale read injected:\n${r.report}`);
    expect(r.result).toBe('illegal');
  });

  it('the same history with an acknowledged write dropped is illegal', () => {
    const h = recorded.history;
    // Drop a definite put in the middle of the history: the later revisions cannot be explained.
    const mid = h.findIndex((o, i) => i > h.length / 2 && o.output?.type === 'put');
    expect(mid).toBeGreaterThan(0);
    const dropped = [...h.slice(0, mid), ...h.slice(mid + 1)];
    const r = checkOperations(etcdModelAt(recorded.initialRevision), dropped, { timeoutMs: 10_000 });
    expect(r.result).toBe('illegal');
  });
});
