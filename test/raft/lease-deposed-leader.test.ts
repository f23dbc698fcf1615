/**
 * A deposed leader that has not noticed yet (its process stalled, so its check-quorum tick has not
 * run) must not renew a lease: its successor's deadlines started at its own promotion, and a
 * renewal answered by the old leader after that — at any time after a stall — would promise a TTL
 * the new leader does not honour (etcd issue #15247; later etcd confirms leadership with a
 * ReadIndex round before renewing). Deterministic: the old leader's ticks are stopped by hand (a
 * paused process), and it is cut off from the others.
 */
import { describe, expect, it } from 'vitest';
import { EmbeddedCluster } from '../../backends/raft/embedded.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { waitFor } from '../conformance/util.js';
import { VirtualClock } from './lease-fixtures.js';

describe('raft embedded — a deposed leader does not renew leases', () => {
  it('a cut-off leader whose ticks stalled answers not-primary, never a TTL, once a successor was elected', async () => {
    const clock = new VirtualClock();
    const c = new EmbeddedCluster({ nodes: 3, now: clock.now, requestTimeoutMs: 1_000 });
    const kv = c.client();
    try {
      const old = await c.waitLeader();
      const ttl = c.minTtlSeconds;
      const { id } = await kv.lease.grant(ttl);
      // Renewals on the real leader work (and keep working with the confirmation round).
      expect(await old.renewLease(id)).toBe(ttl);

      // The leader's process "stalls": no ticks, so no check-quorum step-down; and it is cut off.
      old.raft.tick = () => undefined;
      const others = c.ids.filter((i) => i !== old.id);
      c.partition([old.id], others);
      let next: ReturnType<EmbeddedCluster['leader']>;
      await waitFor(
        () => {
          next = [...c.members.values()].find((n) => n !== old && n.isLeader);
          return next !== undefined;
        },
        10_000,
        'a leader on the majority side',
      );
      // The successor is the lease primary once it has applied its term's first entry.
      await waitFor(
        async () => {
          try {
            return (await next!.renewLease(id)) === ttl;
          } catch {
            return false;
          }
        },
        10_000,
        'the successor to renew the lease',
      );
      expect(old.isLeader, 'the old leader has not noticed').toBe(true);
      // Half a TTL passes (more than the election timeout the successor added at its promotion),
      // still within the old leader's own deadline: a TTL it granted now would reach past the
      // successor's deadline (promotion + TTL + one election timeout).
      clock.advance((ttl * 1000) / 2);
      const err = await old.renewLease(id).then(
        (t) => t,
        (e: unknown) => e,
      );
      expect(err, 'the deposed leader renewed the lease').toBeInstanceOf(ConclaveError);
      expect(ConclaveError.is(err, ErrorCode.Unavailable)).toBe(true);
    } finally {
      c.heal();
      await kv.close();
      await c.close();
    }
  }, 30_000);
});
