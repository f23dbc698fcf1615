/**
 * Raft-only lease and watch tests of the embedded store: expiry belongs to the leader's clock and
 * is committed through Raft (so a partitioned leader cannot revoke), a new leader refreshes every
 * lease (etcd's lessor Promote), expiry on a virtual clock, and a watch across leadership transfers.
 *
 * Lease deadlines are kept on `ClusterOptions.now`: these tests inject a virtual clock and move it
 * by hand, so a 60 s lease expires in milliseconds and a deadline passes exactly when the test says.
 * Raft ticks (elections, heartbeats, the leader's expiry check) still come from real timers.
 */
import { describe, expect, it } from 'vitest';
import { MessageType } from '../../backends/raft/consensus/types.js';
import { EmbeddedCluster } from '../../backends/raft/embedded.js';
import type { FailoverWatch } from '../../backends/raft/failover-watch.js';
import { decodeCommand } from '../../backends/raft/node/commands.js';
import type { RaftNode } from '../../backends/raft/node/node.js';
import { ConclaveError } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { WatchEvent } from '../../src/types.js';
import { collect, eventCount, sleep, waitFor } from '../conformance/util.js';
import { leaseCluster, VirtualClock } from './lease-fixtures.js';

/** Waits until every running member has applied the leader's revision. */
async function converged(c: EmbeddedCluster, kv: KV): Promise<number> {
  const rev = (await kv.status()).revision;
  await waitFor(
    () => [...c.members.values()].every((n) => n.stopped || n.store.revision >= rev),
    10_000,
    `every member at revision ${rev}`,
  );
  return rev;
}

