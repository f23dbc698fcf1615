/**
 * The Session checks its deadline against the clock wherever it is consulted, so a stalled event
 * loop (which runs the deadline timer late) never lets it read `connected` past the moment the
 * server could expire the lease, nor revive it with a keep-alive sent after that moment.
 */
import { describe, expect, it } from 'vitest';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import { stall } from '../conformance/stall.js';

function fakeKv() {
  const sent: number[] = [];
  const kv = {
    lease: {
      grant: async (ttlSeconds: number) => ({ id: 7n, ttlSeconds }),
      revoke: async () => ({ revision: 1 }),
      keepAliveOnce: async (id: bigint) => {
        sent.push(performance.now());
        // A server that (wrongly) renews anything: the session must not rely on it.
        return { id, ttlSeconds: 1 };
      },
      timeToLive: async () => ({ id: 7n, ttlSeconds: 1, grantedTtlSeconds: 1, keys: [] }),
      list: async () => [7n],
    },
  } as unknown as KV;
  return { kv, sent };
}

describe('Session (unit) — deadline checked against the clock', () => {
  it('state reads lost right after a stall past the deadline, before any timer has run', async () => {
    const { kv } = fakeKv();
    const s = await Session.create(kv, { ttlSeconds: 1 });
    expect(s.state).toBe('connected');
    let firedInside = false;
    s.lost.addEventListener('abort', () => (firedInside = true));
    stall(1200);
    // No timer or promise ran since the stall: the getter itself fires `lost`.
    expect(firedInside).toBe(false);
    expect(s.state).toBe('lost');
    expect(firedInside).toBe(true);
    expect(s.remainingMs()).toBe(0);
    await s.close();
  });

  it('remainingMs() past the deadline fires lost too', async () => {
    const { kv } = fakeKv();
    const s = await Session.create(kv, { ttlSeconds: 1 });
    stall(1100);
    expect(s.remainingMs()).toBe(0);
    expect(s.lost.aborted).toBe(true);
    await s.close();
  });

  it('no keep-alive is sent once the deadline has passed: a late keep-alive timer cannot revive the session', async () => {
    const { kv, sent } = fakeKv();
    const s = await Session.create(kv, { ttlSeconds: 1 });
    const before = sent.length;
    const stalledUntil = performance.now() + 1200;
    stall(1200);
    // Let the overdue timers (keep-alive and deadline, in whatever order) run.
    await new Promise((r) => setTimeout(r, 50));
    expect(s.lost.aborted).toBe(true);
    expect(sent.slice(before).filter((t) => t >= stalledUntil - 5)).toEqual([]);
    await s.close();
  });
});
