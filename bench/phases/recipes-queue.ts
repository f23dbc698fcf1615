/**
 * `queue`: `Queue` (recipes/queue.ts, etcd Go `recipe.Queue` layout) with `producers`
 * producers and `consumers` consumers on one queue. ops/s = enqueue+dequeue pairs per second
 * (items dequeued ÷ time from the pass's start to the last dequeue); latency = from just before
 * `enqueue()` is sent to `dequeue()` returning the item in a consumer. `enqueueP50/P99Ms`: the
 * enqueue call alone. Producers hold at most `queueBacklogMax` items undelivered (recipes-flow.ts).
 *
 * Every consumer is its own `Queue` object over the target's one KV (a BenchTarget has one client
 * connection): the consumers contend for the same items exactly as separate processes would, but
 * share one client connection.
 */
import { Queue } from '../../recipes/queue.js';
import { conclaveKvOf } from './recipes-common.js';
import { measuredFlow } from './recipes-flow.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

/** Items enqueued but not yet dequeued before a producer waits: two per consumer. */
export const queueBacklogMax = 8;

export function queuePhase(producers: number, consumers: number): Phase {
  return {
    name: 'queue',
    description: `Queue: ${producers} producers, ${consumers} consumers; enqueue → dequeued`,
    run: (ctx) => runQueue(ctx, producers, consumers),
  };
}

async function runQueue(ctx: PhaseContext, producers: number, consumers: number): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'Queue');
  const name = `${ctx.prefix}/q`;
  // A Queue holds no resources and no per-caller state: one object serves every producer.
  const producerQueue = new Queue(kv, name);
  return measuredFlow(
    ctx,
    {
      producers,
      backlogMax: queueBacklogMax,
      enqueue: async (seq, signal) => {
        await producerQueue.enqueue(String(seq), { signal });
      },
      consume: async (deliver, fail, stop) => {
        const consumer = async (): Promise<void> => {
          const q = new Queue(kv, name);
          while (!stop.aborted) {
            try {
              const item = await q.dequeue({ signal: stop });
              // A claim that was in flight when `stop` fired still returns its item: count it.
              deliver(Number(item.text()));
            } catch (err) {
              if (!stop.aborted) fail(err);
            }
          }
        };
        await Promise.all(Array.from({ length: consumers }, consumer));
      },
    },
    () => ({ consumers }),
  );
}
