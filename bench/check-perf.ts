/**
 * `npm run bench:check-perf -- [--load s|m|l|xl, comma-separated] [--rounds N] [--backend etcd,served]`:
 * etcd's own `etcdctl check perf` (etcdctl 3.4) against 3 etcd processes and against 3 `conclave
 * serve` processes (durable, etcd's default timing), alternating backends within each round, and
 * prints both side by side. Each run takes the 60 s etcdctl spends per load.
 *
 * What etcdctl does (etcdctl/ctlv3/command/check.go): its clients put 1 KiB values under random
 * 256-byte keys below `/etcdctl-check-perf/` at a target rate for 60 s (s: 150 writes/s from 50
 * clients; m: 1,000/s, 200; l: 8,000/s, 500; xl: 15,000/s, 1,000), then PASSes a load when no
 * request failed, the throughput is above 90 % of the target, the slowest request took at most
 * 0.5 s and the standard deviation of latency is at most 0.1 s. Its verdict lines are parsed as
 * they are printed. Results go to stdout (one JSON line per run and a
 * table); nothing is written to docs.
 */
import { spawn } from 'node:child_process';
import { startOwnEtcd, startOwnServed } from './etcd-cluster.js';

const loads = ['s', 'm', 'l', 'xl'] as const;
type Load = (typeof loads)[number];
type Backend = 'etcd' | 'served';

function parseArgs(argv: string[]): { loads: Load[]; rounds: number; backends: Backend[] } {
  let ls: Load[] = ['s', 'm', 'l'];
  let rounds = 1;
  let backends: Backend[] = ['etcd', 'served'];
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i]!.split('=', 2) as [string, string | undefined];
    const value = () => inline ?? argv[++i] ?? '';
    if (flag === '--load') {
      ls = value().split(',') as Load[];
      if (ls.length === 0 || ls.some((l) => !loads.includes(l)))
        throw new Error('--load: s, m, l or xl (comma-separated)');
    } else if (flag === '--rounds') {
      rounds = Number(value());
      if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error('--rounds: 1..20');
    } else if (flag === '--backend') {
      backends = value().split(',') as Backend[];
      if (backends.length === 0 || backends.some((b) => b !== 'etcd' && b !== 'served'))
        throw new Error('--backend: etcd, served or both');
    } else throw new Error(`unknown flag ${flag} (--load, --rounds, --backend)`);
  }
  return { loads: ls, rounds, backends };
}

interface CheckResult {
  backend: Backend;
  load: Load;
  round: number;
  pass: boolean;
  writesPerSec?: number;
  slowestSec?: number;
  stddevSec?: number;
  lines: string[];
  exitCode: number | null;
}

/** A run of `etcdctl check perf` is bounded: 60 s of load plus setup and cleanup. */
const runMsMax = 180_000;

function checkPerf(
  endpoints: readonly string[],
  load: Load,
): Promise<Omit<CheckResult, 'backend' | 'round'>> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'etcdctl',
      [`--endpoints=${endpoints.join(',')}`, 'check', 'perf', `--load=${load}`],
      {
        env: { ...process.env, ETCDCTL_API: '3' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    const take = (d: Buffer) => {
      out += d.toString('utf8');
    };
    child.stdout!.on('data', take);
    child.stderr!.on('data', take);
    const guard = setTimeout(() => child.kill('SIGKILL'), runMsMax);
    child.on('error', (err) => {
      clearTimeout(guard);
      reject(err);
    });
    child.on('exit', (code) => {
      clearTimeout(guard);
      // The progress bar redraws with \r: keep the verdict lines.
      const lines = out
        .split(/[\r\n]+/)
        .map((l) => l.trim())
        .filter((l) => /^(PASS|FAIL)|Throughput|Slowest|Stddev|rror/.test(l));
      const num = (re: RegExp) => {
        for (const l of lines) {
          const m = re.exec(l);
          if (m) return Number(m[1]);
        }
        return undefined;
      };
      const writesPerSec = num(/Throughput (?:is|too low:) (\d+(?:\.\d+)?) writes\/s/);
      const slowestSec = num(/Slowest request took (?:too long: )?(\d+(?:\.\d+)?)s/);
      const stddevSec = num(/Stddev (?:is|too high:) (\d+(?:\.\d+)?)s/);
      resolve({
        load,
        pass: code === 0 && lines.includes('PASS'),
        lines,
        exitCode: code,
        ...(writesPerSec !== undefined ? { writesPerSec } : {}),
        ...(slowestSec !== undefined ? { slowestSec } : {}),
        ...(stddevSec !== undefined ? { stddevSec } : {}),
      });
    });
  });
}

const o = parseArgs(process.argv.slice(2));
const results: CheckResult[] = [];
const ac = new AbortController();
process.once('SIGINT', () => ac.abort());
for (let round = 1; round <= o.rounds; round++) {
  for (const load of o.loads) {
    // Alternate which backend goes first, so a drift in the machine's load does not favour one.
    const order = round % 2 === 1 ? o.backends : [...o.backends].reverse();
    for (const backend of order) {
      if (ac.signal.aborted) break;
      // A fresh cluster per run: check perf leaves a compacted history and its own keys deleted.
      const c = backend === 'etcd' ? await startOwnEtcd(3, ac.signal) : await startOwnServed(ac.signal);
      try {
        process.stderr.write(`… check perf --load=${load} on ${backend} (round ${round}), 60 s\n`);
        const r = { backend, round, ...(await checkPerf(c.endpoints, load)) };
        results.push(r);
        console.log(JSON.stringify({ phase: 'check-perf', ...r }));
      } finally {
        await c.stop();
      }
    }
  }
}
console.log('\nload  backend  round  verdict  writes/s  slowest s  stddev s');
for (const r of results)
  console.log(
    `${r.load.padEnd(5)} ${r.backend.padEnd(8)} ${String(r.round).padStart(5)}  ${(r.pass ? 'PASS' : 'FAIL').padEnd(7)} ${String(r.writesPerSec ?? '-').padStart(9)} ${String(r.slowestSec ?? '-').padStart(10)} ${String(r.stddevSec ?? '-').padStart(9)}`,
  );
