/**
 * Membership changes of a `conclave serve` cluster with etcdctl 3.4, on real processes: the
 * documented procedure (docs/operations.md) — add a learner, start it with
 * `--initial-cluster-state existing`, it catches up (by snapshot: the log was compacted), promote
 * it, remove an old member — with the cluster serving throughout; a removed member that restarts
 * is refused and exits; the checks etcd makes before a change.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { etcdctl, hasEtcdctl, listMembers } from '../harness/etcdctl.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { until as poll } from '../harness/wait.js';

let c: ServedCluster;

/** etcdctl against the given member indexes; returns stdout, or throws with stderr. */
function ctl(at: readonly number[], ...args: string[]): string {
  return etcdctl(
    at.map((i) => c.members[i]!.endpoint),
    args,
  );
}

/** The member IDs of `member list -w json` as hex, by name (unstarted members under ''). */
function memberIds(at: readonly number[]): Map<string, { id: string; learner: boolean }> {
  const ms = listMembers(at.map((i) => c.members[i]!.endpoint));
  return new Map(ms.map((m) => [m.name, { id: m.id, learner: m.learner }]));
}

const until = <T>(what: string, f: () => T | undefined): Promise<T> =>
  poll(what, f, { timeoutMs: 30_000, intervalMs: 200 });

beforeAll(async () => {
  // A small snapshot count: the leader's log is compacted, so the new member catches up by snapshot.
  if (hasEtcdctl) c = await startServed({ members: 3, extraArgs: ['--snapshot-count=20'] });
}, 120_000);

afterAll(async () => {
  await c?.close();
});

