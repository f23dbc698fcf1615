/**
 * The producer/consumer pump shared by the queue-like recipe phases (`queue`, `workqueue`).
 *
 * `producers` workers enqueue items carrying a sequence number, each with one enqueue outstanding,
 * until the time bound or the count bound is reached. A producer waits while `backlogMax` items are
 * enqueued but not yet delivered: without that bound, producers that are faster than consumers
 * would grow the queue for the whole pass and the enqueue → delivered latency would measure how
 * long the pass ran (Little's law), not the recipe. The consumers (started by the phase) report
 * each delivery; after the last enqueue the pump waits ≤ `drainMs` for the rest, then stops them.
 *
 * Memory is bounded: the send time is kept only for items not yet delivered (≤ backlogMax +
 * producers entries), so a delivery of an unknown sequence number — a duplicate, or an item left
 * over from an earlier pass — is counted as `unexpected` rather than stored.
 */
import { nowMs } from '../clock.js';
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { describe, opErrorsMax, warmupBounds } from '../load.js';
import type { PhaseContext, PhaseResult } from './types.js';

/** After the last enqueue, how long the pump waits for the remaining deliveries. */
export const flowDrainMs = 10_000;
/** Items in the unloaded probe after the measured pass (one at a time). */
export const flowUnloadedItems = 200;
/** Time bound of the unloaded probe. */
export const flowUnloadedMsMax = 5000;

export interface FlowSpec {
  readonly producers: number;
  /** Items enqueued but not yet delivered before producers wait. */
  readonly backlogMax: number;
  /** Enqueues one item carrying `seq`. */
  enqueue(seq: number, signal: AbortSignal): Promise<void>;
  /**
   * Starts the consumers; each calls `deliver(seq)` when an item is done (dequeued, or acked), and
   * `fail(err)` for an error it survived. Resolves once every consumer has stopped after `stop`;
   * resolving or rejecting earlier ends the pass as failed.
   */
  consume(deliver: (seq: number) => void, fail: (err: unknown) => void, stop: AbortSignal): Promise<void>;
}

interface PassResult {
  readonly delivered: number;
  readonly enqueued: number;
  readonly elapsedMs: number;
  readonly endToEnd: Histogram;
  readonly enqueue: Histogram;
  readonly unexpected: number;
  readonly errors: number;
  readonly backlogWaits: number;
}

/** Wakes producers waiting for the backlog to shrink; every wait is also bounded in time. */
class Gate {
  #waiters: Array<() => void> = [];

  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== done);
        resolve();
      }, ms);
      this.#waiters.push(done);
    });
  }

  open(): void {
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w();
  }
}

interface PassBounds {
  readonly producers: number;
  readonly backlogMax: number;
  readonly durationMs: number;
  readonly opsMax: number;
}

