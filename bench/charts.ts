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
 *
 * Beside the charts it writes `results.json`, the rows they were drawn from (in the results-file
 * format), so `npm run charts -- docs/charts/results.json` redraws the same charts; and it
 * rewrites the block between `<!-- charts:begin -->` and `<!-- charts:end -->` of the page given
 * by `--doc` (default docs/benchmarks.md) to embed exactly the charts it wrote.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
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

interface ResultRow {
  status: string;
  phase: string;
  backend: string;
  client: string;
  opsPerSec?: number;
  latency?: { p50Ms: number; p99Ms: number };
}

interface ResultsFile {
  results: ResultRow[];
}

/** The ok rows of results files, keyed by phase and system (a later file wins), as given. */
export function mergedResults(files: readonly ResultsFile[]): ResultRow[] {
  const rows = new Map<string, ResultRow>();
  for (const f of files) {
    for (const r of f.results ?? []) {
      if (r.status !== 'ok' || r.opsPerSec === undefined || !r.latency) continue;
      rows.set(`${r.phase}\0${r.backend}\0${r.client}`, r);
    }
  }
  return [...rows.values()];
}

/** The ok rows of results files, keyed by phase and system (a later file wins). */
export function chartRows(files: readonly ResultsFile[]): ChartRow[] {
  return mergedResults(files).map((r) => ({
    phase: r.phase,
    system: `${r.backend} (${r.client} client)`,
    opsPerSec: r.opsPerSec!,
    p50Ms: r.latency!.p50Ms,
    p99Ms: r.latency!.p99Ms,
  }));
}

const chartsBegin = '<!-- charts:begin -->';
const chartsEnd = '<!-- charts:end -->';
const chartTitles: Record<string, string> = {
  'throughput.svg': 'put throughput against requests in flight',
  'latency.svg': 'latency percentiles per phase',
  'lock-handoff.svg': 'lock handoffs per second',
};

/**
 * The page with its charts block replaced by image links to `charts` (paths relative to the
 * page) and the command that redraws them; undefined when the page has no charts block.
 */
export function embedCharts(markdown: string, charts: readonly string[], redraw: string): string | undefined {
  const a = markdown.indexOf(chartsBegin);
  const b = markdown.indexOf(chartsEnd);
  if (a < 0 || b < a) return undefined;
  const body = [
    '',
    ...charts.flatMap((c) => [`![${chartTitles[c.split('/').pop()!] ?? c}](${c})`, '']),
    `Drawn from the rows in \`${redraw}\` by \`npm run charts -- ${redraw}\` (\`npm run charts -- RESULTS.json…\` draws new ones from bench result files).`,
    '',
  ];
  return `${markdown.slice(0, a + chartsBegin.length)}${body.join('\n')}${markdown.slice(b)}`;
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
  const flag = (name: string, dflt: string) => {
    const at = argv.indexOf(name);
    return { value: resolve(at >= 0 ? argv[at + 1]! : dflt), at };
  };
  const out = flag('--out', 'docs/charts');
  const doc = flag('--doc', 'docs/benchmarks.md');
  // A flag not given has at = -1: neither it nor "its value" (index 0, the first input!) is flagged.
  const flagged = new Set([out, doc].filter((f) => f.at >= 0).flatMap((f) => [f.at, f.at + 1]));
  const inputs = argv.filter((_, i) => !flagged.has(i));
  if (inputs.length === 0) {
    console.error('usage: npm run charts -- RESULTS.json [MORE.json…] [--out DIR] [--doc PAGE.md]');
    return 64;
  }
  const files = inputs.map((p) => JSON.parse(readFileSync(p, 'utf8')) as ResultsFile);
  const specs = chartSpecs(chartRows(files));
  if (Object.keys(specs).length === 0) {
    console.error('no rows to chart in the given files');
    return 1;
  }
  mkdirSync(out.value, { recursive: true });
  // Read every input before writing: results.json may be one of them.
  const sourceRows = mergedResults(files);
  const written: string[] = [];
  for (const [name, spec] of Object.entries(specs)) {
    writeFileSync(join(out.value, name), await renderSvg(spec));
    written.push(join(out.value, name));
    console.log(`wrote ${join(out.value, name)}`);
  }
  const rowsPath = join(out.value, 'results.json');
  writeFileSync(rowsPath, `${JSON.stringify({ results: sourceRows }, null, 2)}\n`);
  console.log(`wrote ${rowsPath}`);
  if (existsSync(doc.value)) {
    const page = readFileSync(doc.value, 'utf8');
    const rel = (p: string) => relative(dirname(doc.value), p);
    const next = embedCharts(page, written.map(rel), relative(process.cwd(), rowsPath));
    if (next === undefined)
      console.error(`${doc.value}: no ${chartsBegin} … ${chartsEnd} block; charts not embedded`);
    else {
      writeFileSync(doc.value, next);
      console.log(`embedded ${written.length} charts in ${doc.value}`);
    }
  }
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
