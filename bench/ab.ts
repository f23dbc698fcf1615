/**
 * `npm run bench:ab -- --a DIR --b DIR [--ops get,put] [--blocks N] [--block-ops N] [--target …]`:
 * a paired A/B of `conclave serve` between two checkouts of this project (git worktrees, each with
 * its own dist/ built, or its sources), for finding a regression on a machine that other work is
 * loading. Both 3-member clusters (each started by its checkout's own test/harness/served.ts) and
 * both clients (each checkout's own Conclave client) run at once in this process, and the
 * operations go in interleaved blocks (A then B, then B then A, …), so both see the same load:
 * back-to-back runs of `npm run bench` on a loaded machine differ by more than the regressions
 * looked for.
 *
 * Per checkout and operation it prints, per operation: the members' CPU (all three, µs), this
 * process's CPU while that checkout's client ran (µs), latency p50, and the members' read and
 * write system calls and voluntary context switches (from /proc/<pid>/io and status: counts that
 * the machine's load does not inflate, so a change in the work done per request shows there even
 * when CPU time is noisy); and the median over blocks of B's server CPU over A's. Linux only.
 *
 * Operations, one at a time (1 in flight) unless named otherwise: `get` (linearizable), `getser`
 * (serializable), `put` (256-byte value), `put16` (16 puts in flight, counted as 16).
 * `--target leader|follower|any`: the client is given only the leader's endpoint, only a
 * follower's, or all three (then it prefers the leader itself, as `npm run bench` does).
 *
 * Bounds: blocks ≤ `blocksMax`, operations per block ≤ `blockOpsMax`, and the whole run stops
 * after `--duration-s` (default 600 s) with what it measured. Nothing is written to docs.
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { processCpuMs } from './cpu.js';

export const blocksMax = 200;
export const blockOpsMax = 10_000;
const warmupOps = 100;
const opNames = ['get', 'getser', 'put', 'put16'] as const;
type OpName = (typeof opNames)[number];
type Target = 'leader' | 'follower' | 'any';

interface Args {
  readonly dirs: readonly [string, string];
  readonly ops: readonly OpName[];
  readonly blocks: number;
  readonly blockOps: number;
  readonly target: Target;
  readonly durationMs: number;
}

const usage =
  'usage: npm run bench:ab -- --a DIR --b DIR [--ops get,getser,put,put16] [--blocks N] [--block-ops N] [--target leader|follower|any] [--duration-s S]';

function parse(argv: string[]): Args {
  let a: string | undefined;
  let b: string | undefined;
  let ops: OpName[] = ['get', 'put'];
  let blocks = 10;
  let blockOps = 200;
  let target: Target = 'any';
  let durationS = 600;
  const int = (flag: string, v: string, lo: number, hi: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi)
      throw new Error(`${flag}: an integer in ${lo}..${hi}\n${usage}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i]!.split('=', 2) as [string, string | undefined];
    const value = (): string => inline ?? argv[++i] ?? '';
    if (flag === '--a') a = value();
    else if (flag === '--b') b = value();
    else if (flag === '--ops') {
      ops = value().split(',') as OpName[];
      if (ops.length === 0 || ops.some((o) => !opNames.includes(o)))
        throw new Error(`--ops: any of ${opNames.join(',')}\n${usage}`);
    } else if (flag === '--blocks') blocks = int(flag, value(), 1, blocksMax);
    else if (flag === '--block-ops') blockOps = int(flag, value(), 1, blockOpsMax);
    else if (flag === '--duration-s') durationS = int(flag, value(), 1, 3600);
    else if (flag === '--target') {
      const t = value();
      if (t !== 'leader' && t !== 'follower' && t !== 'any')
        throw new Error(`--target: leader, follower or any\n${usage}`);
      target = t;
    } else throw new Error(`unknown flag ${flag}\n${usage}`);
  }
  if (!a || !b) throw new Error(`--a and --b name the two checkouts\n${usage}`);
  const dirs = [resolve(a), resolve(b)] as const;
  for (const d of dirs)
    if (!existsSync(`${d}/test/harness/served.ts`))
      throw new Error(`${d}: not a checkout of this project (no test/harness/served.ts)`);
  return { dirs, ops, blocks, blockOps, target, durationMs: durationS * 1000 };
}

/** The counters of a process that its CPU's speed does not change: [syscr, syscw, voluntary switches]. */
function counters(pid: number): [number, number, number] {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    const get = (re: RegExp, t: string): number => Number(re.exec(t)?.[1] ?? Number.NaN);
    return [get(/syscr: (\d+)/, io), get(/syscw: (\d+)/, io), get(/^voluntary_ctxt_switches:\s+(\d+)/m, st)];
  } catch {
    return [Number.NaN, Number.NaN, Number.NaN];
  }
}

function sum(pids: readonly number[]): { cpuMs: number; c: [number, number, number] } {
  let cpuMs = 0;
  const c: [number, number, number] = [0, 0, 0];
  for (const pid of pids) {
    cpuMs += processCpuMs(pid) ?? Number.NaN;
    const x = counters(pid);
    for (let i = 0; i < 3; i++) c[i]! += x[i]!;
  }
  return { cpuMs, c };
}

interface MinimalKv {
  get(key: Uint8Array, o?: { serializable?: boolean }): Promise<unknown>;
  put(key: Uint8Array, value: Uint8Array): Promise<unknown>;
  close(): Promise<void>;
}

