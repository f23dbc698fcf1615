/**
 * The benchmark clock: monotonic milliseconds with sub-millisecond resolution. `performance.now()`
 * is monotonic (unaffected by wall-clock steps), unlike `Date.now()`, which is used only to name
 * result files.
 */
export function nowMs(): number {
  return performance.now();
}

/** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
export function sleepMs(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener('abort', done, { once: true });
  });
}
