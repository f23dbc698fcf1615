import { expect, it } from 'vitest';
import type { RegisterTests } from './context.js';
import { waitFor } from './util.js';

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
};
