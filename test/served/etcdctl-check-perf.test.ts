/**
 * `etcdctl check perf --load=s` (etcdctl 3.4: 50 clients put 1 KiB values at 150 writes/s for
 * 60 s, then PASS when the throughput is at least 90 % of that, the slowest request took at most
 * 0.5 s and the latency's standard deviation is at most 0.1 s) against three `conclave serve`
 * processes with etcd's default timing.
 *
 * Always asserted: the check runs to its verdict against the served cluster (every call it makes
 * is served), and the throughput it reports is at least 100 writes/s (a pathologically slow
 * member, or one that refuses its writes, fails here on any machine). The PASS verdict itself
 * depends on latency spread, which a machine running many other processes distorts: it is
 * asserted when the machine is not overloaded (1-minute load average below 1.5 per core, as on
 * a CI runner running this file), and otherwise printed as not asserted, with the load, so the
 * run says plainly which case it was. ~70 s.
 */
import { execFileSync, spawn } from 'node:child_process';
import { availableParallelism, loadavg } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ServedCluster, startServed } from '../harness/served.js';

const hasEtcdctl = (() => {
  try {
    execFileSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** etcdctl spends 60 s putting, then cleans up; the run is killed past this. */
const runMsMax = 150_000;
/** Below this the check did not merely miss its target: something is wrong with the member. */
const writesPerSecMin = 100;
/** The PASS verdict is asserted below this 1-minute load average per core. */
const quietLoadPerCore = 1.5;

let c: ServedCluster | undefined;

beforeAll(async () => {
  if (hasEtcdctl) c = await startServed({ members: 3, heartbeatMs: 100, electionTimeoutMs: 1000 });
}, 90_000);

afterAll(async () => {
  await c?.close();
});

function checkPerf(endpoints: readonly string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('etcdctl', [`--endpoints=${endpoints.join(',')}`, 'check', 'perf', '--load=s'], {
      env: { ...process.env, ETCDCTL_API: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const guard = setTimeout(() => child.kill('SIGKILL'), runMsMax);
    child.on('error', (err) => {
      clearTimeout(guard);
      reject(err);
    });
    child.on('exit', (code) => {
      clearTimeout(guard);
      resolve({ code, out });
    });
  });
}

describe.skipIf(!hasEtcdctl)('etcdctl check perf on conclave serve', () => {
  it('--load=s runs to its verdict with at least 100 writes/s; PASS when the machine is not overloaded', async () => {
    const { code, out } = await checkPerf(c!.endpoints);
    // The progress bar redraws with \r: keep the verdict lines.
    const lines = out
      .split(/[\r\n]+/)
      .map((l) => l.trim())
      .filter((l) => /^(PASS|FAIL)|Throughput|Slowest|Stddev|rror/.test(l));
    const report = lines.join('\n');
    const m = /Throughput (?:is|too low:) (\d+(?:\.\d+)?) writes\/s/.exec(report);
    expect(m, `no throughput reported (exit ${code}):\n${out.slice(-2000)}`).not.toBeNull();
    expect(/Slowest request took/.test(report), report).toBe(true);
    expect(/Stddev/.test(report), report).toBe(true);
    expect(/rror/.test(report), `errors reported:\n${report}`).toBe(false);
    expect(Number(m![1]), report).toBeGreaterThanOrEqual(writesPerSecMin);
    const load = loadavg()[0]! / availableParallelism();
    if (load < quietLoadPerCore) {
      expect(lines, report).toContain('PASS');
      expect(code, report).toBe(0);
    } else {
      console.warn(
        `check perf --load=s: PASS not asserted (load ${load.toFixed(1)} per core >= ${quietLoadPerCore}); verdict:\n${report}`,
      );
    }
  }, 180_000);
});
