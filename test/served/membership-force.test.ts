/**
 * Recovery from the loss of a majority with etcd's `--force-new-cluster`, on real processes with
 * etcdctl 3.4 (docs/operations.md): two of three members die for good, the survivor is restarted
 * on its data dir with `--force-new-cluster` and serves alone with every key it had (same
 * revisions), and a member is then added back afresh.
 */
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { etcdctl, hasEtcdctl } from '../harness/etcdctl.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { until as poll } from '../harness/wait.js';

let c: ServedCluster | undefined;

afterAll(async () => {
  await c?.close();
});

/** etcdctl against members `at` with `--command-timeout=<timeout>`; stdout, or throws with stderr. */
function ctl(at: readonly number[], timeout: string, ...args: string[]): string {
  return etcdctl(
    at.map((i) => c!.members[i]!.endpoint),
    args,
    { commandTimeout: timeout },
  );
}

const until = <T>(what: string, f: () => T | undefined): Promise<T> =>
  poll(what, f, { timeoutMs: 30_000, intervalMs: 250 });

describe.skipIf(!hasEtcdctl)('--force-new-cluster', () => {
  it('after losing two of three members, the survivor restarted with --force-new-cluster serves its data alone; a member is added back', async () => {
    c = await startServed({ members: 3 });
    const cl = c;
    for (let k = 0; k < 20; k++) ctl([0, 1, 2], '10s', 'put', `k${k}`, `v${k}`);
    const before = ctl([0], '10s', 'get', 'k19', '-w', 'json');
    const modRev = /"mod_revision":(\d+)/.exec(before)![1];
    // Two members lost for good: no quorum, writes fail.
    await cl.kill(1);
    await cl.kill(2);
    expect(() => ctl([0], '2s', 'put', 'no-quorum', 'x')).toThrow();
    await cl.stop(0);

    const from = cl.members[0]!.logs.length + cl.members[0]!.droppedLogs;
    cl.start(0, ['--force-new-cluster']);
    await cl.waitLog(0, (l) => l.msg === 'serving', 60_000, from);
    await cl.waitLog(0, (l) => /force-new-cluster/.test(l.msg), 10_000, from);
    // Alone in its cluster, with every key at its revision, and writable.
    await until('a put on the forced member', () => ctl([0], '5s', 'put', 'after', 'yes'));
    const list = ctl([0], '10s', 'member', 'list');
    expect(list.trim().split('\n')).toHaveLength(1);
    expect(list).toMatch(/, started, m0, /);
    for (let k = 0; k < 20; k++)
      expect(ctl([0], '10s', 'get', `k${k}`, '--print-value-only').trim()).toBe(`v${k}`);
    expect(ctl([0], '10s', 'get', 'k19', '-w', 'json')).toContain(`"mod_revision":${modRev}`);

    // The recovery procedure goes on: add a member back, afresh (its old data dir deleted).
    rmSync(cl.members[1]!.dataDir, { recursive: true, force: true });
    const peer = `http://127.0.0.1:${cl.members[1]!.peerPort}`;
    await until('member add m1', () => ctl([0], '10s', 'member', 'add', 'm1', `--peer-urls=${peer}`));
    await cl.startExisting(1, [0, 1]);
    await until('m1 has the data', () =>
      ctl([1], '5s', 'get', 'after', '--print-value-only').trim() === 'yes' ? true : undefined,
    );
    expect(ctl([1], '10s', 'get', 'k0', '--print-value-only').trim()).toBe('v0');
  }, 180_000);
});
