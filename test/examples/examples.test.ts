/**
 * Each example runs with its one command (as the README shows it) on the embedded default and
 * prints what it promises. The checks read the example's own verdict lines, which it computes
 * from the store (e.g. the scheduler re-reads every recorded run), so a regression fails here.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { etcdBinary } from '../harness/etcd.js';

/** Runs `npx tsx <file>` (bounded in time); resolves with its exit code and output. */
function run(
  file: string,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], {
      env: { ...process.env, CONCLAVE_ENDPOINTS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('examples', () => {
  it('config-http — an update is served atomically, a stale guarded write and an invalid value are refused', async () => {
    const r = await run('examples/config-http.ts', 60_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/greeting and maxItems changed together/);
    expect(r.stdout).toMatch(
      /200 rev \d+ \{"greeting":"ahoy","items":\["anchor","beacon","compass","drift","ember"\]\}/,
    );
    expect(r.stdout).toMatch(/stale write guarded by revision \d+: refused \(changed\)/);
    expect(r.stdout).toMatch(/rejected revision \d+: maxItems: /);
    // After the rejection the service still answers from the last valid config (5 items).
    const lines = r.stdout.split('\n');
    const afterReject = lines[lines.findIndex((l) => l.includes('rejected revision')) + 1];
    expect(afterReject).toMatch(/"items":\["anchor","beacon","compass","drift","ember"\]/);
    expect(r.stdout).toMatch(/503 rev \d+ down for maintenance/);
    expect(r.stdout).toContain('Done.');
  }, 70_000);

  it('scheduler — one leader runs the job; after a crash and a store failover, tokens never go down and no run repeats', async () => {
    const r = await run('examples/scheduler.ts', 60_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/sched-a woke up and tried to run the job: fenced off/);
    expect(r.stdout).toMatch(/sched-[bc] took over after \d+\.\d s/);
    expect(r.stdout).toMatch(/kept running the job through the store failover/);
    expect(r.stdout).toMatch(/tokens never went down: true; no run number skipped or repeated: true/);
    expect(r.stdout).toContain('Done.');
  }, 70_000);

  // Separate processes need a shared store: a private etcd (CI installs it; REQUIRE_ETCD=1 makes
  // a missing etcd fail here instead of skipping).
  it.skipIf(!etcdBinary() && process.env.REQUIRE_ETCD !== '1')(
    'discovery — two server processes register; a SIGKILLed one leaves within its TTL, a stopped one at once',
    async () => {
      const r = await run('examples/discovery.ts', 80_000);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/resolved api-1@127\.0\.0\.1:\d+, api-2@127\.0\.0\.1:\d+/);
      expect(r.stdout).toContain(
        '4 calls: hello from api-1 | hello from api-2 | hello from api-1 | hello from api-2',
      );
      // After the kill at most one call fails (that error marks api-1 down); the rest go to api-2.
      expect(r.stdout).toMatch(/4 calls right after: (api-1 failed \| )?(hello from api-2( \| )?)+\n/);
      const left = Number(/api-1 left the live list after (\d+\.\d) s/.exec(r.stdout)?.[1]);
      expect(left).toBeLessThan(2 + 3); // TTL + slack
      expect(r.stdout).toMatch(/api-2 stopped with SIGTERM and deregistered after 0\.\d s/);
      expect(r.stdout).toContain('a call now: no instance');
      expect(r.stdout).toContain('Done.');
    },
    90_000,
  );
});