async function onePass(spec: FlowSpec, bounds: PassBounds, signal: AbortSignal): Promise<PassResult> {
  const sentAt = new Map<number, number>();
  const endToEnd = new Histogram();
  const enqueueLat = new Histogram();
  const gate = new Gate();
  const stop = new AbortController();
  const onAbort = (): void => stop.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  let issued = 0;
  let enqueued = 0;
  let delivered = 0;
  let unexpected = 0;
  let errors = 0;
  let backlogWaits = 0;
  let firstError: unknown;
  let lastDeliveryAt = Number.NaN;
  let drained: (() => void) | undefined;
  const start = nowMs();
  const deadline = start + bounds.durationMs;

  const fail = (err: unknown): void => {
    errors++;
    firstError ??= err;
    if (errors > opErrorsMax)
      stop.abort(new Error(`${errors} operations failed; first: ${describe(firstError)}`));
  };
  const deliver = (seq: number): void => {
    const t0 = sentAt.get(seq);
    if (t0 === undefined) return void unexpected++;
    const at = nowMs();
    sentAt.delete(seq);
    endToEnd.recordMs(at - t0);
    delivered++;
    lastDeliveryAt = at;
    gate.open();
    if (drained !== undefined && sentAt.size === 0) drained();
  };

  // Consumers that end (or fail) before being told to stop end the pass: nothing would drain it.
  let fatal: unknown;
  const consumers = spec.consume(deliver, fail, stop.signal).then(
    () => {
      if (!stop.signal.aborted) fatal ??= new Error('the consumers stopped before the pass ended');
      stop.abort(fatal);
    },
    (err: unknown) => {
      fatal ??= err;
      stop.abort(fatal);
    },
  );
  const producer = async (): Promise<void> => {
    while (issued < bounds.opsMax && !stop.signal.aborted && nowMs() < deadline) {
      if (sentAt.size >= bounds.backlogMax) {
        backlogWaits++;
        await gate.wait(Math.max(1, deadline - nowMs()));
        continue;
      }
      const seq = issued++;
      const t0 = nowMs();
      sentAt.set(seq, t0);
      try {
        await spec.enqueue(seq, stop.signal);
        enqueueLat.recordMs(nowMs() - t0);
        enqueued++;
      } catch (err) {
        // Not known to be enqueued: an error here may still have written it (it then counts as
        // unexpected if it is delivered).
        sentAt.delete(seq);
        if (!stop.signal.aborted) fail(err);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: bounds.producers }, producer));
    if (sentAt.size > 0 && !stop.signal.aborted) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, flowDrainMs);
        drained = () => {
          clearTimeout(timer);
          resolve();
        };
        stop.signal.addEventListener('abort', drained, { once: true });
      });
    }
  } finally {
    stop.abort(new Error('pass over'));
    signal.removeEventListener('abort', onAbort);
    await consumers;
  }
  if (fatal !== undefined) throw fatal;
  if (errors > opErrorsMax) throw new Error(`${errors} operations failed; first: ${describe(firstError)}`);
  const end = Number.isNaN(lastDeliveryAt) ? nowMs() : lastDeliveryAt;
  return {
    delivered,
    enqueued,
    elapsedMs: end - start,
    endToEnd,
    enqueue: enqueueLat,
    unexpected,
    errors,
    backlogWaits,
  };
}

/**
 * An unrecorded warm-up pass, then the measured one (CPU sampled around it), then the unloaded
 * probe: `flowUnloadedItems` items one at a time (one producer, backlog 1), each enqueued only
 * after the previous one was delivered, so its latency has no queueing in it — the recipe's own
 * enqueue → delivered path with idle consumers waiting on their watches.
 */
export async function measuredFlow(
  ctx: PhaseContext,
  spec: FlowSpec,
  extra: () => Record<string, number | string> = () => ({}),
): Promise<PhaseResult> {
  const loaded = {
    producers: spec.producers,
    backlogMax: spec.backlogMax,
    durationMs: ctx.durationMs,
    opsMax: ctx.opsMax,
  };
  const warm = warmupBounds({ concurrency: spec.producers, ...loaded });
  await onePass(spec, { ...loaded, durationMs: warm.durationMs, opsMax: warm.opsMax }, ctx.signal);
  const before = sampleCpu(ctx.target.serverPids);
  const r = await onePass(spec, loaded, ctx.signal);
  const after = sampleCpu(ctx.target.serverPids);
  const unloaded = await onePass(
    spec,
    {
      producers: 1,
      backlogMax: 1,
      durationMs: Math.min(ctx.durationMs, flowUnloadedMsMax),
      opsMax: Math.min(ctx.opsMax, flowUnloadedItems),
    },
    ctx.signal,
  );
  const lost = r.enqueued - r.delivered;
  return {
    ops: r.delivered,
    elapsedMs: round(r.elapsedMs),
    opsPerSec: round((r.delivered * 1000) / r.elapsedMs),
    latency: r.endToEnd.summary(),
    cpu: cpuPerOp(before, after, r.delivered, r.elapsedMs),
    extra: {
      producers: spec.producers,
      backlogMax: spec.backlogMax,
      enqueueP50Ms: round(r.enqueue.quantileMs(0.5), 3),
      enqueueP99Ms: round(r.enqueue.quantileMs(0.99), 3),
      unloadedP50Ms: round(unloaded.endToEnd.quantileMs(0.5), 3),
      unloadedP99Ms: round(unloaded.endToEnd.quantileMs(0.99), 3),
      ...(lost > 0 ? { undelivered: lost } : {}),
      ...(r.unexpected + unloaded.unexpected > 0 ? { unexpected: r.unexpected + unloaded.unexpected } : {}),
      ...(r.errors + unloaded.errors > 0 ? { errors: r.errors + unloaded.errors } : {}),
      ...extra(),
    },
  };
}
