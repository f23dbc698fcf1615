/**
 * Lock handoff: `workers` workers contend for ONE lock, hold it 0 ms, release, and queue
 * again. Reported: acquisitions/s, and release→acquired latency (from the moment the holder starts
 * releasing to the moment the next holder's acquire returns) p50/p99. Mutual exclusion is checked
 * on the side: an acquire returning while another worker holds the lock counts as an overlap (it must
 * stay 0).
 *
 * `lock8` shares one client among the workers (as one process with 8 concurrent tasks would);
 * `lock8-clients` gives each worker a client of its own (one connection each, as 8 processes
 * would): there a release can never hand the lock over inside the client (recipes/internal/
 * handoff.ts), so every handoff takes the cross-process path (delete event, then a re-check read).
 *
 * Two lock implementations, chosen by the target's client:
 * - conclave: `new Mutex(session, name).lock()` from recipes/mutex.ts, one Session per worker;
 * - etcd3 (the Go-style baseline): the `etcd3` client's Election used as a lock — campaign, wait
 *   until elected, resign. Each campaign grants its own lease, as that client does.
 */
import { nowMs } from '../clock.js';
import { Histogram } from '../histogram.js';
import { type LockProvider, lockProviderFor } from './lock-providers.js';
import { measuredLoop } from './measure.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

export function lockHandoffPhase(workers: number, separateClients = false): Phase {
  return {
    name: separateClients ? `lock${workers}-clients` : `lock${workers}`,
    description: `lock handoff: ${workers} workers on one lock, hold 0 ms; release → next acquired${separateClients ? '; each worker on a client (connection) of its own' : ''}`,
    run: async (ctx) => {
      const provider = await lockProviderFor(ctx, workers, separateClients);
      try {
        return await runHandoff(ctx, workers, provider);
      } finally {
        await provider.close();
      }
    },
  };
}

async function runHandoff(ctx: PhaseContext, workers: number, provider: LockProvider): Promise<PhaseResult> {
  const handoff = new Histogram();
  let recording = false;
  let lastReleaseAt = Number.NaN;
  let holder: number | undefined;
  let overlaps = 0;
  const op = async (w: number): Promise<void> => {
    const release = await provider.acquire(w);
    const at = nowMs();
    if (holder !== undefined) overlaps++;
    holder = w;
    if (recording && !Number.isNaN(lastReleaseAt)) handoff.recordMs(at - lastReleaseAt);
    // "Hold 0 ms", but yield once so another worker's acquire could complete inside the hold if
    // exclusion were broken — otherwise the overlap check above could never fire.
    await new Promise<void>((resolve) => setImmediate(resolve));
    holder = undefined;
    lastReleaseAt = nowMs();
    await release();
  };
  return measuredLoop(ctx, workers, op, () => ({ workers, lock: provider.label, overlaps }), {
    measuring: () => {
      lastReleaseAt = Number.NaN;
      recording = true;
    },
    latency: () => handoff.summary(),
  });
}
