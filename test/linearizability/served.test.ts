/**
 * The same recorded workload against a 3-process `conclave serve` cluster, through Conclave's etcd
 * client, with the leader SIGKILLed mid-run and restarted on its data dir: must be 'ok'.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { checkOperations } from './checker.js';
import { etcdModelAt } from './model.js';
import { runWorkload } from './recorder.js';

const seed = Number(process.env.LIN_SEED ?? 17);

describe('linearizability on conclave serve (3 processes)', () => {
  let cluster: ServedCluster;
  const kvs: KV[] = [];
  beforeAll(async () => {
    cluster = await startServed({ members: 3 });
    for (let i = 0; i < 8; i++) kvs.push(await connect(`etcd://${cluster.endpoints.join(',')}`));
  });
  afterAll(async () => {
    await Promise.all(kvs.map((kv) => kv.close()));
    await cluster?.close();
  });

  it(`a recorded workload with the leader killed and restarted is linearizable (seed ${seed})`, async () => {
    let killed = -1;
    const fault = (async () => {
      await new Promise((r) => setTimeout(r, 1500));
      killed = await cluster.waitLeader();
      await cluster.kill(killed);
      await cluster.restart(killed);
    })();
    // Long enough that the workload records well past the restart even on a loaded machine.
    const rec = await runWorkload(kvs, `lin/${seed}/`, { seed, opsMax: 2500, durationMs: 12_000 });
    await fault;
    const r = checkOperations(etcdModelAt(rec.initialRevision), rec.history, { timeoutMs: 10_000 });
    console.log(
      `served: ${rec.history.length} ops recorded in ${rec.elapsedMs.toFixed(0)} ms (leader m${killed} SIGKILLed and restarted; ${rec.unknown} unknown, ${rec.dropped} failed without effect) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    if (r.result === 'illegal') console.log(r.report);
    expect(killed).toBeGreaterThanOrEqual(0);
    expect(rec.history.length).toBeGreaterThan(100);
    expect(r.result).toBe('ok');
  }, 60_000);
});