/** A write retried while leadership moves (guarded by the caller's compare, so applied once). */
async function retrying<T>(f: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await f();
    } catch (err) {
      if (!ConclaveError.is(err) || !err.retryable || attempt > 30) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Revoke commands in `n`'s log after `index` (proposed, possibly uncommitted). */
function revokesAfter(n: RaftNode, index: number, lease: bigint): number[] {
  const out: number[] = [];
  for (let i = index + 1; i <= n.raft.log.lastIndex; i++) {
    const e = n.raft.log.entry(i);
    if (!e || e.data.length === 0) continue;
    try {
      const cmd = decodeCommand(e.data);
      if (cmd.op === 'revoke' && cmd.lease === lease) out.push(i);
    } catch {
      // A conf change or another entry kind: not a revocation.
    }
  }
  return out;
}

describe('raft embedded — leases and leadership', () => {
  it('a partitioned leader cannot revoke an expired lease the majority keeps alive; after heal its revocation is gone', async () => {
    const clock = new VirtualClock();
    const c = new EmbeddedCluster({ nodes: 3, now: clock.now });
    const kv = c.client();
    try {
      const old = await c.waitLeader();
      const ttl = c.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      await kv.put('pl/k', 'v', { lease: id });
      const revBefore = await converged(c, kv);
      const lastBefore = old.raft.log.lastIndex;

      // Cut the leader off, then move its clock past the deadline: on its next tick it still
      // believes it leads (check-quorum needs a whole election timeout) and proposes the revocation.
      const others = c.ids.filter((i) => i !== old.id);
      c.partition([old.id], others);
      clock.advance(ttl * 1000 + 500);
      await waitFor(
        () => revokesAfter(old, lastBefore, id).length > 0,
        10_000,
        'the cut-off leader to propose the revocation',
      );
      const revokeIndex = revokesAfter(old, lastBefore, id)[0]!;
      const revokeTerm = old.raft.log.term(revokeIndex)!;
      // It cannot commit: no majority acknowledges it.
      expect(old.raft.log.committed).toBeLessThan(revokeIndex);

      // The majority elects a leader (the old one stepped down); keep-alives reach it while the
      // virtual clock runs well past several TTLs.
      await waitFor(() => !old.isLeader && c.leader() !== undefined, 10_000, 'a leader on the majority side');
      const next = c.leader()!;
      expect(others).toContain(next.id);
      for (let i = 0; i < 6; i++) {
        clock.advance((ttl * 1000) / 2);
        const ka = await kv.lease.keepAliveOnce(id);
        expect(ka.ttlSeconds).toBe(ttl);
      }
      await clock.readsMore(30, 'the new leader to check expiry several times');
      expect(old.raft.log.committed).toBeLessThan(revokeIndex);
      expect(old.store.leases.get(id)).toBeDefined();
      expect(next.store.revision).toBe(revBefore);

      c.heal();
      // The old leader's log is replaced from the new leader: the entry at the revocation's index
      // now belongs to a later term, and nothing was revoked anywhere.
      await waitFor(
        () => old.raft.log.term(revokeIndex) !== revokeTerm && old.raft.log.committed >= revokeIndex,
        10_000,
        "the old leader's uncommitted revocation to be replaced",
      );
      expect(revokesAfter(old, lastBefore, id)).toEqual([]);
      await kv.lease.keepAliveOnce(id);
      const rev = await converged(c, kv);
      expect(rev).toBe(revBefore);
      for (const n of c.members.values()) {
        expect(n.store.leases.get(id), `lease on member ${n.id}`).toBeDefined();
        expect(toText(n.store.range('pl/k').kvs[0]!.value), `key on member ${n.id}`).toBe('v');
      }
      const got = await kv.get('pl/k');
      expect(got?.lease).toBe(id);
      const live = await kv.lease.timeToLive(id, { keys: true });
      expect(live.ttlSeconds).toBeGreaterThan(0);
      expect(live.keys.map(toText)).toEqual(['pl/k']);
    } finally {
      await kv.close();
      await c.close();
    }
  }, 40_000);

  it("a new leader refreshes every lease's remaining time: a lease kept alive long after its grant survives a leadership transfer", async () => {
    const clock = new VirtualClock();
    const c = new EmbeddedCluster({ nodes: 3, now: clock.now });
    const kv = c.client();
    try {
      const first = await c.waitLeader();
      const ttl = c.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      await kv.put('pr/k', 'v', { lease: id });
      const revBefore = await converged(c, kv);
      // Keep-alives reach only the leader (no log entry): on the followers the lease's deadline is
      // still grant time + TTL, long past after this loop.
      for (let i = 0; i < 10; i++) {
        clock.advance((ttl * 1000) / 2);
        expect((await kv.lease.keepAliveOnce(id)).ttlSeconds).toBe(ttl);
      }
      const target = c.ids.find((i) => i !== first.id)!;
      expect(c.members.get(target)!.store.leases.remainingSeconds(id, clock.ms)).toBe(0);

      // A transfer that times out (the target lagged) is asked for again.
      await waitFor(
        () => {
          if (c.leader()?.id === target) return true;
          c.transferLeader(target);
          return false;
        },
        10_000,
        `member ${target} to lead`,
      );
      // Without the refresh the new leader would find the lease expired on its first tick.
      await clock.readsMore(30, 'the new leader to check expiry several times');
      expect(c.leader()?.id).toBe(target);
      // The refresh is the TTL plus one election timeout (100 ms here), as etcd's Promote does.
      const t = await kv.lease.timeToLive(id);
      expect(t.ttlSeconds).toBeGreaterThanOrEqual(ttl);
      expect(t.ttlSeconds).toBeLessThanOrEqual(ttl + 1);
      expect((await kv.get('pr/k'))?.lease).toBe(id);
      expect((await kv.status()).revision).toBe(revBefore);

      // Control: past the refreshed deadline without a keep-alive, the new leader does revoke it.
      clock.advance(ttl * 1000 + 100 + 1);
      await waitFor(async () => (await kv.get('pr/k')) === undefined, 10_000, 'the lease to expire');
      expect((await kv.lease.timeToLive(id)).ttlSeconds).toBe(-1);
    } finally {
      await kv.close();
      await c.close();
    }
  }, 40_000);

  it('a 60 s lease on a virtual clock is still alive at 59 s and expires past 60 s: its keys deleted at one revision, watchers see the deletes', async () => {
    const clock = new VirtualClock();
    const c = new EmbeddedCluster({ nodes: 3, now: clock.now });
    const kv = c.client();
    const started = performance.now();
    try {
      await c.waitLeader();
      const { id, ttlSeconds } = await kv.lease.grant(60);
      expect(ttlSeconds).toBe(60);
      await kv.put('vc/a', '1', { lease: id });
      await kv.put('vc/b', '2', { lease: id });
      const keep = await kv.put('vc/keep', '3');
      const w = kv.watch('vc/', { prefix: true, startRevision: keep.revision + 1 });

      clock.advance(59_000);
      await clock.readsMore(30, 'the leader to check expiry several times at 59 s');
      expect((await kv.status()).revision).toBe(keep.revision);
      expect((await kv.lease.timeToLive(id)).ttlSeconds).toBe(1);
      expect((await kv.range('vc/', { prefix: true })).count).toBe(3);

      clock.advance(1_001);
      const batches = await collect(w, (bs) => eventCount(bs) >= 2, 10_000);
      const events: WatchEvent[] = batches.flatMap((b) => b.events);
      expect(events.map((e) => [e.type, toText(e.kv.key)])).toEqual([
        ['delete', 'vc/a'],
        ['delete', 'vc/b'],
      ]);
      // One revocation, one revision, delivered as one batch (a revision is never split).
      expect(batches.filter((b) => b.events.length > 0)).toHaveLength(1);
      expect(events.map((e) => e.kv.modRevision)).toEqual([keep.revision + 1, keep.revision + 1]);
      const r = await kv.range('vc/', { prefix: true });
      expect(r.kvs.map((x) => toText(x.key))).toEqual(['vc/keep']);
      expect(r.revision).toBe(keep.revision + 1);
      expect((await kv.lease.timeToLive(id)).ttlSeconds).toBe(-1);
      expect(await kv.lease.list()).not.toContain(id);
      await w.close();
      // The point of the virtual clock: nowhere near 60 real seconds.
      expect(performance.now() - started).toBeLessThan(30_000);
    } finally {
      await kv.close();
      await c.close();
    }
  }, 40_000);

  it('a watch open across several leadership transfers sees every revision once, in order', async () => {
    const c = new EmbeddedCluster({ nodes: 3, requestTimeoutMs: 2000 });
    const kv = c.client();
    try {
      await c.waitLeader();
      const first = await kv.put('wt/0', '0');
      const w = kv.watch('wt/', { prefix: true, startRevision: first.revision }) as FailoverWatch;
      const writes = 120;
      const seen: Array<{ i: number; rev: number }> = [];
      const reader = (async () => {
        for await (const b of w) {
          for (const e of b.events) seen.push({ i: Number(toText(e.kv.value)), rev: e.kv.modRevision });
          if (seen.length >= writes) break;
        }
      })();
      const revs = [first.revision];
      const leaders = new Set<number>([(await c.waitLeader()).id]);
      for (let i = 1; i < writes; i++) {
        if (i % 30 === 0) {
          // Move leadership to the next member and wait for it; writes meanwhile fail retryably.
          const from = (await c.waitLeader()).id;
          const to = c.ids[(c.ids.indexOf(from) + 1) % c.ids.length]!;
          await waitFor(
            () => {
              if (c.leader()?.id === to) return true;
              c.transferLeader(to);
              return false;
            },
            10_000,
            `leadership to move from ${from} to ${to}`,
          );
          leaders.add(to);
        }
        const t = await retrying(() =>
          kv.txn({
            compare: [{ key: `wt/${i}`, target: 'version', result: '=', value: 0 }],
            success: [{ type: 'put', key: `wt/${i}`, value: String(i) }],
            failure: [],
          }),
        );
        expect(t.succeeded).toBe(true);
        revs.push(t.revision);
      }
      await Promise.race([
        reader,
        new Promise((_, rej) =>
          setTimeout(() => rej(new Error(`watch saw ${seen.length} of ${writes}`)), 10_000),
        ),
      ]);
      expect(leaders.size).toBe(3);
      expect(seen.map((s) => s.i)).toEqual(Array.from({ length: writes }, (_, i) => i));
      expect(seen.map((s) => s.rev)).toEqual(revs);
      // Nothing failed over: the member serving the watch kept serving it as leadership moved.
      expect(w.failovers).toBe(0);
      await w.close();
    } finally {
      await kv.close();
      await c.close();
    }
  }, 40_000);
});

/**
 * A keep-alive never revives an expiring lease (etcd lessor.Renew): the three ways a keep-alive
 * can meet a lease whose deadline passed, on every storage flavour. On the virtual clock the
 * deadline passes exactly when the test moves it, and the gate holds a revocation in flight.
 */
const flavours = [
  { nodes: 1, durable: false },
  { nodes: 3, durable: false },
  { nodes: 1, durable: true },
  { nodes: 3, durable: true },
];
describe.each(flavours)(
  'raft embedded, $nodes node(s), durable: $durable — an expiring lease is never renewed',
  (f) => {
    async function leased(label: string) {
      const lc = await leaseCluster(f);
      const kv = lc.cluster.client();
      const ttl = lc.cluster.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      const key = `${label}/k`;
      await kv.put(key, 'v', { lease: id });
      return {
        lc,
        kv,
        ttl,
        id,
        key,
        close: async () => {
          await kv.close();
          await lc.close();
        },
      };
    }

    it('a keep-alive arriving after the deadline, before the leader noticed it, is answered TTL 0 and the keys are gone', async () => {
      const t = await leased('at-once');
      try {
        // The deadline passes and the keep-alive reaches the leader before its next expiry check.
        t.lc.clock.advance(t.ttl * 1000 + 1);
        const ka = await t.kv.lease.keepAliveOnce(t.id);
        expect(ka.ttlSeconds).toBe(0);
        expect(await t.kv.get(t.key)).toBeUndefined();
        expect((await t.kv.lease.timeToLive(t.id)).ttlSeconds).toBe(-1);
      } finally {
        await t.close();
      }
    }, 40_000);

    it('a keep-alive after the leader proposed the revocation is answered TTL 0, never a TTL', async () => {
      const t = await leased('after-check');
      try {
        const seen = t.lc.gate.seen;
        t.lc.clock.advance(t.ttl * 1000 + 1);
        await waitFor(() => t.lc.gate.seen > seen, 10_000, 'the leader to propose the revocation');
        const ka = await t.kv.lease.keepAliveOnce(t.id);
        expect(ka.ttlSeconds).toBe(0);
        expect(await t.kv.get(t.key)).toBeUndefined();
      } finally {
        await t.close();
      }
    }, 40_000);

    it('a keep-alive while the revocation is in flight waits for it to apply, then answers TTL 0; a put with the lease leaves no key', async () => {
      const t = await leased('in-flight');
      try {
        t.lc.gate.close();
        t.lc.clock.advance(t.ttl * 1000 + 1);
        await waitFor(() => t.lc.gate.holding > 0, 10_000, 'the revocation to be proposed and held');
        let answer: number | string | undefined;
        const ka = t.kv.lease.keepAliveOnce(t.id).then(
          (r) => (answer = r.ttlSeconds),
          (err: unknown) => (answer = String(err)),
        );
        const put = t.kv.put(`${t.key}2`, 'v', { lease: t.id }).then(
          () => 'put',
          (err: unknown) => (err as { code?: string }).code,
        );
        // Several expiry checks later, the keep-alive is still waiting: nothing renewed the lease.
        await t.lc.clock.readsMore(3, 'a few leader ticks');
        expect(answer).toBeUndefined();
        t.lc.gate.release();
        await ka;
        expect(answer).toBe(0);
        // Proposed after the revocation, the put applies after it: lease-not-found, no key left.
        expect(await put).toBe('lease-not-found');
        expect(await t.kv.get(t.key)).toBeUndefined();
        expect(await t.kv.get(`${t.key}2`)).toBeUndefined();
        expect((await t.kv.lease.timeToLive(t.id)).ttlSeconds).toBe(-1);
      } finally {
        await t.close();
      }
    }, 40_000);
  },
);

describe('raft embedded — a new leader never expires a lease earlier than its previous leader could have', () => {
  it('a keep-alive answered TTL t at T by the old leader holds on the new one until T + t, plus one election timeout', async () => {
    const lc = await leaseCluster({ nodes: 3, durable: false });
    const kv = lc.cluster.client();
    try {
      const c = lc.cluster;
      const first = await c.waitLeader();
      const ttl = c.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      await kv.put('lc/k', 'v', { lease: id });
      await converged(c, kv);
      lc.clock.advance(ttl * 500);
      const T = lc.clock.ms;
      expect((await kv.lease.keepAliveOnce(id)).ttlSeconds).toBe(ttl);
      const target = c.ids.find((i) => i !== first.id)!;
      await waitFor(
        () => {
          if (c.leader()?.id === target) return true;
          c.transferLeader(target);
          return false;
        },
        10_000,
        `member ${target} to lead`,
      );
      // The new leader is the lease primary once it answers keep-alives; it did not renew here.
      expect((await kv.lease.timeToLive(id)).ttlSeconds).toBeGreaterThanOrEqual(ttl);
      const extendMs = 10 * 10; // electionTicks × tickMs of this cluster
      // Just before T + t + the extension, after many expiry checks: still alive, key still there.
      lc.clock.ms = T + ttl * 1000 + extendMs - 1;
      await lc.clock.readsMore(30, 'the new leader to check expiry several times');
      expect(c.leader()?.id).toBe(target);
      expect((await kv.get('lc/k'))?.lease).toBe(id);
      // Past it, with no keep-alive: revoked.
      lc.clock.advance(2);
      await waitFor(async () => (await kv.get('lc/k')) === undefined, 10_000, 'the lease to expire');
      expect((await kv.lease.timeToLive(id)).ttlSeconds).toBe(-1);
    } finally {
      await kv.close();
      await lc.close();
    }
  }, 40_000);
});

describe('raft embedded — a new leader serves leases only after the earlier terms applied', () => {
  it('a revocation the old leader proposed but could not commit applies before the new leader renews anything: a keep-alive racing the election never gets a TTL for a lease that is then revoked', async () => {
    const lc = await leaseCluster({ nodes: 3, durable: false });
    const c = lc.cluster;
    const kv = c.client();
    const send = c.transport.send.bind(c.transport);
    try {
      const old = await c.waitLeader();
      const ttl = c.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      await kv.put('nl/k', 'v', { lease: id });
      await converged(c, kv);
      // The followers still hear the leader, but nothing reaches it back: its revocation is
      // replicated into their logs and never committed by it; it steps down (check-quorum). And
      // no new leader hears its log acknowledged: it cannot commit (so cannot apply) the entries
      // of the old term until the test lets it.
      const newLeaderCommits = { held: true };
      c.transport.send = (ms) =>
        send(
          ms.filter(
            (m) =>
              m.to !== old.id &&
              !(newLeaderCommits.held && m.type === MessageType.AppendResp && c.members.get(m.to)?.isLeader),
          ),
        );
      const seen = lc.gate.seen;
      lc.clock.advance(ttl * 1000 + 1);
      await waitFor(() => lc.gate.seen >= seen + 3, 10_000, 'the revocation in all three logs');
      expect(old.raft.log.committed).toBeLessThan(old.raft.log.lastIndex);
      // Keep-alive as soon as another member leads, before it has applied the old term's entries.
      let next: RaftNode | undefined;
      await waitFor(
        () => {
          next = c.leader();
          return next !== undefined && next.id !== old.id;
        },
        10_000,
        'a new leader',
      );
      let answered = false;
      const pending = kv.lease.keepAliveOnce(id).finally(() => (answered = true));
      await sleep(50);
      // Not primary yet: nothing was renewed; the keep-alive is retried on the leader meanwhile.
      expect(answered).toBe(false);
      expect(next!.store.leases.get(id)).toBeDefined();
      newLeaderCommits.held = false;
      const ka = await pending;
      c.transport.send = send;
      const key = await kv.get('nl/k');
      const lease = await kv.lease.timeToLive(id);
      if (ka.ttlSeconds > 0) {
        // Renewed: then the lease and its key must live on.
        expect(key?.lease).toBe(id);
        expect(lease.ttlSeconds).toBeGreaterThan(0);
      } else {
        expect(key).toBeUndefined();
        expect(lease.ttlSeconds).toBe(-1);
      }
      // The old leader's revocation was in the new leader's log: it applied, so the answer was 0.
      expect(ka.ttlSeconds).toBe(0);
    } finally {
      c.transport.send = send;
      await kv.close();
      await lc.close();
    }
  }, 40_000);
});
