/**
 * The closed-loop load driver: `concurrency` workers, each issuing one operation at a time, until
 * the time bound or the count bound is reached (whichever comes first) or the run is aborted.
 * Every phase is bounded in both; nothing here loops without a limit.
 *
 * A warm-up pass (same workers, same operation, nothing recorded) runs first so connection set-up,
 * JIT and etcd's first compactions of the range are not in the figures.
 */
import { nowMs } from './clock.js';
import { Histogram } from './histogram.js';

/** Errors tolerated in one pass before the phase is declared failed. */
export const opErrorsMax = 100;

export interface LoopBounds {
  readonly concurrency: number;
  readonly durationMs: number;
  readonly opsMax: number;
}

export interface LoopResult {
  readonly ops: number;
  readonly errors: number;
  readonly elapsedMs: number;
  readonly histogram: Histogram;
  readonly firstError?: unknown;
}

/** An operation; `seq` is unique across workers within one pass. */
export type Operation = (worker: number, seq: number) => Promise<void>;

/** Runs one bounded pass and returns its counts and latency histogram. */
export async function closedLoop(
  op: Operation,
  bounds: LoopBounds,
  signal?: AbortSignal,
): Promise<LoopResult> {
  if (!(bounds.concurrency >= 1 && Number.isInteger(bounds.concurrency)))
    throw new RangeError(`closedLoop: concurrency must be a positive integer, got ${bounds.concurrency}`);
  if (!(bounds.durationMs > 0 && bounds.opsMax > 0)) throw new RangeError('closedLoop: bounds must be > 0');
  const histogram = new Histogram();
  const start = nowMs();
  const deadline = start + bounds.durationMs;
  let issued = 0;
  let ops = 0;
  let errors = 0;
  let firstError: unknown;
  const worker = async (w: number): Promise<void> => {
    while (issued < bounds.opsMax && errors <= opErrorsMax && !signal?.aborted && nowMs() < deadline) {
      const seq = issued++;
      const t0 = nowMs();
      try {
        await op(w, seq);
        histogram.recordMs(nowMs() - t0);
        ops++;
      } catch (err) {
        errors++;
        firstError ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: bounds.concurrency }, (_, w) => worker(w)));
  const elapsedMs = nowMs() - start;
  if (errors > opErrorsMax) {
    throw new Error(`${errors} operations failed; first: ${describe(firstError)}`, { cause: firstError });
  }
  return { ops, errors, elapsedMs, histogram, firstError };
}

/** Warm-up bounds derived from the measured ones: a fifth of the time (≤ 1 s), a tenth of the count. */
export function warmupBounds(b: LoopBounds): LoopBounds {
  return {
    concurrency: b.concurrency,
    durationMs: Math.min(1000, b.durationMs / 5),
    opsMax: Math.max(b.concurrency, Math.ceil(b.opsMax / 10)),
  };
}

export function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}
