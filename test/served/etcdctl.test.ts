/**
 * etcdctl 3.4 against three `conclave serve` processes: the IDs it shows are etcd's derivation
 * from the peer URLs and the token, `endpoint status` finds exactly one leader, and every member
 * is healthy.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterIdOf, memberIdOf } from '../../backends/raft/server/ids.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const hasEtcdctl = (() => {
  try {
    execFileSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

let c: ServedCluster;

/** How long `member list` may take to show every peer's client URLs after start. */
const memberUrlsWaitMs = 20_000;

function ctl(...args: string[]): string {
  return execFileSync('etcdctl', ['--endpoints', c.endpoints.join(','), '--command-timeout=10s', ...args], {
    env: { ...process.env, ETCDCTL_API: '3' },
    encoding: 'utf8',
    timeout: 30_000,
  });
}

/** uint64 fields of etcdctl's JSON, read exactly (JSON.parse would round them). */
const uints = (out: string, field: string) =>
  [...out.matchAll(new RegExp(`"${field}":(\\d+)`, 'g'))].map((m) => BigInt(m[1]!));

beforeAll(async () => {
  if (hasEtcdctl) c = await startServed({ members: 3 });
}, 90_000);

afterAll(async () => {
  await c?.close();
});

describe.skipIf(!hasEtcdctl)('etcdctl against conclave serve', () => {
  it('etcdctl — member list shows the IDs etcd would derive, names and client URLs', () => {
    const out = ctl('member', 'list', '-w', 'json');
    const ids = uints(out, 'ID');
    const expected = c.members.map((m) => memberIdOf([`http://127.0.0.1:${m.peerPort}`], c.token));
    expect([...ids].sort()).toEqual([...expected].sort());
    expect(uints(out, 'cluster_id')[0]).toBe(clusterIdOf(expected));
    // A member learns its peers' client URLs from them after start (as etcd publishes each member's
    // attributes once it runs), so the list may lack them for a moment: wait, bounded.
    const rows = c.members.map(
      (m) =>
        new RegExp(`started, ${m.name}, http://127.0.0.1:${m.peerPort}, http://127.0.0.1:${m.clientPort}`),
    );
    const until = performance.now() + memberUrlsWaitMs;
    let text = ctl('member', 'list');
    while (!rows.every((r) => r.test(text)) && performance.now() < until) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      text = ctl('member', 'list');
    }
    for (const r of rows) expect(text).toMatch(r);
  }, 60_000);

  it('etcdctl — endpoint status: one leader all members agree on, one term; endpoint health: all healthy', () => {
    const out = ctl('endpoint', 'status', '-w', 'json');
    const memberIds = uints(out, 'member_id');
    const leaders = uints(out, 'leader');
    expect(memberIds).toHaveLength(3);
    expect(new Set(leaders).size).toBe(1);
    expect(memberIds).toContain(leaders[0]);
    expect(new Set(uints(out, 'raft_term')).size).toBe(1);
    const table = ctl('endpoint', 'status', '-w', 'table');
    expect(table.match(/\|\s+true\s+\|\s+false\s+\|/g)).toHaveLength(1);
    // etcdctl 3.4 prints health results on stderr.
    const h = spawnSync('etcdctl', ['--endpoints', c.endpoints.join(','), 'endpoint', 'health'], {
      env: { ...process.env, ETCDCTL_API: '3' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(h.status).toBe(0);
    const health = h.stdout + h.stderr;
    for (const e of c.endpoints) expect(health).toContain(`${e} is healthy`);
  });

  it('etcdctl — a put through one member is read back through every member', () => {
    expect(ctl('put', 'served/etcdctl', 'hello').trim()).toBe('OK');
    for (const e of c.endpoints) {
      const got = execFileSync('etcdctl', ['--endpoints', e, 'get', 'served/etcdctl', '--print-value-only'], {
        env: { ...process.env, ETCDCTL_API: '3' },
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(got.trim()).toBe('hello');
    }
  });
});
