/**
 * `npm run charts -- RESULTS.json [MORE.json…] [--out DIR]`: the main comparisons of bench result
 * files (written by `npm run bench`) as SVG charts, for docs/benchmarks.md (default DIR:
 * docs/charts). Rendered in Node by Vega-Lite (no browser, no hand-drawn SVG):
 * - throughput.svg: put ops/s against requests in flight (put1, put16, put128), one line per
 *   system (backend and client);
 * - latency.svg: p50 and p99 of every KV phase, per system;
 * - lock-handoff.svg: lock handoffs per second (lock8, lock8-clients), per system.
 * Several files may be given (e.g. a KV run and a recipes run); rows with the same phase and
 * system are taken from the last file. A chart with no rows to show is not written.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';

/** One measured row of a results file (the fields the charts use). */
export interface ChartRow {
  readonly phase: string;
  readonly system: string;
  readonly opsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

interface ResultsFile {
  results: Array<{
    status: string;
    phase: string;
    backend: string;
    client: string;
    opsPerSec?: number;
    latency?: { p50Ms: number; p99Ms: number };
  }>;
}

/** The ok rows of results files, keyed by phase and system (a later file wins). */
export function chartRows(files: readonly ResultsFile[]): ChartRow[] {
  const rows = new Map<string, ChartRow>();
  for (const f of files) {
    for (const r of f.results ?? []) {
      if (r.status !== 'ok' || r.opsPerSec === undefined || !r.latency) continue;
      const system = `${r.backend} (${r.client} client)`;
      rows.set(`${r.phase}\0${system}`, {
        phase: r.phase,
        system,
        opsPerSec: r.opsPerSec,
        p50Ms: r.latency.p50Ms,
        p99Ms: r.latency.p99Ms,
      });
    }
  }
  return [...rows.values()];
}

const inFlight: Record<string, number> = { put1: 1, put16: 16, put128: 128 };
const kvPhases = ['put1', 'put16', 'put128', 'get-lin', 'get-ser', 'txn16', 'watch'];
const lockPhases = ['lock8', 'lock8-clients'];

/** The Vega-Lite specs of the charts that have data. */
export function chartSpecs(rows: readonly ChartRow[]): Record<string, vl.TopLevelSpec> {
  const specs: Record<string, vl.TopLevelSpec> = {};
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    width: 480,
    height: 280,
  } as const;
  const puts = rows.filter((r) => r.phase in inFlight).map((r) => ({ ...r, inFlight: inFlight[r.phase] }));
  if (puts.length > 0)
    specs['throughput.svg'] = {
      ...base,
      title: 'put throughput against requests in flight',
      data: { values: puts },
      mark: { type: 'line', point: true },
      encoding: {
        x: {
          field: 'inFlight',
          type: 'quantitative',
          scale: { type: 'log', base: 2 },
          title: 'requests in flight',
        },
        y: { field: 'opsPerSec', type: 'quantitative', title: 'puts/s' },
        color: { field: 'system', type: 'nominal', title: 'system' },
      },
    };
  const kv = rows
    .filter((r) => kvPhases.includes(r.phase))
    .flatMap((r) => [
      { phase: r.phase, system: r.system, percentile: 'p50', ms: r.p50Ms },
      { phase: r.phase, system: r.system, percentile: 'p99', ms: r.p99Ms },
    ]);
  if (kv.length > 0)
    specs['latency.svg'] = {
      $schema: base.$schema,
      title: 'latency percentiles per phase (log scale)',
      data: { values: kv },
      facet: { column: { field: 'percentile', type: 'nominal', title: null } },
      spec: {
        width: 260,
        height: 260,
        mark: 'bar',
        encoding: {
          x: { field: 'phase', type: 'nominal', sort: kvPhases, title: null },
          xOffset: { field: 'system', type: 'nominal' },
          y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'ms' },
          color: { field: 'system', type: 'nominal', title: 'system' },
        },
      },
    };
  const locks = rows.filter((r) => lockPhases.includes(r.phase));
  if (locks.length > 0)
    specs['lock-handoff.svg'] = {
      ...base,
      title: 'lock handoffs per second (8 workers, one lock)',
      data: { values: locks },
      mark: 'bar',
      encoding: {
        x: { field: 'phase', type: 'nominal', sort: lockPhases, title: null },
        xOffset: { field: 'system', type: 'nominal' },
        y: { field: 'opsPerSec', type: 'quantitative', title: 'acquisitions/s' },
        color: { field: 'system', type: 'nominal', title: 'system' },
      },
    };
  return specs;
}

/** Renders one Vega-Lite spec to SVG text. */
export async function renderSvg(spec: vl.TopLevelSpec): Promise<string> {
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const outAt = argv.indexOf('--out');
  const out = resolve(outAt >= 0 ? argv[outAt + 1]! : 'docs/charts');
  const inputs = argv.filter((_, i) => outAt < 0 || (i !== outAt && i !== outAt + 1));
  if (inputs.length === 0) {
    console.error('usage: npm run charts -- RESULTS.json [MORE.json…] [--out DIR]');
    return 64;
  }
  const files = inputs.map((p) => JSON.parse(readFileSync(p, 'utf8')) as ResultsFile);
  const specs = chartSpecs(chartRows(files));
  mkdirSync(out, { recursive: true });
  for (const [name, spec] of Object.entries(specs)) {
    writeFileSync(join(out, name), await renderSvg(spec));
    console.log(`wrote ${join(out, name)}`);
  }
  if (Object.keys(specs).length === 0) console.error('no rows to chart in the given files');
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
