/**
 * Stalling the test process on purpose, and measuring how much it stalled on its own.
 *
 * `stall(ms)` blocks the event loop synchronously (Atomics.wait on a SharedArrayBuffer), as a long
 * GC pause or a blocking call would: no timer, I/O callback or promise runs meanwhile, while the
 * monotonic clock — and a server in another process — go on. An in-process backend stalls with
 * the test, but its clock does not.
 *
 * `loopDelay()` measures the loop's own stalls (perf_hooks.monitorEventLoopDelay): a test that
 * asserts liveness with short TTLs ("the lease stayed alive") is only meaningful if the process
 * did not stall for most of a TTL on a loaded machine; safety ("if the session says connected,
 * its keys exist") is asserted always.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

const cell = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the event loop (and this whole thread) for `ms` milliseconds. */
export function stall(ms: number): void {
  Atomics.wait(cell, 0, 0, ms);
}

export interface LoopDelay {
  /** Longest event-loop delay seen since the probe started (ms). */
  maxMs(): number;
  stop(): void;
}

export function loopDelay(): LoopDelay {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  return {
    maxMs: () => h.max / 1e6,
    stop: () => h.disable(),
  };
}

/**
 * The longest stall under which a Session of `ttlSeconds` must stay alive: it sends a keep-alive
 * every TTL/3, and `lost` fires at TTL minus its margin (min(1 s, TTL/6)) after the last one sent,
 * so a stall longer than TTL − margin − TTL/3 may lose it legitimately. Half of that, for slack.
 */
export function livenessStallBoundMs(ttlSeconds: number): number {
  const ttl = ttlSeconds * 1000;
  return (ttl - Math.min(1000, ttl / 6) - ttl / 3) / 2;
}

/**
 * Runs a liveness assertion only if the loop did not stall past `boundMs` meanwhile; otherwise
 * prints why it was not checked (the test's safety assertions still ran).
 */
export function checkLiveness(probe: LoopDelay, boundMs: number, what: string, assert: () => void): void {
  const max = probe.maxMs();
  if (max <= boundMs) {
    assert();
    return;
  }
  console.warn(
    `liveness not checked (${what}): the event loop stalled ${Math.round(max)} ms, past the ${Math.round(boundMs)} ms bound; safety was checked`,
  );
}
