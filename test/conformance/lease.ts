import { describe, expect, it } from 'vitest';
import type { KV } from '../../src/kv.js';
import type { ConformanceContext, RegisterTests } from './context.js';
import { stall } from './stall.js';
import { sleep, waitFor } from './util.js';

/** A keep-alive's TTL, with lease-not-found (how some servers refuse) read as 0. */
async function keepAliveTtl(kv: KV, id: bigint): Promise<number> {
  try {
    return (await kv.lease.keepAliveOnce(id)).ttlSeconds;
  } catch (err) {
    if ((err as { code?: string }).code === 'lease-not-found') return 0;
    throw err;
  }
}

/** A lease of the minimum TTL with one key attached. */
async function leasedKey(c: ConformanceContext, label: string) {
  const ttl = c.backend.minTtlSeconds;
  const { id } = await c.kv.lease.grant(ttl);
  // The server set the deadline before it answered: it has passed by `grantedAt` + TTL.
  const grantedAt = performance.now();
  const key = `${c.prefix(label)}k`;
  await c.kv.put(key, 'v', { lease: id });
  return { id, ttl, key, grantedAt };
}

/** The lease is gone and so is its key (the revocation may finish just after the refusal). */
async function expectRevoked(kv: KV, id: bigint, key: string): Promise<void> {
  await waitFor(async () => (await kv.get(key)) === undefined, 5000, 'the expired lease to be revoked');
  expect((await kv.lease.timeToLive(id)).ttlSeconds).toBe(-1);
}

/**
 * A keep-alive never revives an expiring lease (etcd 3.4's lessor.Renew: it waits for the
 * revocation and answers TTL 0). The client stalls (its event loop blocked, as in a long GC pause)
 * past the TTL; the server's clock goes on. Real etcd is the reference.
 */
const registerExpiringLeaseTests: RegisterTests = (ctx) => {
  it('lease — a keep-alive sent at once after a stall past the TTL is refused, never revives the lease', async () => {
    const c = ctx();
    const { id, ttl, key } = await leasedKey(c, 'stall-at-once');
    stall(ttl * 1000 + 600);
    // Sent before any overdue timer (the server's expiry check, in-process) has run.
    const ttlAfter = await keepAliveTtl(c.kv, id);
    expect(ttlAfter).toBeLessThanOrEqual(0);
    await expectRevoked(c.kv, id, key);
  }, 20_000);

  it('lease — a keep-alive after the overdue timers ran is refused too', async () => {
    const c = ctx();
    const { id, ttl, key } = await leasedKey(c, 'stall-after-timers');
    stall(ttl * 1000 + 600);
    await sleep(0);
    expect(await keepAliveTtl(c.kv, id)).toBeLessThanOrEqual(0);
    await expectRevoked(c.kv, id, key);
  }, 20_000);

  it('lease — keep-alives while the revocation is in flight are all refused; a put with the lease leaves no key', async () => {
    const c = ctx();
    const { id, ttl, key, grantedAt } = await leasedKey(c, 'in-flight');
    const hold = c.backend.holdRevocations?.();
    try {
      let pending: Promise<number>[];
      if (hold) {
        // Deterministic: the revocation is proposed and held; keep-alives must wait for it.
        await waitFor(
          () => hold.held() > 0 && performance.now() > grantedAt + ttl * 1000,
          ttl * 1000 + 10_000,
          'the revocation to be proposed',
        );
        const answers: number[] = [];
        pending = [0, 1, 2].map(() =>
          keepAliveTtl(c.kv, id).then((t) => {
            answers.push(t);
            return t;
          }),
        );
        await sleep(50);
        expect(answers).toEqual([]);
        hold.release();
      } else {
        // Without a hold: keep-alives from just past the deadline on, while the server revokes.
        stall(ttl * 1000 + 50);
        pending = [];
        for (let i = 0; i < 5; i++) {
          pending.push(keepAliveTtl(c.kv, id));
          await sleep(20);
        }
      }
      const put = c.kv.put(`${key}2`, 'v', { lease: id }).then(
        () => 'put',
        (err: unknown) => (err as { code?: string }).code,
      );
      for (const t of await Promise.all(pending)) expect(t).toBeLessThanOrEqual(0);
      await expectRevoked(c.kv, id, key);
      // Whichever way the put went, no key outlives the lease.
      expect(['put', 'lease-not-found']).toContain(await put);
      await waitFor(async () => (await c.kv.get(`${key}2`)) === undefined, 5000, 'no key left on the lease');
    } finally {
      hold?.release();
    }
  }, 30_000);
};

