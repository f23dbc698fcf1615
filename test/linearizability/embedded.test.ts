/** The same recorded workload against the embedded Raft store (3 in-process members) must be 'ok'. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { checkOperations } from './checker.js';
import { etcdModelAt } from './model.js';
import { runWorkload } from './recorder.js';

const seed = Number(process.env.LIN_SEED ?? 17);

describe('linearizability on the embedded store (3 members)', () => {
  let kv: KV;
  beforeAll(async () => {
    kv = await connect('embedded:?nodes=3');
  });
  afterAll(async () => {
    await kv?.close();
  });

  it(`a recorded workload is linearizable (seed ${seed}; replay: LIN_SEED=${seed})`, async () => {
    const rec = await runWorkload([kv], `lin/${seed}/`, { seed, opsMax: 4000, durationMs: 4000 });
    const r = checkOperations(etcdModelAt(rec.initialRevision), rec.history, { timeoutMs: 10_000 });
    console.log(
      `embedded: ${rec.history.length} ops recorded in ${rec.elapsedMs.toFixed(0)} ms (${rec.unknown} unknown, ${rec.dropped} failed without effect) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    if (r.result === 'illegal') console.log(r.report);
    expect(rec.history.length).toBeGreaterThan(300);
    expect(r.result).toBe('ok');
  }, 30_000);
});
