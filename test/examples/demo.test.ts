import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { etcdBinary } from '../harness/etcd.js';

const available = !!process.env.CONCLAVE_ENDPOINTS || !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

describe.skipIf(!available)('examples', () => {
  it('the demo (npm start) runs its scenario to the end and exits 0', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'examples/demo.ts'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.stderr).not.toMatch(/demo failed/);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('final value 100 (expected 100)');
    expect(r.stdout).toMatch(/session\.lost fired: session-lost — key now gone/);
    expect(r.stdout).toMatch(/node-a lost leadership: true; node-b leads, term \d+/);
    expect(r.stdout).not.toMatch(/[2-9] inside/);
    expect(r.stdout).toContain('Done.');
  }, 70_000);
});
