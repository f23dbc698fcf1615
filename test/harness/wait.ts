/**
 * Polling for tests that wait on something outside them (a process, a cluster, a CLI): one place
 * for the loop, its deadline and its failure message, instead of a hand-written loop per file.
 */

/** Default pause between two polls (ms). */
export const pollIntervalMsDefault = 20;

export interface UntilOptions {
  /** Give up after this long (ms). */
  timeoutMs: number;
  /** Pause between polls (ms; default `pollIntervalMsDefault`). */
  intervalMs?: number;
}

/**
 * Polls `f` until it returns a value other than `undefined` and returns that value. A throw from
 * `f` counts as "not yet" (the operation under test may fail while a cluster settles); the last
 * error is in the timeout's message, so a failure says what kept failing.
 */
export async function until<T>(
  what: string,
  f: () => T | undefined | Promise<T | undefined>,
  o: UntilOptions,
): Promise<T> {
  const end = performance.now() + o.timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (performance.now() > end)
      throw new Error(
        `${what}: not within ${o.timeoutMs} ms${last === undefined ? '' : ` (${String(last)})`}`,
      );
    await new Promise((r) => setTimeout(r, o.intervalMs ?? pollIntervalMsDefault));
  }
}

/** Polls `cond` until it is true (a throw fails at once); rejects with `what` after `timeoutMs`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
  intervalMs = pollIntervalMsDefault,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
