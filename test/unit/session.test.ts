import { describe, expect, it } from 'vitest';
import { ConclaveError } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import type { LeaseKeepAliveResult } from '../../src/types.js';

/** A KV double that only implements leases, with a keep-alive whose behaviour the test controls. */
function fakeKv(keepAlive: (id: bigint) => Promise<LeaseKeepAliveResult>) {
  const revoked: bigint[] = [];
  const kv = {
    lease: {
      grant: async (ttlSeconds: number) => ({ id: 42n, ttlSeconds }),
      revoke: async (id: bigint) => {
        revoked.push(id);
        return { revision: 1 };
      },
      keepAliveOnce: (id: bigint) => keepAlive(id),
      timeToLive: async () => ({ id: 42n, ttlSeconds: 1, grantedTtlSeconds: 1, keys: [] }),
      list: async () => [42n],
    },
  } as unknown as KV;
  return { kv, revoked };
}

describe('Session (unit)', () => {
  it('fires lost no later than TTL after the last successful keep-alive was sent', async () => {
    let fail = false;
    const { kv } = fakeKv(async (id) => {
      if (fail) throw new ConclaveError('unavailable', 'down');
      return { id, ttlSeconds: 1 };
    });
    const s = await Session.create(kv, { ttlSeconds: 1 });
    const start = performance.now();
    fail = true;
    await new Promise<void>((resolve) => s.lost.addEventListener('abort', () => resolve()));
    const elapsed = performance.now() - start;
    expect(elapsed).toBeLessThanOrEqual(1000);
    expect((s.lost.reason as ConclaveError).code).toBe('session-lost');
    await s.close();
  });

  it('measures the deadline from the send time, not the reply time', async () => {
    // The reply takes 600 ms; with a 1 s TTL the lease could expire 1 s after the *send*.
    let calls = 0;
    const { kv } = fakeKv(async (id) => {
      calls++;
      if (calls > 1) return new Promise(() => {}); // later keep-alives never answer
      await new Promise((r) => setTimeout(r, 600));
      return { id, ttlSeconds: 1 };
    });
    const s = await Session.create(kv, { ttlSeconds: 1 });
    const sentAt = performance.now();
    // Trigger a keep-alive right away by waiting for the first one (the loop runs every TTL/3).
    await new Promise<void>((resolve) => s.lost.addEventListener('abort', () => resolve()));
    const lostAt = performance.now();
    // The first keep-alive was sent at ~333 ms after creation, answered at ~933 ms; the server
    // deadline is ~1333 ms. `lost` must fire before that, i.e. < 1333 ms after `sentAt`.
    expect(lostAt - sentAt).toBeLessThan(1333);
    await s.close();
  });

  it('a keep-alive reply with TTL 0 means the lease is gone', async () => {
    const { kv } = fakeKv(async (id) => ({ id, ttlSeconds: 0 }));
    const s = await Session.create(kv, { ttlSeconds: 3 });
    await new Promise<void>((resolve) => s.lost.addEventListener('abort', () => resolve()));
    expect(s.state).toBe('lost');
  });

  it('close revokes once and is idempotent; asyncDispose closes', async () => {
    const { kv, revoked } = fakeKv(async (id) => ({ id, ttlSeconds: 5 }));
    const s = await Session.create(kv, { ttlSeconds: 5 });
    await s.close();
    await s.close();
    expect(revoked).toEqual([42n]);
    {
      await using s2 = await Session.create(kv, { ttlSeconds: 5 });
      expect(s2.lost.aborted).toBe(false);
    }
    expect(revoked).toEqual([42n, 42n]);
  });

  it('refuses bad TTLs', async () => {
    const { kv } = fakeKv(async (id) => ({ id, ttlSeconds: 5 }));
    await expect(Session.create(kv, { ttlSeconds: -1 })).rejects.toThrow(/ttlSeconds/);
  });
});