export const registerLeaseTests: RegisterTests = (ctx) => {
  it('lease — grant, timeToLive with keys, list, revoke', async () => {
    const { kv, prefix, backend } = ctx();
    const p = prefix('lease-basic');
    const ttl = backend.minTtlSeconds + 10;
    const l = await kv.lease.grant(ttl);
    expect(typeof l.id).toBe('bigint');
    expect(l.ttlSeconds).toBe(ttl);
    await kv.put(`${p}a`, '1', { lease: l.id });
    await kv.put(`${p}b`, '2', { lease: l.id });
    const t = await kv.lease.timeToLive(l.id, { keys: true });
    expect(t.grantedTtlSeconds).toBe(ttl);
    expect(t.ttlSeconds).toBeGreaterThan(0);
    expect(t.ttlSeconds).toBeLessThanOrEqual(ttl);
    expect(t.keys.map((k) => new TextDecoder().decode(k)).sort()).toEqual([`${p}a`, `${p}b`]);
    expect(await kv.lease.list()).toContain(l.id);
    await kv.lease.revoke(l.id);
    expect(await kv.lease.list()).not.toContain(l.id);
  });

  it('lease — revoking deletes every attached key at one revision', async () => {
    const { kv, prefix, backend } = ctx();
    const p = prefix('lease-revoke');
    const l = await kv.lease.grant(backend.minTtlSeconds + 10);
    await kv.put(`${p}a`, '1', { lease: l.id });
    const last = await kv.put(`${p}b`, '2', { lease: l.id });
    await using w = kv.watch(p, { prefix: true, startRevision: last.revision + 1 });
    const r = await kv.lease.revoke(l.id);
    expect(r.revision).toBe(last.revision + 1);
    expect((await kv.range(p, { prefix: true })).count).toBe(0);
    const it = w[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    if (!first.done) {
      expect(first.value.events.map((e) => e.type)).toEqual(['delete', 'delete']);
      expect(first.value.events.every((e) => e.kv.modRevision === r.revision)).toBe(true);
    }
  });

  it('lease — keep-alive of an unknown lease reports TTL 0 and timeToLive reports -1', async () => {
    const { kv } = ctx();
    const ka = await kv.lease.keepAliveOnce(0x7777_1234n);
    expect(ka.ttlSeconds).toBeLessThanOrEqual(0);
    const t = await kv.lease.timeToLive(0x7777_1234n);
    expect(t.ttlSeconds).toBe(-1);
  });

  it('lease — revoking an unknown lease fails with lease-not-found', async () => {
    const { kv } = ctx();
    await expect(kv.lease.revoke(0x7777_4321n)).rejects.toMatchObject({ code: 'lease-not-found' });
  });

  it('lease — a TTL below the minimum is raised to the minimum', async () => {
    const { kv, backend } = ctx();
    const l = await kv.lease.grant(1);
    expect(l.ttlSeconds).toBe(Math.max(1, backend.minTtlSeconds));
    await kv.lease.revoke(l.id);
  });

  it('lease — a lease that is not kept alive expires and its keys are deleted', async () => {
    const { kv, prefix, backend } = ctx();
    const k = `${prefix('lease-expire')}k`;
    const l = await kv.lease.grant(backend.minTtlSeconds);
    await kv.put(k, 'v', { lease: l.id });
    if (backend.advanceTime) await backend.advanceTime((backend.minTtlSeconds + 2) * 1000);
    await waitFor(
      async () => (await kv.get(k)) === undefined,
      (backend.minTtlSeconds + 5) * 1000,
      'the leased key to expire',
    );
    expect((await kv.lease.timeToLive(l.id)).ttlSeconds).toBe(-1);
  });

  it('lease — keep-alive refreshes the TTL', async () => {
    const { kv, backend } = ctx();
    const ttl = backend.minTtlSeconds + 5;
    const l = await kv.lease.grant(ttl);
    const ka = await kv.lease.keepAliveOnce(l.id);
    expect(ka.id).toBe(l.id);
    expect(ka.ttlSeconds).toBe(ttl);
    await kv.lease.revoke(l.id);
  });

  describe('expiring leases', () => registerExpiringLeaseTests(ctx));
};
