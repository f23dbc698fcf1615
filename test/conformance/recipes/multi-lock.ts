import { expect, it } from 'vitest';
import { MultiLock } from '../../../recipes/multi-lock.js';
import { Mutex } from '../../../recipes/mutex.js';
import { ConclaveError } from '../../../src/errors.js';
import { leaseHex, toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { sleep, waitFor } from '../util.js';
import { etcdctlLock, stop as stopChild } from './interop.js';

/** Keys under `name/` (a Mutex's queue), as text. */
async function queue(kv: KV, name: string): Promise<string[]> {
  return (await kv.range(`${name}/`, { prefix: true })).kvs.map((k) => toText(k.key));
}

export const registerMultiLockTests: RegisterTests = (ctx) => {
  const ttl = () => ctx().backend.minTtlSeconds + 5;

  it('multi-lock — takes every name in byte order as ordinary Mutex keys; guard covers all; release frees all', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-basic');
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    const ml = new MultiLock(s, [`${p}c`, `${p}a`, `${p}b`, `${p}a`]);
    expect(ml.names).toEqual([`${p}a`, `${p}b`, `${p}c`]);
    const h = await ml.lock();
    for (const n of ml.names) {
      expect(await queue(kv, n)).toEqual([`${n}/${leaseHex(s.lease)}`]);
      const k = await kv.get(`${n}/${leaseHex(s.lease)}`);
      expect(h.tokens.get(n)).toBe(k!.createRevision);
    }
    // Tokens follow lock order: each member was created after the previous one was held.
    const t = ml.names.map((n) => h.tokens.get(n)!);
    expect([...t].sort((x, y) => x - y)).toEqual(t);
    const g = await kv.txn({
      compare: h.guard(),
      success: [{ type: 'put', key: `${p}fenced`, value: 'x' }],
      failure: [],
    });
    expect(g.succeeded).toBe(true);
    expect(h.lost.aborted).toBe(false);
    await h.release();
    expect(h.lost.aborted).toBe(true);
    for (const n of ml.names) expect(await queue(kv, n)).toEqual([]);
    const stale = await kv.txn({ compare: h.guard(), success: [], failure: [] });
    expect(stale.succeeded).toBe(false);
    await h.release(); // idempotent
  });

  it('multi-lock — a plain Mutex on one name excludes it, and it excludes a plain Mutex', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-plain');
    const [a, b] = [`${p}a`, `${p}b`];
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    await using s2 = await Session.create(kv, { ttlSeconds: ttl() });
    const plain = await new Mutex(s2, b).lock();
    const ml = new MultiLock(s1, [b, a]);
    // tryLock: refused naming b, and leaves nothing (it had taken a first).
    const tried = await ml.tryLock();
    expect(tried.isErr() && tried.error.name).toBe(b);
    expect(tried.isErr() && tried.error.token).toBe(plain.token);
    expect(await queue(kv, a)).toEqual([]);
    expect(await queue(kv, b)).toEqual([`${b}/${leaseHex(s2.lease)}`]);
    let got = false;
    const waiting = ml.lock().then((h) => {
      got = true;
      return h;
    });
    await waitFor(async () => (await queue(kv, b)).length === 2, 10_000, 'the multi-lock to queue on b');
    await sleep(200);
    expect(got).toBe(false);
    await plain.unlock();
    const h = await waiting;
    expect(h.tokens.get(b)!).toBeGreaterThan(plain.token);
    // Now a plain Mutex on a waits for the multi-lock.
    let plainGot = false;
    const plainWait = new Mutex(s2, a).lock().then((x) => {
      plainGot = true;
      return x;
    });
    await sleep(300);
    expect(plainGot).toBe(false);
    await h.release();
    await (await plainWait).unlock();
  });

  it('multi-lock — two clients asking for overlapping sets in opposite orders never deadlock and never overlap', async () => {
    const { prefix } = ctx();
    const p = prefix('ml-overlap');
    const names = ['x', 'y', 'z', 'w'].map((n) => `${p}${n}`);
    const sets = [
      [names[0]!, names[1]!, names[2]!],
      [names[2]!, names[1]!, names[0]!],
      [names[3]!, names[1]!],
      [names[1]!, names[3]!, names[0]!],
    ];
    const rounds = 8;
    const inside = new Map<string, number>();
    const lastToken = new Map<string, number>();
    const overlaps: string[] = [];
    const clients = await Promise.all(sets.map(() => ctx().newKv()));
    const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttlSeconds: ttl() })));
    const deadline = AbortSignal.timeout(90_000);
    try {
      const work = sets.map(async (set, i) => {
        const ml = new MultiLock(sessions[i]!, set);
        for (let r = 0; r < rounds; r++) {
          const h = await ml.lock({ signal: deadline });
          for (const n of h.names) {
            if ((inside.get(n) ?? 0) > 0) overlaps.push(`${n} round ${r} worker ${i}`);
            inside.set(n, (inside.get(n) ?? 0) + 1);
            const t = h.tokens.get(n)!;
            if (t <= (lastToken.get(n) ?? 0)) overlaps.push(`${n} token ${t} not above ${lastToken.get(n)}`);
            lastToken.set(n, t);
          }
          await sleep(r % 3);
          for (const n of h.names) inside.set(n, inside.get(n)! - 1);
          await h.release();
        }
      });
      await Promise.all(work);
      expect(overlaps).toEqual([]);
      for (const n of names) expect(await queue(ctx().kv, n)).toEqual([]);
    } finally {
      await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
    }
  }, 120_000);

  it('multi-lock — aborting mid-acquire releases the members already taken and leaves no keys', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-abort');
    const [a, b, c] = [`${p}a`, `${p}b`, `${p}c`];
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    await using s2 = await Session.create(kv, { ttlSeconds: ttl() });
    const plain = await new Mutex(s2, b).lock();
    const abort = new AbortController();
    const waiting = new MultiLock(s1, [c, b, a]).lock({ signal: abort.signal });
    waiting.catch(() => undefined);
    await waitFor(
      async () => (await queue(kv, a)).length === 1 && (await queue(kv, b)).length === 2,
      10_000,
      'a taken and b queued',
    );
    const reason = new Error('changed my mind');
    abort.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(await queue(kv, a)).toEqual([]);
    expect(await queue(kv, b)).toEqual([`${b}/${leaseHex(s2.lease)}`]);
    expect(await queue(kv, c)).toEqual([]);
    // a is free for anyone at once.
    const other = await new Mutex(s2, a).tryLock();
    expect(other.isOk()).toBe(true);
    if (other.isOk()) await other.value.unlock();
    await plain.unlock();
  });

  it('multi-lock — a member lost while waiting for the next fails the acquire and releases the rest', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-lost-wait');
    const [a, b] = [`${p}a`, `${p}b`];
    await using s1 = await Session.create(kv, { ttlSeconds: ttl() });
    await using s2 = await Session.create(kv, { ttlSeconds: ttl() });
    const plain = await new Mutex(s2, b).lock();
    const waiting = new MultiLock(s1, [a, b]).lock();
    waiting.catch(() => undefined);
    await waitFor(async () => (await queue(kv, b)).length === 2, 10_000, 'a taken and b queued');
    await kv.delete(`${a}/${leaseHex(s1.lease)}`); // someone removes our key of a
    const err = await waiting.catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(await queue(kv, b)).toEqual([`${b}/${leaseHex(s2.lease)}`]);
    expect(await queue(kv, a)).toEqual([]);
    await plain.unlock();
  });

  it('multi-lock — the loss of one member fires the handle’s lost; release frees the others', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-lost');
    const [a, b, c] = [`${p}a`, `${p}b`, `${p}c`];
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    const h = await new MultiLock(s, [a, b, c]).lock();
    await kv.delete(`${b}/${leaseHex(s.lease)}`);
    await waitFor(() => h.lost.aborted, 10_000, "the multi-lock's lost");
    expect(ConclaveError.is(h.lost.reason) || h.lost.reason instanceof Error).toBe(true);
    expect(h.members.get(b)!.lost.aborted).toBe(true);
    expect(h.members.get(a)!.lost.aborted).toBe(false);
    const g = await kv.txn({ compare: h.guard(), success: [], failure: [] });
    expect(g.succeeded).toBe(false);
    await h.release();
    for (const n of [a, b, c]) expect(await queue(kv, n)).toEqual([]);
  });

  it('multi-lock — the session’s loss fires lost', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ml-session');
    const s = await Session.create(kv, { ttlSeconds: ttl() });
    const h = await new MultiLock(s, [`${p}a`, `${p}b`]).lock();
    await kv.lease.revoke(s.lease);
    await waitFor(() => h.lost.aborted, 10_000, "the multi-lock's lost");
    await s.close().catch(() => undefined);
  });

  it('multi-lock — refuses an empty set and more than multiLockNamesMax names', async () => {
    const { kv } = ctx();
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    expect(() => new MultiLock(s, [])).toThrow(/at least one/);
    expect(
      () =>
        new MultiLock(
          s,
          Array.from({ length: 65 }, (_, i) => `n${i}`),
        ),
    ).toThrow(/multiLockNamesMax/);
    expect(() => new MultiLock(s, ['a', ''])).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
  });

  it('multi-lock — `etcdctl lock` on one member name excludes it', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.etcdctl || !backend.endpoints) {
      t.skip();
      return;
    }
    const p = prefix('ml-etcdctl');
    const [a, b] = [`${p}a`, `${p}b`];
    await using s = await Session.create(kv, { ttlSeconds: ttl() });
    const ctl = etcdctlLock(backend.endpoints(), b);
    try {
      await waitFor(() => ctl.out().includes(`${b}/`), 10_000, 'etcdctl to acquire');
      let got = false;
      const waiting = new MultiLock(s, [a, b]).lock().then((h) => {
        got = true;
        return h;
      });
      await waitFor(async () => (await queue(kv, b)).length === 2, 10_000, 'the multi-lock to queue on b');
      await sleep(300);
      expect(got).toBe(false);
      await stopChild(ctl.child);
      const h = await waiting;
      await h.release();
    } finally {
      await stopChild(ctl.child);
    }
  }, 30_000);
};