describe.skipIf(!hasEtcdctl)('membership with etcdctl', () => {
  it('add a learner, start it existing, it catches up by snapshot, promote it, remove an old member', async () => {
    for (let k = 0; k < 100; k++) ctl([0, 1, 2], 'put', `k${k}`, `v${k}`);
    const n4 = await c.addMember('n4');
    const peer = `http://127.0.0.1:${c.members[n4]!.peerPort}`;
    const added = ctl([0, 1, 2], 'member', 'add', 'n4', '--learner', `--peer-urls=${peer}`);
    expect(added).toMatch(/Member +[0-9a-f]+ added to cluster +[0-9a-f]+/);
    expect(added).toContain(`ETCD_INITIAL_CLUSTER_STATE="existing"`);
    const listed = ctl([0, 1, 2], 'member', 'list');
    expect(listed).toMatch(new RegExp(`unstarted, , ${peer}, , true`));
    // A promotion before the learner even started is refused as etcd refuses it.
    const learnerId = memberIds([0])!.get('')!.id;
    expect(() => ctl([0, 1, 2], 'member', 'promote', learnerId)).toThrow(
      /can only promote a learner member which is in sync with leader/,
    );

    await c.startExisting(n4, [0, 1, 2, n4]);
    // It caught up: its own (serializable) reads show every key.
    await until('the learner has every key', () => {
      const out = ctl([n4], 'get', 'k99', '--consistency=s', '--print-value-only');
      return out.trim() === 'v99' ? true : undefined;
    });
    expect(c.members[n4]!.logs.some((l) => l.msg === 'joining a running cluster')).toBe(true);
    // The learner never voted or counted toward quorum: it is listed as a learner, its status says so.
    expect(ctl([n4], 'endpoint', 'status', '-w', 'json')).toMatch(/"isLearner":true/);
    // A learner serves only Status and serializable reads, as etcd 3.4: everything else is refused
    // with etcd's text (clients move to another endpoint on it), over gRPC and the JSON gateway.
    const notForLearner = /etcdserver: rpc not supported for learner/;
    expect(() => ctl([n4], 'put', 'on-learner', 'x')).toThrow(notForLearner);
    expect(() => ctl([n4], 'get', 'k1')).toThrow(notForLearner);
    expect(() => ctl([n4], 'member', 'list')).toThrow(notForLearner);
    expect(() => ctl([n4], 'lease', 'grant', '10')).toThrow(notForLearner);
    const gw = (path: string, body: object) =>
      fetch(`http://${c.members[n4]!.endpoint}${path}`, {
        method: 'POST',
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      }).then(async (r) => ({ status: r.status, text: await r.text() }));
    const put = await gw('/v3/kv/put', { key: btoa('on-learner'), value: btoa('x') });
    expect(put.status).toBe(503);
    expect(put.text).toMatch(notForLearner);
    expect((await gw('/v3/watch', { create_request: { key: btoa('k1') } })).text).toMatch(notForLearner);
    const sget = await gw('/v3/kv/range', { key: btoa('k1'), serializable: true });
    expect(sget.status).toBe(200);
    expect(JSON.parse(sget.text).kvs[0].value).toBe(btoa('v1'));

    await until('promote', () => ctl([0, 1, 2], 'member', 'promote', learnerId));
    // The members learn n4's name from n4 itself (asked once a second): wait for it, bounded.
    const after = await until('n4 listed by name', () => {
      const m = memberIds([0, 1, 2]);
      return m.has('n4') ? m : undefined;
    });
    expect(after.get('n4')).toEqual({ id: learnerId, learner: false });

    // Remove an old member (m0) while the cluster keeps serving writes.
    const m0 = after.get('m0')!.id;
    const exited = new Promise<number | null>((resolve) =>
      c.members[0]!.proc!.once('exit', (code) => resolve(code)),
    );
    // Retried while leadership moves (elections happen on a loaded machine); once applied, a
    // repeat answers "member not found", which also means it is done.
    await until('remove m0', () => {
      try {
        return ctl([1, 2, n4], 'member', 'remove', m0);
      } catch (err) {
        if (/member not found/.test(String(err))) return 'removed';
        if (/no leader|timed out|leader changed/.test(String(err))) return undefined;
        throw new Error(`${String(err)}\n${c.members.map((_, j) => c.report(j)).join('\n')}`);
      }
    });
    expect(await exited).toBe(0);
    ctl([1, 2, n4], 'put', 'after-remove', 'yes');
    expect(ctl([n4], 'get', 'after-remove', '--print-value-only').trim()).toBe('yes');
    expect(ctl([1], 'get', 'k0', '--print-value-only').trim()).toBe('v0');
    // m1 learns n4's name from n4 itself (asked once a second): wait for it, bounded.
    await until('m1 lists m1, m2 and n4 by name', () =>
      [...memberIds([1]).keys()].sort().join(',') === 'm1,m2,n4' ? true : undefined,
    );
  }, 180_000);

  // It runs after the test above (m0 removed and exited). Either m0 applied its own removal before
  // it stopped (its record says so: refused at once) or it did not (its peers refuse it): both end
  // with the removal message and exit code 1.
  it('a removed member restarted on its data dir is refused (by its own record or its old peers) and exits 1', async () => {
    // The removed member restarted on its data dir is refused by its old peers and exits.
    const before = c.members[0]!.logs.length + c.members[0]!.droppedLogs;
    c.start(0);
    const code = await new Promise<number | null>((resolve) =>
      c.members[0]!.proc!.once('exit', (x) => resolve(x)),
    );
    expect(code).toBe(1);
    const lines = c.members[0]!.logs.slice(before - c.members[0]!.droppedLogs).map(
      (l) => `${l.msg} ${JSON.stringify(l)}`,
    );
    expect(lines.join('\n')).toMatch(/removed from the cluster/);
    expect(lines.join('\n')).not.toMatch(/could not start/);
  }, 60_000);

  it('a removed member whose record lost the removal (a crash before member.json) is refused and exits 1', async () => {
    // Put m0 back among its own record's members, as if it crashed before recording its removal:
    // it starts, and then either replays its removal from its WAL or is refused by its old peers.
    const file = join(c.members[0]!.dataDir, 'member.json');
    const j = JSON.parse(readFileSync(file, 'utf8')) as {
      memberId: string;
      members: object[];
      removed?: Array<{ id: string; nodeId: number }>;
    };
    // (When m0 stopped before it applied its removal, its record already lists it as a member.)
    const self = j.removed?.find((r) => r.id === j.memberId);
    if (self) {
      j.removed = j.removed!.filter((r) => r !== self);
      j.members.push({
        id: self.id,
        nodeId: self.nodeId,
        name: 'm0',
        peerUrls: [`http://127.0.0.1:${c.members[0]!.peerPort}`],
        clientUrls: [`http://${c.members[0]!.endpoint}`],
      });
      writeFileSync(file, JSON.stringify(j));
    }
    const before = c.members[0]!.logs.length + c.members[0]!.droppedLogs;
    c.start(0);
    const code = await new Promise<number | null>((resolve) =>
      c.members[0]!.proc!.once('exit', (x) => resolve(x)),
    );
    const lines = c.members[0]!.logs.slice(before - c.members[0]!.droppedLogs).map(
      (l) => `${l.msg} ${JSON.stringify(l)}`,
    );
    expect(code, lines.join('\n')).toBe(1);
    expect(lines.join('\n')).toMatch(/removed from the cluster/);
    // The cluster kept serving, with m0 still out of it.
    expect(ctl([1, 2, c.members.length - 1], 'member', 'list')).not.toMatch(/, m0,/);
  }, 60_000);
});
