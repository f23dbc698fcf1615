/**
 * The long nemesis run (not CI): rounds of `runOnce` — a fresh 3-member cluster with proxied peer
 * links, the recorded 8-client workload and the seeded fault schedule, the history checked — until
 * the time is up, then one summary (and a JSON file with every round).
 *
 *   npm run lincheck -- --target etcd|served|both [--minutes 30 | --seconds N | --duration 30m] [--seed N]
 *                       [--round-seconds 60] [--faults kill,pause,...] [--scenario quorum-crash]
 *                       [--inject read-local] [--out FILE] [--timeline]
 *
 * Each round uses seed + round number, so any round replays alone with the command it prints.
 * Exit code 1 if any round is 'illegal' (or, without --inject, 'unknown'), or could not run.
 */
import { writeFileSync } from 'node:fs';
import { testFaults } from '../harness/fault-entry.js';
import type { Target } from './cluster.js';
import { type FaultKind, faultKinds, type ScenarioName, scenarios } from './nemesis.js';
import { describeRun, faultTimeline, type RunSummary, runOnce } from './run.js';

function parse(argv: readonly string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`lincheck: unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) m.set(a.slice(2, eq), a.slice(eq + 1));
    // A flag followed by another flag (or nothing) has no value: `--timeline`.
    else if (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--')) m.set(a.slice(2), '');
    else m.set(a.slice(2), argv[++i]!);
  }
  return m;
}

const usage =
  'usage: npm run lincheck -- --target etcd|served|both [--minutes N | --seconds N] [--seed N] [--round-seconds N] [--faults k,..] [--scenario quorum-crash] [--inject f] [--out FILE] [--timeline]';

function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<number> {
  let a: Map<string, string>;
  try {
    a = parse(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${usage}`);
    return 2;
  }
  const known = [
    'target',
    'minutes',
    'seconds',
    'duration',
    'seed',
    'round-seconds',
    'faults',
    'inject',
    'scenario',
    'out',
    'timeline',
  ];
  for (const k of a.keys())
    if (!known.includes(k)) {
      console.error(`lincheck: unknown flag --${k}\n${usage}`);
      return 2;
    }
  const targetArg = a.get('target') ?? 'both';
  if (!['etcd', 'served', 'both'].includes(targetArg)) {
    console.error(`lincheck: --target must be etcd, served or both\n${usage}`);
    return 2;
  }
  const targets: Target[] = targetArg === 'both' ? ['etcd', 'served'] : [targetArg as Target];
  const dur = /^(\d+(?:\.\d+)?)(s|m|h)$/.exec(a.get('duration') ?? '');
  const totalMs = dur
    ? Number(dur[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[dur[2] as 's' | 'm' | 'h']
    : a.has('seconds')
      ? Number(a.get('seconds')) * 1000
      : Number(a.get('minutes') ?? 2) * 60_000;
  if (a.has('duration') && !dur) {
    console.error(`lincheck: --duration is a number with s, m or h (e.g. 30m)\n${usage}`);
    return 2;
  }
  const roundMs = Math.min(totalMs, Number(a.get('round-seconds') ?? 60) * 1000);
  const seed = Number(a.get('seed') ?? 1);
  const kinds = a.get('faults')?.split(',') as FaultKind[] | undefined;
  const inject = a.get('inject')?.split(',').filter(Boolean);
  if (!(totalMs > 0 && roundMs > 0 && Number.isInteger(seed))) {
    console.error(
      `lincheck: --minutes/--seconds/--round-seconds must be positive, --seed an integer\n${usage}`,
    );
    return 2;
  }
  for (const k of kinds ?? [])
    if (!(faultKinds as readonly string[]).includes(k)) {
      console.error(`lincheck: unknown fault kind ${k} (known: ${faultKinds.join(', ')})`);
      return 2;
    }
  for (const f of inject ?? [])
    if (!(testFaults as readonly string[]).includes(f)) {
      console.error(`lincheck: unknown --inject ${f} (known: ${testFaults.join(', ')})`);
      return 2;
    }
  const scenario = a.get('scenario') as ScenarioName | undefined;
  if (scenario !== undefined && !(scenario in scenarios)) {
    console.error(`lincheck: unknown --scenario ${scenario} (known: ${Object.keys(scenarios).join(', ')})`);
    return 2;
  }
  if (inject?.length && targets.includes('etcd')) {
    console.error('lincheck: --inject applies to --target served only');
    return 2;
  }
  const rounds: RunSummary[] = [];
  const failed: { target: Target; seed: number; error: string }[] = [];
  for (const target of targets) {
    const until = performance.now() + totalMs;
    for (let r = 0; performance.now() < until; r++) {
      let s: RunSummary;
      try {
        s = await runOnce({
          target,
          seed: seed + r,
          durationMs: Math.min(roundMs, Math.max(5000, until - performance.now())),
          ...(kinds ? { kinds } : {}),
          ...(inject ? { faults: inject } : {}),
          ...(scenario ? { scenario } : {}),
          checkTimeoutMs: 60_000,
          log: (l) => console.log(`  [${target} round ${r}] ${l}`),
        });
      } catch (err) {
        // A round that could not run (e.g. a cluster that did not start on an overloaded machine)
        // is counted and reported; the long run goes on with the next seed.
        failed.push({ target, seed: seed + r, error: err instanceof Error ? err.message : String(err) });
        console.log(
          `${target} seed ${seed + r}: the round could not run: ${failed[failed.length - 1]!.error.slice(0, 300)}`,
        );
        continue;
      }
      rounds.push(s);
      console.log(describeRun(s));
      if (a.has('timeline')) console.log(faultTimeline(s));
      if (s.check.result === 'illegal') console.log(`${s.check.report}\n  replay: ${s.replay}`);
      if (s.check.result === 'unknown') console.log(`  checker: ${s.check.reason}; replay: ${s.replay}`);
    }
  }
  console.log(
    '\n| target | rounds | operations checked | unknown outcome | faults (by kind) | anomalies | unknown verdicts | recovery ms (median by kind) | p99 write during faults (median of rounds) |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const target of targets) {
    const rs = rounds.filter((x) => x.target === target);
    const byKind = new Map<string, number>();
    const rec = new Map<string, number[]>();
    for (const s of rs) {
      for (const f of s.faults) byKind.set(f.kind, (byKind.get(f.kind) ?? 0) + 1);
      for (const [k, v] of Object.entries(s.recoveryMs)) rec.set(k, [...(rec.get(k) ?? []), ...(v ?? [])]);
    }
    const faults = [...byKind.entries()].map(([k, n]) => `${k} ${n}`).join(', ');
    const recovery = [...rec.entries()].map(([k, v]) => `${k} ${Math.round(median(v) ?? 0)}`).join(', ');
    const p99 = median(
      rs.flatMap((s) => (s.p99WriteDuringFaultsMs === undefined ? [] : [s.p99WriteDuringFaultsMs])),
    );
    console.log(
      `| ${target}${inject?.length ? ` (${inject.join(',')})` : ''} | ${rs.length} | ${rs.reduce((n, s) => n + s.ops, 0)} | ${rs.reduce((n, s) => n + s.unknown, 0)} | ${faults} | ${rs.filter((s) => s.check.result === 'illegal').length} | ${rs.filter((s) => s.check.result === 'unknown').length} | ${recovery} | ${p99 === undefined ? '-' : Math.round(p99)} |`,
    );
  }
  const out = a.get('out');
  if (out)
    writeFileSync(
      out,
      JSON.stringify(
        rounds.map(({ trace: _trace, ...s }) => ({ ...s, check: { ...s.check } })),
        null,
        1,
      ),
    );
  for (const f of failed) console.log(`round not run: ${f.target} seed ${f.seed}: ${f.error.slice(0, 200)}`);
  const bad =
    failed.length > 0 ||
    rounds.some((s) => s.check.result === 'illegal' || (!inject?.length && s.check.result === 'unknown'));
  return bad ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(1);
  },
);
