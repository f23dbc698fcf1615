/** The shape every benchmark phase has, and what it reports. */
import type { BenchTarget } from '../clients/types.js';
import type { CpuPerOp } from '../cpu.js';
import type { LatencySummary } from '../histogram.js';

export interface PhaseContext {
  readonly target: BenchTarget;
  /** A key prefix owned by this phase on this target (deleted at the end of the run). */
  readonly prefix: string;
  /** Time bound of the measured pass. */
  readonly durationMs: number;
  /** Count bound of the measured pass. */
  readonly opsMax: number;
  readonly signal: AbortSignal;
}

export interface PhaseResult {
  readonly ops: number;
  readonly elapsedMs: number;
  readonly opsPerSec: number;
  readonly latency: LatencySummary;
  readonly cpu?: CpuPerOp;
  /** Phase-specific figures (conflicts, deliveries, …). */
  readonly extra: Readonly<Record<string, number | string>>;
}

export interface Phase {
  readonly name: string;
  /** One line: what is measured. */
  readonly description: string;
  run(ctx: PhaseContext): Promise<PhaseResult>;
}

/** Thrown by a phase whose subject does not exist yet (reported as "not available", never as numbers). */
export class NotAvailable extends Error {
  override readonly name = 'NotAvailable';
}
