/**
 * `multilock3` and `mutex3-seq`: 8 workers each take the same 3 lock names together, hold 0 ms,
 * release, and go again. `multilock3` takes them with one `MultiLock` (recipes/multi-lock.ts);
 * `mutex3-seq` takes them as three sequential `Mutex.lock()`s in the same (byte) order and releases
 * them together — what a careful user writes without MultiLock. ops/s = acquisitions of all three;
 * latency = one whole acquisition (from calling lock to holding every name). Exclusion is checked
 * on the side: an acquisition returning while another worker holds the set counts as an overlap
 * (must stay 0). One Session per worker, all on the target's one client; Conclave client only.
 */
import { MultiLock } from '../../recipes/multi-lock.js';
import { type LockHandle, Mutex } from '../../recipes/mutex.js';
import { Session } from '../../src/session.js';
import { measuredLoop } from './measure.js';
import { conclaveKvOf } from './recipes-common.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

const sessionTtlSeconds = 10;
/** A stuck acquisition fails the op instead of hanging the run. */
const acquireTimeoutMs = 15_000;

export function multiLockPhase(workers: number, names: number, sequential: boolean): Phase {
  return {
    name: sequential ? `mutex${names}-seq` : `multilock${names}`,
    description: sequential
      ? `${names} Mutexes taken in sequence by ${workers} workers (the baseline for multilock${names}), hold 0 ms`
      : `MultiLock of ${names} names, ${workers} workers on the same names, hold 0 ms`,
    run: (ctx) => runMultiLock(ctx, workers, names, sequential),
  };
}

async function runMultiLock(
  ctx: PhaseContext,
  workers: number,
  count: number,
  sequential: boolean,
): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'MultiLock');
  const names = Array.from({ length: count }, (_, i) => `${ctx.prefix}/multi/${i}`);
  const sessions: Session[] = [];
  try {
    for (let w = 0; w < workers; w++)
      sessions.push(await Session.create(kv, { ttlSeconds: sessionTtlSeconds, signal: ctx.signal }));
    const multi = sessions.map((s) => new MultiLock(s, names));
    const mutexes = sessions.map((s) => names.map((n) => new Mutex(s, n)));
    let holder: number | undefined;
    let overlaps = 0;
    const acquire = async (w: number): Promise<() => Promise<void>> => {
      const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(acquireTimeoutMs)]);
      if (!sequential) {
        const h = await multi[w]!.lock({ signal });
        return () => h.release();
      }
      const held: LockHandle[] = [];
      try {
        for (const m of mutexes[w]!) held.push(await m.lock({ signal }));
      } catch (err) {
        await Promise.allSettled(held.map((h) => h.release()));
        throw err;
      }
      return async () => {
        await Promise.all(held.map((h) => h.release()));
      };
    };
    const op = async (w: number): Promise<void> => {
      const release = await acquire(w);
      if (holder !== undefined) overlaps++;
      holder = w;
      // Yield once so a broken exclusion could show as an overlap.
      await new Promise<void>((resolve) => setImmediate(resolve));
      holder = undefined;
      await release();
    };
    return await measuredLoop(ctx, workers, op, () => ({
      workers,
      names: count,
      lock: sequential ? `${count} x Mutex.lock` : 'MultiLock',
      overlaps,
    }));
  } finally {
    await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
  }
}
