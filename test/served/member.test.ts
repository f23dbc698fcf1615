/**
 * Three `Member`s in this process over the real TCP peer transport on loopback, each on its own
 * data dir: what one `conclave serve` process runs, without the process around it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Role } from '../../backends/raft/consensus/types.js';
import { Member } from '../../backends/raft/member.js';
import {
  bootstrapIdentity,
  type Identity,
  parseInitialCluster,
  readIdentity,
  writeIdentity,
} from '../../backends/raft/server/ids.js';
import type { TransportLogger } from '../../backends/raft/transport/tcp.js';
import { freePort } from '../harness/etcd.js';

const quiet: TransportLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };
const names = ['a', 'b', 'c'];
let dir: string;
let peerPorts: number[];
const members = new Map<string, Member>();

async function startMember(name: string, identity?: Identity): Promise<Member> {
  const dataDir = join(dir, name);
  const i = names.indexOf(name);
  const id =
    identity ??
    (await readIdentity(dataDir)) ??
    bootstrapIdentity({
      name,
      initialCluster: parseInitialCluster(
        names.map((n, j) => `${n}=http://127.0.0.1:${peerPorts[j]}`).join(','),
      ),
      token: 'member-test',
      clientUrls: [`http://127.0.0.1:${40000 + i}`],
    });
  await writeIdentity(dataDir, id);
  const m = await Member.start({
    identity: id,
    dataDir,
    listenPeer: { host: '127.0.0.1', port: peerPorts[i]! },
    heartbeatMs: 20,
    electionTimeoutMs: 200,
    // Small, so that a member that was down long enough is caught up with a snapshot.
    snapshotEntries: 64,
    limits: { maxRequestBytes: 1.5 * 1024 * 1024, maxTxnOps: 128 },
    log: quiet,
  });
  members.set(name, m);
  return m;
}

async function leader(timeoutMs = 10_000): Promise<Member> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    for (const m of members.values()) if (!m.stopped && m.node.raft.role === Role.Leader) return m;
    if (performance.now() > until) throw new Error('no leader');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function follower(): Promise<Member> {
  const l = await leader();
  return [...members.values()].find((m) => !m.stopped && m !== l)!;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'conclave-member-'));
  peerPorts = [await freePort(), await freePort(), await freePort()];
  await Promise.all(names.map((n) => startMember(n)));
});

afterAll(async () => {
  await Promise.all([...members.values()].map((m) => m.stop()));
  rmSync(dir, { recursive: true, force: true });
});

describe('member over TCP', () => {
  it('member — a write through a follower is applied there and read linearizably on another member', async () => {
    const l = await leader();
    const f = [...members.values()].find((m) => m !== l)!;
    const other = [...members.values()].find((m) => m !== l && m !== f)!;
    const r = await f.kv.put('k1', 'v1');
    expect(r.revision).toBeGreaterThan(1);
    expect(Buffer.from((await other.kv.get('k1'))!.value).toString()).toBe('v1');
    expect((await l.kv.get('k1', { serializable: true }))?.modRevision).toBe(r.revision);
    // Every member reports the same cluster, and the leader's member ID.
    const st = await other.kv.status();
    expect(st.leader).toBe(l.identity.memberId);
    expect(other.info.clusterId).toBe(l.info.clusterId);
  });

  it('member — lease keep-alive, time-to-live and list on a follower are answered by the leader', async () => {
    const f = await follower();
    const lease = await f.kv.lease.grant(30);
    await f.kv.put('leased', 'x', { lease: lease.id });
    const ka = await f.kv.lease.keepAliveOnce(lease.id);
    expect(ka.ttlSeconds).toBe(30);
    const ttl = await f.kv.lease.timeToLive(lease.id, { keys: true });
    expect(ttl.grantedTtlSeconds).toBe(30);
    expect(ttl.ttlSeconds).toBeGreaterThan(25);
    expect(ttl.keys.map((k) => Buffer.from(k).toString())).toEqual(['leased']);
    expect(await f.kv.lease.list()).toContain(lease.id);
    // An unknown lease: keep-alive answers TTL 0, time-to-live -1 (etcd's answers).
    expect((await f.kv.lease.keepAliveOnce(123456789n)).ttlSeconds).toBe(0);
    expect((await f.kv.lease.timeToLive(123456789n)).ttlSeconds).toBe(-1);
    await f.kv.lease.revoke(lease.id);
    expect(await f.kv.get('leased')).toBeUndefined();
  });

  it("member — a watch on a follower delivers the leader's writes", async () => {
    const l = await leader();
    const f = [...members.values()].find((m) => m !== l)!;
    const w = f.kv.watch('w/', { prefix: true });
    await w.ready;
    await l.kv.put('w/1', 'one');
    for await (const b of w) {
      expect(b.events.map((e) => Buffer.from(e.kv.key).toString())).toEqual(['w/1']);
      break;
    }
    await w.close();
  });

  it('member — members learn each other’s client URLs', async () => {
    const until = performance.now() + 10_000;
    const m = members.get('a')!;
    while (m.info.members().some((d) => d.clientUrls.length === 0) && performance.now() < until)
      await new Promise((r) => setTimeout(r, 50));
    expect(
      m.info
        .members()
        .map((d) => d.clientUrls[0])
        .sort(),
    ).toEqual(['http://127.0.0.1:40000', 'http://127.0.0.1:40001', 'http://127.0.0.1:40002']);
  });

  it('member — a leader hands leadership to a follower before it stops', async () => {
    const l = await leader();
    expect(await l.transferLeadership(5000)).toBe(true);
    const next = await leader();
    expect(next).not.toBe(l);
  });

  it('member — a stopped member restarts from its data dir with its identity and its data', async () => {
    const f = await follower();
    const name = f.identity.name;
    await f.kv.put('before-stop', '1');
    await f.stop();
    members.delete(name);
    const l = await leader();
    await l.kv.put('while-down', '2');
    const back = await startMember(name);
    expect(back.identity.memberId).toBe(f.identity.memberId);
    expect(Buffer.from((await back.kv.get('before-stop'))!.value).toString()).toBe('1');
    expect(Buffer.from((await back.kv.get('while-down'))!.value).toString()).toBe('2');
  });

  it('member — a member down while the log was compacted past it catches up by a chunked snapshot over TCP', async () => {
    const f = await follower();
    const name = f.identity.name;
    await f.stop();
    members.delete(name);
    const l = await leader();
    const sentBefore = l.transport.stats().get(f.identity.nodeId)!.snapshotsSent;
    // Enough entries for two snapshots: the log kept for catch-up starts after the member's last index.
    for (let i = 0; i < 200; i++) await l.kv.put(`snap/${i}`, `v${i}`);
    const back = await startMember(name);
    const until = performance.now() + 20_000;
    while ((await back.kv.range('snap/', { prefix: true, serializable: true })).count < 200) {
      if (performance.now() > until) throw new Error('the restarted member did not catch up');
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await back.kv.range('snap/', { prefix: true, serializable: true });
    expect(r.kvs.map((k) => Buffer.from(k.value).toString())).toContain('v199');
    expect(l.transport.stats().get(back.identity.nodeId)!.snapshotsSent).toBeGreaterThan(sentBefore);
  });
});
