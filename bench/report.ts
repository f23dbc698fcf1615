/** Result rows, the ratios between them, and the printed table. */
import type { Backend, ClientKind } from './clients/types.js';
import { round } from './cpu.js';
import type { PhaseResult } from './phases/types.js';

export type Row =
  | ({
      status: 'ok';
      phase: string;
      backend: Backend;
      client: ClientKind;
      notes: readonly string[];
    } & PhaseResult)
  | {
      status: 'not-available' | 'failed';
      phase: string;
      backend: Backend;
      client: ClientKind;
      reason: string;
    };

export interface Ratio {
  readonly phase: string;
  /** e.g. "conclave/etcd3 on etcd" or "embedded/etcd (conclave client)". */
  readonly comparison: string;
  /** numerator ops/s ÷ denominator ops/s (> 1: numerator is faster). */
  readonly opsPerSec: number;
  /** numerator p50 ÷ denominator p50 (< 1: numerator is faster). */
  readonly p50: number;
  readonly p99: number;
}

/** The JSON line printed when a phase finishes on a target. */
export function jsonLine(row: Row, fields: Record<string, unknown> = {}): string {
  if (row.status !== 'ok') return JSON.stringify({ ...fields, ...row });
  const { latency, ...rest } = row;
  const l = {
    p50Ms: round(latency.p50Ms, 3),
    p90Ms: round(latency.p90Ms, 3),
    p99Ms: round(latency.p99Ms, 3),
    p999Ms: round(latency.p999Ms, 3),
    maxMs: round(latency.maxMs, 3),
    meanMs: round(latency.meanMs, 3),
  };
  return JSON.stringify({ ...fields, ...rest, ...l });
}

function ratioOf(phase: string, comparison: string, num: Row | undefined, den: Row | undefined): Ratio[] {
  if (num?.status !== 'ok' || den?.status !== 'ok') return [];
  return [
    {
      phase,
      comparison,
      opsPerSec: round(num.opsPerSec / den.opsPerSec, 3),
      p50: round(num.latency.p50Ms / den.latency.p50Ms, 3),
      p99: round(num.latency.p99Ms / den.latency.p99Ms, 3),
    },
  ];
}

export function computeRatios(rows: readonly Row[]): Ratio[] {
  const find = (phase: string, backend: string, client: string) =>
    rows.find((r) => r.phase === phase && r.backend === backend && r.client === client);
  const out: Ratio[] = [];
  for (const phase of [...new Set(rows.map((r) => r.phase))]) {
    const etcdConclave = find(phase, 'etcd', 'conclave');
    const etcdBaseline = find(phase, 'etcd', 'etcd3');
    out.push(...ratioOf(phase, 'conclave/etcd3 on etcd', etcdConclave, etcdBaseline));
    const embedded = find(phase, 'embedded', 'conclave');
    const etcdRef = etcdConclave?.status === 'ok' ? etcdConclave : etcdBaseline;
    out.push(
      ...ratioOf(phase, `embedded/etcd (etcd via ${etcdRef?.client ?? '?'} client)`, embedded, etcdRef),
    );
    // The same client path against 3 conclave serve processes and against etcd.
    for (const client of ['conclave', 'etcd3'])
      out.push(
        ...ratioOf(
          phase,
          `served/etcd (${client} client)`,
          find(phase, 'served', client),
          find(phase, 'etcd', client),
        ),
      );
  }
  return out;
}

function fmt(x: number | undefined, digits: number): string {
  return x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits);
}

function extraText(row: Row): string {
  if (row.status !== 'ok') return `${row.status.toUpperCase()}: ${row.reason}`;
  const parts = Object.entries(row.extra).map(([k, v]) => `${k}=${v}`);
  if (row.cpu?.serverCpuUsPerOp !== undefined) parts.push(`serverCpu=${row.cpu.serverCpuUsPerOp}µs/op`);
  if (row.cpu !== undefined) parts.push(`clientCpu=${row.cpu.clientCpuUsPerOp}µs/op`);
  parts.push(...row.notes);
  return parts.join(' ');
}

function pad(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((c, i) => (i >= 3 && i <= 5 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
}

export function renderTable(rows: readonly Row[], ratios: readonly Ratio[]): string {
  const header = ['phase', 'client', 'backend', 'ops/s', 'p50 ms', 'p99 ms', 'extra'];
  const body = rows.map((r) => [
    r.phase,
    r.client,
    r.backend,
    r.status === 'ok' ? fmt(r.opsPerSec, 0) : '-',
    r.status === 'ok' ? fmt(r.latency.p50Ms, 3) : '-',
    r.status === 'ok' ? fmt(r.latency.p99Ms, 3) : '-',
    extraText(r),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (i === 6 ? 0 : b[i]!.length))));
  const lines = [pad(header, widths), ...body.map((b) => pad(b, widths))];
  if (ratios.length > 0) {
    lines.push('', 'ratios (ops/s: > 1 numerator faster; p50/p99: < 1 numerator faster)');
    for (const r of ratios) {
      lines.push(
        `  ${r.phase.padEnd(8)} ${r.comparison.padEnd(40)} ops/s ×${r.opsPerSec.toFixed(2)}  p50 ×${r.p50.toFixed(2)}  p99 ×${r.p99.toFixed(2)}`,
      );
    }
  }
  return lines.join('\n');
}
