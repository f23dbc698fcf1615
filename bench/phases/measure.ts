/** Warm-up, then one measured closed-loop pass with CPU sampled around it. */
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import { closedLoop, type Operation, warmupBounds } from '../load.js';
import type { PhaseContext, PhaseResult } from './types.js';

/** 256-byte values, as the brief specifies; random so compression cannot flatter anything. */
export const valueBytes = 256;
const value = new Uint8Array(valueBytes).map(() => Math.floor(Math.random() * 256));

export function benchValue(): Uint8Array {
  return value;
}

export async function measuredLoop(
  ctx: PhaseContext,
  concurrency: number,
  op: Operation,
  extra: () => Record<string, number | string> = () => ({}),
): Promise<PhaseResult> {
  const bounds = { concurrency, durationMs: ctx.durationMs, opsMax: ctx.opsMax };
  await closedLoop(op, warmupBounds(bounds), ctx.signal);
  const before = sampleCpu(ctx.target.serverPids);
  const r = await closedLoop(op, bounds, ctx.signal);
  const after = sampleCpu(ctx.target.serverPids);
  return {
    ops: r.ops,
    elapsedMs: round(r.elapsedMs),
    opsPerSec: round((r.ops * 1000) / r.elapsedMs),
    latency: r.histogram.summary(),
    cpu: cpuPerOp(before, after, r.ops, r.elapsedMs),
    extra: { ...(r.errors > 0 ? { errors: r.errors } : {}), ...extra() },
  };
}
