/**
 * Maintenance of a `conclave serve` cluster with etcdctl 3.4, on real processes: `snapshot save`
 * → `conclave snapshot restore` → a new cluster serves the same keys at the same revisions; HashKV
 * agrees across members at one revision; MoveLeader; NOSPACE past --quota-backend-bytes, refused
 * writes, then compact + defrag + disarm and writes are accepted again.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { main } from '../../backends/raft/cli.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const hasEtcdctl =
  spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;

const clusters: ServedCluster[] = [];
afterAll(async () => {
  await Promise.all(clusters.map((c) => c.close()));
});

function ctl(c: ServedCluster, at: readonly number[], ...args: string[]): string {
  const r = spawnSync(
    'etcdctl',
    ['--endpoints', at.map((i) => c.members[i]!.endpoint).join(','), '--command-timeout=10s', ...args],
    { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** Every key with its revisions, and the header revision, from one member (linearizable). */
function dump(c: ServedCluster, i: number): { revision: string; kvs: string } {
  const out = ctl(c, [i], 'get', '', '--from-key', '-w', 'json');
  const j = JSON.parse(out) as { header: { revision: number }; kvs?: unknown[] };
  return { revision: String(j.header.revision), kvs: JSON.stringify(j.kvs ?? []) };
}

describe.skipIf(!hasEtcdctl)('maintenance with etcdctl', () => {
  it('snapshot save → conclave snapshot restore → a new cluster serves identical keys and revisions; hashes agree; move-leader', async () => {
    const a = await startServed({ members: 3 });
    clusters.push(a);
    const kv = await connect({ backend: 'etcd', endpoints: a.endpoints, lazy: true });
    try {
      for (let k = 0; k < 30; k++) await kv.put(`key${k % 10}`, `value-${k}`);
    } finally {
      await kv.close();
    }
    ctl(a, [0], 'del', 'key3');
    const before = dump(a, 0);

    // Hash agreement: every member's HashKV at one revision is the same.
    const rev = before.revision;
    for (let i = 0; i < 3; i++) ctl(a, [i], 'get', 'key0', '--consistency=l');
    const hashes = [0, 1, 2].map((i) => {
      const out = ctl(a, [i], 'endpoint', 'hashkv', `--rev=${rev}`, '-w', 'json');
      return /"hash":(\d+)/.exec(out)![1];
    });
    expect(new Set(hashes).size).toBe(1);
    expect(hashes[0]).not.toBe('0');

    // MoveLeader: etcdctl finds the leader and asks it to hand over to a follower.
    const status = ctl(a, [0, 1, 2], 'endpoint', 'status', '-w', 'json');
    const ids = [...status.matchAll(/"member_id":(\d+)/g)].map((m) => BigInt(m[1]!));
    const leader = BigInt(/"leader":(\d+)/.exec(status)![1]!);
    const target = ids.find((id) => id !== leader)!;
    expect(ctl(a, [0, 1, 2], 'move-leader', target.toString(16))).toMatch(/Leadership transferred/);
    const after = ctl(a, [0, 1, 2], 'endpoint', 'status', '-w', 'json');
    expect(BigInt(/"leader":(\d+)/.exec(after)![1]!)).toBe(target);

    const file = join(a.dir, 'backup.db');
    expect(ctl(a, [1], 'snapshot', 'save', file)).toMatch(/Snapshot saved at/);
    expect(statSync(file).size % 512).toBe(32);
    expect(readFileSync(file).subarray(0, 8).toString('latin1')).toBe('CNCLSNAP');

    // A new cluster from the file: each member restores it with the new cluster's flags.
    const b = await startServed({
      members: 3,
      beforeStart: async (nc) => {
        const initialCluster = nc.initialClusterOf(nc.members.map((_, i) => i));
        const token = nc.token;
        for (const m of nc.members) {
          const code = await main([
            'snapshot',
            'restore',
            file,
            `--data-dir=${m.dataDir}`,
            `--name=${m.name}`,
            `--initial-cluster=${initialCluster}`,
            `--initial-cluster-token=${token}`,
            `--initial-advertise-peer-urls=http://127.0.0.1:${m.peerPort}`,
          ]);
          expect(code).toBe(0);
        }
      },
    });
    clusters.push(b);
    for (let i = 0; i < 3; i++) expect(dump(b, i)).toEqual(before);
    // It is a new cluster that takes writes, continuing the revisions.
    ctl(b, [2], 'put', 'after-restore', 'x');
    expect(Number(dump(b, 0).revision)).toBe(Number(before.revision) + 1);
  }, 400_000);

  it('NOSPACE: writes past --quota-backend-bytes are refused until compact + defrag + disarm', async () => {
    const c = await startServed({ members: 1, extraArgs: ['--quota-backend-bytes=65536'] });
    clusters.push(c);
    const big = 'x'.repeat(8192);
    let refused = '';
    for (let k = 0; k < 40 && refused === ''; k++) {
      try {
        ctl(c, [0], 'put', 'big', big);
      } catch (err) {
        refused = String(err);
      }
    }
    expect(refused).toMatch(/etcdserver: mvcc: database space exceeded/);
    expect(ctl(c, [0], 'alarm', 'list')).toMatch(/alarm:NOSPACE/);
    // Still refused: the alarm stays raised until disarmed.
    expect(() => ctl(c, [0], 'put', 'small', 'v')).toThrow(/database space exceeded/);
    // Reads and deletes still work.
    expect(ctl(c, [0], 'get', 'big', '--print-value-only').trim()).toBe(big);
    const rev = JSON.parse(ctl(c, [0], 'get', 'big', '-w', 'json')).header.revision as number;
    ctl(c, [0], 'compaction', String(rev));
    expect(ctl(c, [0], 'defrag')).toMatch(/Finished defragmenting etcd member/);
    expect(ctl(c, [0], 'alarm', 'disarm')).toMatch(/alarm:NOSPACE/);
    expect(ctl(c, [0], 'alarm', 'list').trim()).toBe('');
    ctl(c, [0], 'put', 'small', 'v');
    expect(ctl(c, [0], 'get', 'small', '--print-value-only').trim()).toBe('v');
  }, 240_000);
});
