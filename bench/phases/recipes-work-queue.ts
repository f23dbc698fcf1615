/**
 * `workqueue`: `WorkQueue` (recipes/work-queue.ts) with `producers` concurrent producers
 * calling `add()` and one `process(handler, { concurrency })` consumer whose handler acks the job
 * itself (so the ack's completion is observed). ops/s = jobs acked per second; latency = from just
 * before `add()` is sent to `job.ack()` returning Ok. Producers hold at most
 * `workQueueBacklogMax` jobs unacked (recipes-flow.ts). `ackLost` counts acks that returned
 * `ClaimLost` (0 expected: the visibility timeout is far longer than a job).
 *
 * One Session (the WorkQueue's owner) and one WorkQueue object over the target's one KV serve the
 * producers and the consumer, as one service process would.
 */
import { type Job, WorkQueue } from '../../recipes/work-queue.js';
import { Session } from '../../src/session.js';
import { conclaveKvOf } from './recipes-common.js';
import { measuredFlow } from './recipes-flow.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

/** Jobs added but not yet acked before a producer waits: two per handler slot. */
export const workQueueBacklogMax = 32;
const sessionTtlSeconds = 10;
/** Claims last this long; a job here takes milliseconds, so none should expire. */
const visibilityTimeoutSeconds = 30;

export function workQueuePhase(producers: number, concurrency: number): Phase {
  return {
    name: 'workqueue',
    description: `WorkQueue: ${producers} producers, process() at concurrency ${concurrency}; add → acked`,
    run: (ctx) => runWorkQueue(ctx, producers, concurrency),
  };
}

async function runWorkQueue(ctx: PhaseContext, producers: number, concurrency: number): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'WorkQueue');
  const session = await Session.create(kv, { ttlSeconds: sessionTtlSeconds, signal: ctx.signal });
  const queue = new WorkQueue(session, `${ctx.prefix}/wq`, { visibilityTimeoutSeconds });
  let ackLost = 0;
  try {
    return await measuredFlow(
      ctx,
      {
        producers,
        backlogMax: workQueueBacklogMax,
        enqueue: async (seq, signal) => {
          await queue.add(String(seq), { signal });
        },
        consume: async (deliver, fail, stop) => {
          const handler = async (job: Job): Promise<void> => {
            const r = await job.ack();
            if (r.isOk()) deliver(Number(job.text));
            else ackLost++;
          };
          // process() resolves once told to stop; it rejects only on a failure (the pass fails).
          await queue.process(handler, { concurrency, signal: stop, onError: fail });
        },
      },
      () => ({ concurrency, ...(ackLost > 0 ? { ackLost } : {}) }),
    );
  } finally {
    await queue.close();
    await session.close().catch(() => undefined);
  }
}
