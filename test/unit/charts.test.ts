/**
 * bench/charts.ts: bench results become SVG charts (rendered by Vega-Lite in Node). Checked on a
 * small synthetic results file: which charts are made, that each is an SVG showing its systems
 * and phases, and that a chart without rows is not made.
 */
import { describe, expect, it } from 'vitest';
import { chartRows, chartSpecs, embedCharts, renderSvg } from '../../bench/charts.js';

const row = (phase: string, backend: string, opsPerSec: number, p50Ms: number) => ({
  status: 'ok',
  phase,
  backend,
  client: 'conclave',
  opsPerSec,
  latency: { p50Ms, p99Ms: p50Ms * 4 },
});

const kvRun = {
  results: [
    row('put1', 'etcd', 900, 1.1),
    row('put16', 'etcd', 6000, 2.5),
    row('put128', 'etcd', 15000, 8),
    row('put1', 'embedded', 1500, 0.2),
    row('put16', 'embedded', 14000, 0.4),
    row('put128', 'embedded', 40000, 3),
    row('get-lin', 'etcd', 9000, 1.4),
    { status: 'failed', phase: 'get-lin', backend: 'embedded', client: 'conclave', reason: 'x' },
  ],
};
const recipesRun = { results: [row('lock8', 'etcd', 60, 12), row('lock8', 'embedded', 170, 4)] };

describe('bench charts', () => {
  it('makes the throughput, latency and lock-handoff charts as SVG from results files', async () => {
    const rows = chartRows([kvRun, recipesRun]);
    expect(rows).toHaveLength(9); // failed rows are left out
    const specs = chartSpecs(rows);
    expect(Object.keys(specs).sort()).toEqual(['latency.svg', 'lock-handoff.svg', 'throughput.svg']);
    for (const [name, spec] of Object.entries(specs)) {
      const svg = await renderSvg(spec);
      expect(svg.startsWith('<svg'), name).toBe(true);
      expect(svg, name).toContain('etcd (conclave client)');
      expect(svg, name).toContain('embedded (conclave client)');
    }
    const throughput = await renderSvg(specs['throughput.svg']!);
    expect(throughput).toContain('requests in flight');
    // One line per system, one point per measured row.
    expect(throughput.match(/aria-roledescription="line mark"/g)?.length).toBe(2);
    expect(throughput.match(/aria-roledescription="point"/g)?.length).toBe(6);
    expect(await renderSvg(specs['lock-handoff.svg']!)).toContain('lock8');
  }, 60_000);

  it('makes no chart for phases that were not run, and a later file wins for the same row', () => {
    const later = { results: [row('put1', 'etcd', 1000, 1)] };
    const rows = chartRows([kvRun, later]);
    expect(rows.find((r) => r.phase === 'put1' && r.system.startsWith('etcd'))?.opsPerSec).toBe(1000);
    expect(Object.keys(chartSpecs(chartRows([recipesRun])))).toEqual(['lock-handoff.svg']);
  });

  it('embeds exactly the charts it wrote between the page markers, and leaves a page without them alone', () => {
    const page = 'intro\n<!-- charts:begin -->\nold ![x](charts/old.svg)\n<!-- charts:end -->\nrest\n';
    const next = embedCharts(
      page,
      ['charts/throughput.svg', 'charts/lock-handoff.svg'],
      'docs/charts/results.json',
    )!;
    expect(next.startsWith('intro\n<!-- charts:begin -->\n')).toBe(true);
    expect(next.endsWith('<!-- charts:end -->\nrest\n')).toBe(true);
    expect(next).toContain('![put throughput against requests in flight](charts/throughput.svg)');
    expect(next).toContain('](charts/lock-handoff.svg)');
    expect(next).not.toContain('old.svg');
    expect(next).toContain('npm run charts -- docs/charts/results.json');
    // Idempotent: embedding again gives the same page.
    expect(
      embedCharts(next, ['charts/throughput.svg', 'charts/lock-handoff.svg'], 'docs/charts/results.json'),
    ).toBe(next);
    expect(embedCharts('no markers', ['charts/a.svg'], 'r.json')).toBeUndefined();
  });
});