interface Side {
  readonly name: string;
  readonly kv: MinimalKv;
  readonly pids: readonly number[];
  readonly close: () => Promise<void>;
}

interface Tally {
  ops: number;
  serverMs: number;
  clientMs: number;
  counters: [number, number, number];
  latencies: number[];
}

async function startSide(dir: string, target: Target): Promise<Side> {
  // Each checkout's own harness and client: the code under comparison, not this checkout's.
  const { startServed } = (await import(`${dir}/test/harness/served.ts`)) as {
    startServed(o: object): Promise<{
      endpoints: string[];
      pids(): number[];
      waitLeader(): Promise<number>;
      close(): Promise<void>;
    }>;
  };
  const connectPath = existsSync(`${dir}/backends/connect.ts`)
    ? `${dir}/backends/connect.ts`
    : `${dir}/src/connect.ts`;
  const { connect } = (await import(connectPath)) as { connect(o: object): Promise<MinimalKv> };
  const c = await startServed({ members: 3, heartbeatMs: 100, electionTimeoutMs: 1000 });
  try {
    const leader = await c.waitLeader();
    const at = target === 'leader' ? leader : target === 'follower' ? (leader + 1) % 3 : -1;
    const kv = await connect({ backend: 'etcd', endpoints: at < 0 ? c.endpoints : [c.endpoints[at]!] });
    return {
      name: dir,
      kv,
      pids: c.pids(),
      close: async () => {
        await kv.close().catch(() => undefined);
        await c.close();
      },
    };
  } catch (err) {
    await c.close();
    throw err;
  }
}

const enc = new TextEncoder();
const key = enc.encode('bench-ab/key');
const keys16 = Array.from({ length: 16 }, (_, i) => enc.encode(`bench-ab/k${i}`));
const value = new Uint8Array(256).fill(0x2e);

/** Runs one operation; returns how many it counts as. */
async function runOp(kv: MinimalKv, op: OpName): Promise<number> {
  switch (op) {
    case 'get':
      await kv.get(key);
      return 1;
    case 'getser':
      await kv.get(key, { serializable: true });
      return 1;
    case 'put':
      await kv.put(key, value);
      return 1;
    case 'put16':
      await Promise.all(keys16.map((k) => kv.put(k, value)));
      return 16;
  }
}

async function block(side: Side, op: OpName, n: number, t: Tally, deadline: number): Promise<number> {
  const s0 = sum(side.pids);
  const c0 = process.cpuUsage();
  let ops = 0;
  for (let i = 0; i < n && performance.now() < deadline; i++) {
    const at = performance.now();
    ops += await runOp(side.kv, op);
    t.latencies.push(performance.now() - at);
  }
  const c1 = process.cpuUsage();
  const s1 = sum(side.pids);
  t.ops += ops;
  t.serverMs += s1.cpuMs - s0.cpuMs;
  t.clientMs += (c1.user + c1.system - c0.user - c0.system) / 1000;
  for (let i = 0; i < 3; i++) t.counters[i]! += s1.c[i]! - s0.c[i]!;
  return ops > 0 ? (s1.cpuMs - s0.cpuMs) / ops : Number.NaN;
}

const median = (xs: number[]): number => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  return s.length === 0 ? Number.NaN : s[Math.floor(s.length / 2)]!;
};
const r = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

async function main(): Promise<void> {
  const args = parse(process.argv.slice(2));
  const deadline = performance.now() + args.durationMs;
  const sides: Side[] = [];
  try {
    for (const d of args.dirs) sides.push(await startSide(d, args.target));
    console.log(
      `A: ${args.dirs[0]} (members ${sides[0]!.pids.join(',')})\nB: ${args.dirs[1]} (members ${sides[1]!.pids.join(',')})`,
    );
    for (const op of args.ops) {
      for (const s of sides)
        for (let i = 0; i < warmupOps && performance.now() < deadline; i++) await runOp(s.kv, op);
      const tallies: Tally[] = sides.map(() => ({
        ops: 0,
        serverMs: 0,
        clientMs: 0,
        counters: [0, 0, 0],
        latencies: [],
      }));
      const ratios: number[] = [];
      for (let b = 0; b < args.blocks && performance.now() < deadline; b++) {
        const order = b % 2 === 0 ? [0, 1] : [1, 0];
        const perOp: number[] = [];
        for (const i of order) perOp[i] = await block(sides[i]!, op, args.blockOps, tallies[i]!, deadline);
        ratios.push(perOp[1]! / perOp[0]!);
      }
      tallies.forEach((t, i) => {
        const n = Math.max(1, t.ops);
        const lat = median(t.latencies);
        console.log(
          JSON.stringify({
            side: i === 0 ? 'A' : 'B',
            op,
            target: args.target,
            ops: t.ops,
            serverCpuUsPerOp: r((t.serverMs * 1000) / n),
            clientCpuUsPerOp: r((t.clientMs * 1000) / n),
            p50Ms: r(lat, 3),
            serverReadsPerOp: r(t.counters[0] / n, 2),
            serverWritesPerOp: r(t.counters[1] / n, 2),
            serverSwitchesPerOp: r(t.counters[2] / n, 2),
            ...(i === 1 ? { serverCpuBOverAMedianOfBlocks: r(median(ratios), 3) } : {}),
          }),
        );
      });
    }
  } finally {
    for (const s of sides) await s.close().catch(() => undefined);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(2);
  },
);
