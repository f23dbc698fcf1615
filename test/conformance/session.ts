import { expect, it } from 'vitest';
import { Session } from '../../src/session.js';
import type { RegisterTests } from './context.js';
import { waitFor } from './util.js';

export const registerSessionTests: RegisterTests = (ctx) => {
  it('session — keeps its lease alive past the TTL, and close revokes it', async () => {
    const { kv, prefix, backend } = ctx();
    const ttl = backend.minTtlSeconds;
    const s = await Session.create(kv, { ttlSeconds: ttl });
    const k = `${prefix('session-alive')}k`;
    await kv.put(k, 'v', { lease: s.lease });
    await new Promise((r) => setTimeout(r, ttl * 1000 + 700));
    expect(s.lost.aborted).toBe(false);
    expect(await kv.get(k)).toBeDefined();
    await s.close();
    expect(s.lost.aborted).toBe(true);
    expect(await kv.get(k)).toBeUndefined();
    expect((await kv.lease.timeToLive(s.lease)).ttlSeconds).toBe(-1);
  });

  it('session — lost fires when the lease is revoked behind its back', async () => {
    const { kv, backend } = ctx();
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds });
    await kv.lease.revoke(s.lease);
    await waitFor(() => s.lost.aborted, backend.minTtlSeconds * 1000 + 2000, 'session.lost');
    expect((s.lost.reason as { code?: string }).code).toBe('session-lost');
  });

  it('session — lost fires before the server expires the lease when keep-alives stop arriving', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const proxied = await backend.proxied();
    try {
      const ttl = Math.max(2, backend.minTtlSeconds);
      const s = await Session.create(proxied.kv, { ttlSeconds: ttl });
      const k = `${prefix('session-cut')}k`;
      await kv.put(k, 'v', { lease: s.lease });
      await proxied.cut();
      await waitFor(() => s.lost.aborted, ttl * 1000 + 1000, 'session.lost after the cut');
      // At the moment `lost` fired, the server must still have held the lease: it fired early, not late.
      const stillThere = await kv.get(k);
      expect(stillThere).toBeDefined();
      await s.close().catch(() => undefined);
    } finally {
      await proxied.close();
    }
  });

  it('session — the state stream starts connected and ends with lost after close', async () => {
    const { kv, backend } = ctx();
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 2 });
    expect(s.state).toBe('connected');
    const seen: string[] = [];
    const ac = new AbortController();
    const done = (async () => {
      try {
        for await (const st of s.states({ signal: ac.signal })) seen.push(st);
      } catch {
        // aborted
      }
    })();
    await s.close();
    ac.abort();
    await done;
    expect(seen[0]).toBe('connected');
    expect(seen.at(-1)).toBe('lost');
  });
};
