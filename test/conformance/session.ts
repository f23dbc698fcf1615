import { expect, it } from 'vitest';
import { Mutex } from '../../recipes/mutex.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import type { RegisterTests } from './context.js';
import { checkLiveness, livenessStallBoundMs, loopDelay, stall } from './stall.js';
import { seeded, sleep, waitFor } from './util.js';

/**
 * The Session's promise, checked: if it says connected with `remainingMs()` left, its key exists
 * for at least that long. Reads the key at once; a read that returned within the promised time and
 * found no key is a violation. Returns the state seen.
 */
async function checkConnectedHasKey(kv: KV, s: Session, key: string, what: string): Promise<string> {
  const t0 = performance.now();
  const state = s.state;
  const promisedMs = s.remainingMs();
  if (state !== 'connected') return state;
  const got = await kv.get(key);
  if (performance.now() - t0 < promisedMs)
    expect(
      got,
      `${what}: the session said connected (${Math.round(promisedMs)} ms left) but its key is gone`,
    ).toBeDefined();
  return state;
}

export const registerSessionTests: RegisterTests = (ctx) => {
  it('session — keeps its lease alive past the TTL, and close revokes it', async () => {
    const { kv, prefix, backend } = ctx();
    const ttl = backend.minTtlSeconds;
    const probe = loopDelay();
    const s = await Session.create(kv, { ttlSeconds: ttl });
    const k = `${prefix('session-alive')}k`;
    await kv.put(k, 'v', { lease: s.lease });
    await new Promise((r) => setTimeout(r, ttl * 1000 + 700));
    // Safety always: while it says connected, its key is there.
    await checkConnectedHasKey(kv, s, k, 'after one TTL');
    // Liveness only if this process did not stall for a good part of the TTL meanwhile.
    checkLiveness(probe, livenessStallBoundMs(ttl), 'session keep-alive', () => {
      expect(s.lost.aborted).toBe(false);
    });
    probe.stop();
    const lostBeforeClose = s.lost.aborted;
    await s.close();
    expect(s.lost.aborted).toBe(true);
    // A session lost at its local deadline (after a stall) does not revoke: the server expires it.
    if (lostBeforeClose)
      await waitFor(
        async () => (await kv.get(k)) === undefined,
        ttl * 1000 + 5000,
        'the lost lease to expire',
      );
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

  it('session — whenever it says connected its key exists, while the process stalls across the TTL at random moments', async () => {
    const { kv, prefix, backend } = ctx();
    const ttl = backend.minTtlSeconds;
    const { rand, replay: seed } = seeded('session-stalls');
    const p = prefix('session-stalls');
    const seen = { connected: 0, lost: 0 };
    for (let round = 0; round < 3; round++) {
      const what = `${seed}, round ${round}`;
      const s = await Session.create(kv, { ttlSeconds: ttl });
      const key = `${p}${round}`;
      await kv.put(key, 'v', { lease: s.lease });
      await sleep(rand() * ttl * 500);
      // Stalls from a third of the TTL (survivable) to well past it.
      stall(ttl * 1000 * (0.3 + rand() * 1.4));
      for (let i = 0; i < 4; i++) {
        const st = await checkConnectedHasKey(kv, s, key, what);
        if (st === 'connected') seen.connected++;
        else seen.lost++;
        await sleep(ttl * 200);
      }
      await s.close().catch(() => undefined);
      expect(await kv.get(key), `${what}: a closed session's key`).toBeUndefined();
    }
    expect(seen.connected + seen.lost).toBe(12);
  }, 60_000);

  it('session — a mutex holder stalled past its TTL is lost before a waiter acquires; never two holders (fencing register)', async () => {
    const { kv, prefix, backend } = ctx();
    const ttl = backend.minTtlSeconds;
    const { rand, replay: seed } = seeded('mutex-stall');
    const kv2 = await ctx().newKv();
    const name = `${prefix('mutex-stall')}lock`;
    // The resource the lock protects: accepts a write only with a token at least the highest seen.
    const register = { maxToken: 0, stale: [] as string[] };
    const write = (token: number, who: string) => {
      if (token < register.maxToken)
        register.stale.push(`${who} wrote with token ${token} < ${register.maxToken}`);
      else register.maxToken = token;
    };
    for (let round = 0; round < 3; round++) {
      const what = `${seed}, round ${round}`;
      const holderSession = await Session.create(kv, { ttlSeconds: ttl });
      // The waiter's lease outlives the stalls (the process stalls as a whole).
      const waiterSession = await Session.create(kv2, { ttlSeconds: ttl + 5 });
      const held = await new Mutex(holderSession, name).lock();
      write(held.token, 'holder');
      let holderLostAtAcquire: string | undefined;
      const waiter = new Mutex(waiterSession, name).lock().then((w) => {
        // At the moment the waiter owns the lock, the holder must already know it lost it.
        holderLostAtAcquire = holderSession.state;
        write(w.token, 'waiter');
        return w;
      });
      // The holder works with its token for as long as it believes it holds the lock.
      const acting = setInterval(() => {
        if (holderSession.state === 'connected' && !held.lost.aborted) write(held.token, 'holder');
      }, 20);
      try {
        await sleep(rand() * ttl * 1000);
        stall(ttl * 1000 * (1.2 + rand() * 0.6));
        const w = await Promise.race([
          waiter,
          sleep((ttl + 10) * 1000).then(() => {
            throw new Error(`${what}: the waiter never acquired`);
          }),
        ]);
        expect(holderLostAtAcquire, `${what}: the holder's session when the waiter acquired`).toBe('lost');
        expect(held.lost.aborted).toBe(true);
        await sleep(100);
        await w.unlock();
      } finally {
        clearInterval(acting);
        await holderSession.close().catch(() => undefined);
        await waiterSession.close().catch(() => undefined);
      }
      expect(register.stale, `${what}: writes by a holder that had lost the lock`).toEqual([]);
    }
  }, 90_000);

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
