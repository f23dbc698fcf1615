/** Timers shared by the recipes: the back-off formula, abortable sleeps and pauses. */
import { abortReason } from '../../src/errors.js';

/** Resolves after `ms`; rejects with the signal's reason when it aborts (or already has). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      reject(abortReason(signal!));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Resolves after `ms`, or early (without rejecting) when `signal` aborts; the caller re-checks it. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    if (signal.aborted) done();
    else signal.addEventListener('abort', done, { once: true });
  });
}

/** The first step (ms) of the recipes' exponential back-offs, unless a loop names its own. */
export const backoffBaseMs = 50;
/** Doublings after which a back-off stops growing (every cap the recipes use is far below base × 2^10). */
export const backoffDoublingsMax = 10;

/**
 * The one back-off formula of the recipes' retry loops: `baseMs × 2^n` for the `n`-th retry
 * (n ≥ 0), capped at `capMs` (each loop's named bound). Callers that want jitter multiply by
 * `Math.random()`.
 */
export function backoffMs(n: number, capMs: number, baseMs: number = backoffBaseMs): number {
  return Math.min(capMs, baseMs * 2 ** Math.min(Math.max(n, 0), backoffDoublingsMax));
}
