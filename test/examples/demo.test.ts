import { spawn, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { etcdBinary, startEtcd } from '../harness/etcd.js';

/**
 * `npm start` on the embedded default: every scene runs to the end and prints its verdict. The
 * verdicts are computed from what happened (overlaps counted, tokens compared, stats read back
 * from the store), so a broken recipe shows here.
 */
describe('examples', () => {
  it('the demo (npm start) runs its scenario on an embedded 3-node cluster to the end and exits 0', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'examples/demo.ts'], {
      encoding: 'utf8',
      timeout: 90_000,
      env: { ...process.env, CONCLAVE_ENDPOINTS: '' },
    });
    expect(r.stderr).not.toMatch(/demo failed/);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('on an embedded 3-node Raft cluster');
    expect(r.stdout).toContain('8 critical sections, 0 overlaps; tokens strictly increasing: true');
    expect(r.stdout).toMatch(/node-[bc] leads after \d+\.\d s, term \d+/);
    expect(r.stdout).toMatch(/\(the Raft leader\) killed and restarted; node-[bc] still leads: true/);
    expect(r.stdout).toMatch(/an observer saw: node-a → node-[bc] → node-[bc]/);
    expect(r.stdout).toMatch(/rejected at revision \d+ .*; still serving \{"poolSize":16,"timeoutMs":250\}/);
    expect(r.stdout).toMatch(/consumer B got job-\d back after \d+\.\d s and finished it/);
    expect(r.stdout).toContain(
      'done: job-1, job-2, job-3, job-4, job-5 — each once; stats {"ready":0,"inFlight":0,"delayed":0,"dead":1}',
    );
    expect(r.stdout).toMatch(/dead letter: poison after 2 attempts/);
    expect(r.stdout).toContain(
      'stored as etcd\'s naming JSON: {"Op":0,"Addr":"10.0.0.1:8080","Metadata":{"zone":"a"}}',
    );
    expect(r.stdout).toMatch(/api-1 died; the resolver dropped it after \d+\.\d s; live: api-2/);
    expect(r.stdout).toContain('final value 100 (expected 100)');
    expect(r.stdout).toContain('Done.');
  }, 100_000);

  // With CONCLAVE_ENDPOINTS the same scenario runs on real etcd (no Raft member to kill there).
  it.skipIf(!etcdBinary() && process.env.REQUIRE_ETCD !== '1')(
    'the demo runs the same scenario on a 3-member etcd with CONCLAVE_ENDPOINTS',
    async () => {
      const etcd = await startEtcd({ members: 3 });
      if (!etcd) throw new Error('etcd is required but was not found');
      try {
        const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import', 'tsx', 'examples/demo.ts'], {
            env: { ...process.env, CONCLAVE_ENDPOINTS: etcd.endpoints.join(',') },
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d) => (stdout += d));
          child.stderr.on('data', (d) => (stderr += d));
          const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
          child.on('close', (status) => {
            clearTimeout(timer);
            resolve({ status, stdout, stderr });
          });
        });
        expect(r.stderr).not.toMatch(/demo failed/);
        expect(r.status).toBe(0);
        expect(r.stdout).toContain(`on etcd at ${etcd.endpoints.join(',')}`);
        expect(r.stdout).toContain('8 critical sections, 0 overlaps; tokens strictly increasing: true');
        expect(r.stdout).toMatch(/an observer saw: node-a → node-[bc] → node-[bc]/);
        expect(r.stdout).toMatch(/still serving \{"poolSize":16,"timeoutMs":250\}/);
        expect(r.stdout).toContain(
          'done: job-1, job-2, job-3, job-4, job-5 — each once; stats {"ready":0,"inFlight":0,"delayed":0,"dead":1}',
        );
        expect(r.stdout).toMatch(/api-1 died; the resolver dropped it after \d+\.\d s; live: api-2/);
        expect(r.stdout).toContain('final value 100 (expected 100)');
        expect(r.stdout).toContain('Done.');
      } finally {
        await etcd.stop();
      }
    },
    110_000,
  );
});
