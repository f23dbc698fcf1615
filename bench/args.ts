/** Command-line flags of `npm run bench -- …` (see docs/benchmarks.md). */
import { parseArgs } from 'node:util';
import { Backend, ClientKind } from './clients/types.js';

export const kvPhaseNames = ['put1', 'put16', 'put128', 'get-lin', 'get-ser', 'txn16', 'watch'] as const;
export const recipePhaseNames = [
  'lock8',
  'lock8-clients',
  'election-failover',
  'queue',
  'workqueue',
  'config',
  'config-debounce50',
  'multilock3',
  'mutex3-seq',
  'prefixcache',
  'prefixwatch',
  'revoke-notify',
] as const;
/** Watchers and leases at scale (bench/phases/scale.ts): only when named with --phases. */
export const scalePhaseNames = [
  'scale-put16-w0',
  'scale-put16-w1k',
  'scale-put16-w10k',
  'scale-put16-w100k',
  'scale-watch-prefix10k',
  'scale-leases-0',
  'scale-leases-10k',
  'scale-leases-100k',
] as const;
const allPhaseNames: readonly string[] = [...kvPhaseNames, ...recipePhaseNames, ...scalePhaseNames];

/** The largest count bound a phase may be given. */
export const opsMaxMax = 10_000_000;
/** The longest a phase may be given, in seconds. */
export const durationSecondsMax = 600;
/** The most passes per phase. */
export const roundsMax = 9;

export interface BenchConfig {
  readonly backends: readonly Backend[];
  readonly clients: readonly ClientKind[];
  readonly endpoints: readonly string[] | undefined;
  /** PIDs of an external etcd's members, to sample their CPU (only with --endpoints). */
  readonly serverPids: readonly number[];
  readonly members: 1 | 3;
  readonly nodes: number;
  readonly dataDir: string | undefined;
  readonly phases: readonly string[];
  readonly durationMs: number;
  readonly opsMax: number;
  /** Passes per phase and target; the median one is reported. */
  readonly rounds: number;
  readonly jsonPath: string | undefined;
  readonly consensus: boolean;
}

export const usage = `usage: npm run bench -- [options]
  --backend etcd,embedded,served          systems under test, any of them (default etcd); served:
                                          3 conclave serve processes, etcd's default timing
  --endpoints host:port,…                 an existing etcd (default: start our own)
  --server-pids PID,…                     an external etcd's member PIDs, to report its CPU per op
  --members 1|3                           members of our own etcd (default 3)
  --nodes N                               members of the embedded cluster (default 3)
  --data-dir DIR                          durable storage for the embedded backend (default memory-only)
  --client conclave|etcd3|both            client path(s) to etcd (default both)
  --phases ${kvPhaseNames.join(',')}      (default: all of these)
  --recipes                               recipe phases (${recipePhaseNames.join(',')}) instead of the KV ones;
                                          with --phases naming recipe phases, only those (e.g. --phases lock8)
                                          scale phases, named only: ${scalePhaseNames.join(',')}
  --consensus                             run bench/consensus.ts instead
  --duration-s S                          time bound of each measured pass (default 10)
  --ops-max N                             count bound of each measured pass (default 200000)
  --rounds N                              passes per phase and target, median reported (default 1)
  --json PATH                             result file (default bench/results/<timestamp>.json)`;

function fail(msg: string): never {
  throw new TypeError(`${msg}\n${usage}`);
}

function list(v: string | undefined): string[] {
  return (v ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function positive(name: string, v: string | undefined, dflt: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!(Number.isFinite(n) && n > 0 && n <= max))
    fail(`--${name} must be a number in (0, ${max}], got "${v}"`);
  return n;
}

export function parseBenchArgs(argv: readonly string[]): BenchConfig | 'help' {
  const { values: v } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      backend: { type: 'string', default: 'etcd' },
      endpoints: { type: 'string' },
      'server-pids': { type: 'string' },
      members: { type: 'string', default: '3' },
      nodes: { type: 'string', default: '3' },
      'data-dir': { type: 'string' },
      client: { type: 'string', default: 'both' },
      phases: { type: 'string' },
      recipes: { type: 'boolean', default: false },
      consensus: { type: 'boolean', default: false },
      'duration-s': { type: 'string' },
      'ops-max': { type: 'string' },
      rounds: { type: 'string' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (v.help) return 'help';
  const backends = list(v.backend);
  for (const b of backends)
    if (b !== Backend.Etcd && b !== Backend.Embedded && b !== Backend.Served) fail(`unknown backend "${b}"`);
  if (backends.length === 0) fail('--backend names no backend');
  const clients: ClientKind[] =
    v.client === 'both'
      ? [ClientKind.Conclave, ClientKind.Etcd3]
      : v.client === 'conclave' || v.client === 'etcd3'
        ? [v.client]
        : fail(`--client must be conclave, etcd3 or both, got "${v.client}"`);
  if (v.members !== '1' && v.members !== '3') fail(`--members must be 1 or 3, got "${v.members}"`);
  const nodes = positive('nodes', v.nodes, 3, 9);
  if (!Number.isInteger(nodes)) fail('--nodes must be an integer');
  if (v.rounds !== undefined && !Number.isInteger(Number(v.rounds))) fail('--rounds must be an integer');
  const phases = [...(v.phases !== undefined ? list(v.phases) : v.recipes ? [] : kvPhaseNames)];
  // --recipes adds every recipe phase, unless --phases already names some: then only those run
  // (`--recipes --phases lock8` runs lock8 alone; `--recipes --phases put1` runs put1 + all recipes).
  const namesRecipe = phases.some((p) => (recipePhaseNames as readonly string[]).includes(p));
  if (v.recipes && !namesRecipe) phases.push(...recipePhaseNames.filter((p) => !phases.includes(p)));
  for (const p of phases) if (!allPhaseNames.includes(p)) fail(`unknown phase "${p}"`);
  const endpoints = v.endpoints === undefined ? undefined : list(v.endpoints);
  if (endpoints !== undefined && endpoints.length === 0) fail('--endpoints names no endpoint');
  const serverPids = list(v['server-pids']).map(Number);
  if (serverPids.some((p) => !Number.isInteger(p) || p <= 0)) fail('--server-pids must be positive integers');
  if (serverPids.length > 0 && endpoints === undefined) fail('--server-pids needs --endpoints');
  return {
    backends: backends as Backend[],
    clients,
    endpoints,
    serverPids,
    members: v.members === '1' ? 1 : 3,
    nodes,
    dataDir: v['data-dir'],
    phases,
    durationMs: positive('duration-s', v['duration-s'], 10, durationSecondsMax) * 1000,
    opsMax: Math.floor(positive('ops-max', v['ops-max'], 200_000, opsMaxMax)),
    rounds: positive('rounds', v.rounds, 1, roundsMax),
    jsonPath: v.json,
    consensus: v.consensus,
  };
}
