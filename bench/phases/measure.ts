/** Warm-up, then one measured closed-loop pass with CPU sampled around it. */
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import type { LatencySummary } from '../histogram.js';
import { closedLoop, type LoopResult, type Operation, warmupBounds } from '../load.js';
import type { PhaseContext, PhaseResult } from './types.js';

/** 256-byte values, as the brief specifies; random so compression cannot flatter anything. */
export const valueBytes = 256;
const value = new Uint8Array(valueBytes).map(() => Math.floor(Math.random() * 256));

export function benchValue(): Uint8Array {
  return value;
}

/**
 * A warm-up pass, then the measured pass of `op` at `concurrency`, with server CPU sampled around
 * it. Latency is the loop's per-op histogram unless `opts.latency` gives the phase's own (read
 * after the pass); `opts.measuring` runs between the two passes (e.g. to reset what the phase
 * records). `extra` gets the measured pass's result.
 */
export async function measuredLoop(
  ctx: PhaseContext,
  concurrency: number,
  op: Operation,
  extra: (r: LoopResult) => Record<string, number | string> = () => ({}),
  opts: { readonly measuring?: () => void; readonly latency?: () => LatencySummary } = {},
): Promise<PhaseResult> {
  const bounds = { concurrency, durationMs: ctx.durationMs, opsMax: ctx.opsMax };
  await closedLoop(op, warmupBounds(bounds), ctx.signal);
  opts.measuring?.();
  const before = sampleCpu(ctx.target.serverPids);
  const r = await closedLoop(op, bounds, ctx.signal);
  const after = sampleCpu(ctx.target.serverPids);
  return {
    ops: r.ops,
    elapsedMs: round(r.elapsedMs),
    opsPerSec: round((r.ops * 1000) / r.elapsedMs),
    latency: opts.latency ? opts.latency() : r.histogram.summary(),
    cpu: cpuPerOp(before, after, r.ops, r.elapsedMs),
    extra: { ...(r.errors > 0 ? { errors: r.errors } : {}), ...extra(r) },
  };
}
