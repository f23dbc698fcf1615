import { expect, it } from 'vitest';
import { type GroupChange, GroupMember, joinGroup, watchGroup } from '../../../recipes/group.js';
import { buildRing, type PartitionChange, Partitioner, ringOwners } from '../../../recipes/partitioner.js';
import { ConclaveError } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { waitFor } from '../util.js';

/** The next value of an iterator, or a failure after `ms`. */
async function next<T>(it: AsyncIterator<T>, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    it.next(),
    new Promise<never>(
      (_, rej) => (timer = setTimeout(() => rej(new Error(`no change within ${ms} ms`)), ms)),
    ),
  ]);
  clearTimeout(timer);
  if (r.done) throw new Error('the iterator ended');
  return r.value;
}

const ids = (ms: readonly { id: string }[]) => ms.map((m) => m.id);

export const registerGroupTests: RegisterTests = (ctx) => {
  const ttl = () => ctx().backend.minTtlSeconds + 5;

  it('group — members join with data under their session lease (key group/id), see each other, and leave', async () => {
    const { kv, prefix } = ctx();
    const g = `${prefix('grp-basic')}workers`;
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    await using s2 = await Session.create(kv, { ttlSeconds: ttl() });
    const a = await joinGroup(s1, g, { id: 'a', data: 'host-a:1' });
    const changes = a.changes()[Symbol.asyncIterator]();
    const b = await GroupMember.join(s2, g, { id: 'b', data: 'host-b:1' });
    // The layout: plain keys, the data as the value, the member's lease.
    const raw = await kv.get(`${g}/b`);
    expect(toText(raw!.value)).toBe('host-b:1');
    expect(raw!.lease).toBe(s2.lease);
    expect(b.createRevision).toBe(raw!.createRevision);
    const c1 = await next(changes);
    expect(ids(c1.joined)).toEqual(['b']);
    expect(ids(c1.members)).toEqual(['a', 'b']);
    expect(ids(b.members)).toEqual(['a', 'b']);
    expect(toText(b.view.member('a')!.data)).toBe('host-a:1');
    await waitFor(() => a.members.length === 2, 10_000, 'a to see b');
    const rev = await b.update('host-b:2');
    const c2 = await next(changes);
    expect(ids(c2.updated)).toEqual(['b']);
    expect(c2.revision).toBe(rev);
    await b.leave();
    expect(b.lost.aborted).toBe(true); // left on purpose: lost fires with `closed`
    expect(ConclaveError.is(b.lost.reason, 'closed')).toBe(true);
    const c3 = await next(changes);
    expect(ids(c3.left)).toEqual(['b']);
    expect(ids(c3.members)).toEqual(['a']);
    expect(await kv.get(`${g}/b`)).toBeUndefined();
    expect(a.lost.aborted).toBe(false);
    await a.leave();
    expect((await kv.range(`${g}/`, { prefix: true })).count).toBe(0);
  });

  it('group — an id held by another session is refused with conflict; the same session adopts its key', async () => {
    const { kv, prefix } = ctx();
    const g = `${prefix('grp-conflict')}g`;
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    await using s2 = await Session.create(kv, { ttlSeconds: ttl() });
    const a = await joinGroup(s1, g, { id: 'x', data: '1' });
    const err = await joinGroup(s2, g, { id: 'x', data: '2' }).catch((e) => e);
    expect(ConclaveError.is(err, 'conflict')).toBe(true);
    expect(toText((await kv.get(`${g}/x`))!.value)).toBe('1');
    const again = await joinGroup(s1, g, { id: 'x', data: '3' });
    expect(again.createRevision).toBe(a.createRevision);
    expect(toText((await kv.get(`${g}/x`))!.value)).toBe('3');
    await again.view.close();
    await a.leave();
  });

  it('group — a member whose session is lost leaves: the others see it go, its own lost fires', async () => {
    const { kv, prefix } = ctx();
    const g = `${prefix('grp-loss')}g`;
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    const s2 = await Session.create(kv, { ttlSeconds: ttl() });
    await using a = await joinGroup(s1, g, { id: 'a' });
    const b = await joinGroup(s2, g, { id: 'b' });
    await waitFor(() => a.members.length === 2, 10_000, 'a to see b');
    const changes = a.changes()[Symbol.asyncIterator]();
    await kv.lease.revoke(s2.lease); // b's process "dies": its lease goes, and its key with it
    const c = await next(changes);
    expect(ids(c.left)).toEqual(['b']);
    await waitFor(() => b.lost.aborted, 10_000, "b's lost");
    await b.view.close();
    await s2.close().catch(() => undefined);
  });

  it('group — a member whose key is deleted behind its back gets lost', async () => {
    const { kv, prefix } = ctx();
    const g = `${prefix('grp-deleted')}g`;
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    const m = await joinGroup(s, g, { id: 'm' });
    await kv.delete(`${g}/m`);
    await waitFor(() => m.lost.aborted, 10_000, "the member's lost");
    expect(ConclaveError.is(m.lost.reason, 'session-lost')).toBe(true);
    await expect(m.update('x')).rejects.toBeDefined();
    await m.leave();
  });

  it('group — a read-only view follows members without joining, bounded by membersMax', async () => {
    const { kv, prefix } = ctx();
    const g = `${prefix('grp-view')}g`;
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    await using view = await watchGroup(kv, g, { membersMax: 2 });
    const it = view.changes()[Symbol.asyncIterator]();
    const m1 = await joinGroup(s, g, { id: 'one' });
    const seen: GroupChange = await next(it);
    expect(ids(seen.joined)).toEqual(['one']);
    await joinGroup(s, g, { id: 'two' });
    await next(it);
    await joinGroup(s, g, { id: 'three' });
    const err = await next(it).catch((e) => e);
    expect(ConclaveError.is(err, 'too-many-requests')).toBe(true);
    expect(String(err.message)).toMatch(/keysMax|membersMax/);
    await m1.view.close();
  });

  it('partitioner — owners are the ring of the live members; a leave reports exactly the tracked items that moved; two clients agree', async () => {
    const { kv, prefix, newKv } = ctx();
    const g = `${prefix('grp-part')}g`;
    const items = Array.from({ length: 40 }, (_, i) => `shard-${i}`);
    const sessions = await Promise.all([0, 1, 2].map(() => Session.create(kv, { ttlSeconds: ttl() })));
    try {
      const weight = (m: { data: Uint8Array }) => Number(toText(m.data)) || 1;
      const members = await Promise.all(
        ['w1', 'w2', 'w3'].map((id, i) => joinGroup(sessions[i]!, g, { id, data: String(i + 1) })),
      );
      const other = await watchGroup(await newKv(), g);
      await waitFor(
        () => members[0]!.members.length === 3 && other.members.length === 3,
        10_000,
        'all joined',
      );
      const p1 = new Partitioner(members[0]!.view, { weight, track: items, replicas: 2 });
      const p2 = new Partitioner(other, { weight, replicas: 2 });
      const expected = buildRing(
        [
          { id: 'w1', weight: 1 },
          { id: 'w2', weight: 2 },
          { id: 'w3', weight: 3 },
        ],
        p1.vnodes,
      );
      for (const i of items) {
        expect(p1.owners(i)).toEqual(ringOwners(expected, i, 2));
        expect(p2.owners(i)).toEqual(p1.owners(i));
      }
      const before = new Map(items.map((i) => [i, p1.owners(i)]));
      const changes = p1.changes()[Symbol.asyncIterator]();
      await members[2]!.leave(); // w3 leaves
      const c: PartitionChange = await next(changes);
      expect(c.left).toEqual(['w3']);
      expect(c.members).toEqual(['w1', 'w2']);
      const after = buildRing(
        [
          { id: 'w1', weight: 1 },
          { id: 'w2', weight: 2 },
        ],
        p1.vnodes,
      );
      const movedExpected = items.filter((i) => before.get(i)!.join() !== ringOwners(after, i, 2).join());
      expect(c.moved.map((m) => m.item).sort()).toEqual(movedExpected.sort());
      expect(movedExpected.length).toBeGreaterThan(0);
      for (const m of c.moved) {
        expect(m.from).toEqual(before.get(m.item));
        expect(m.to).toEqual(ringOwners(after, m.item, 2));
      }
      await waitFor(() => p2.members.length === 2, 10_000, 'the other client to see the leave');
      for (const i of items) expect(p2.owners(i)).toEqual(p1.owners(i));
      expect(p1.ownedBy('w1', items).every((i) => p1.owners(i).includes('w1'))).toBe(true);
      await p1.close();
      await p2.close();
      await other.close();
      for (const m of members) await m.leave();
    } finally {
      for (const s of sessions) await s.close().catch(() => undefined);
    }
  });
};
