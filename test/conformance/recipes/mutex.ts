import { expect, it } from 'vitest';
import { handoffState } from '../../../recipes/internal/handoff.js';
import { keyWatchLingerMs } from '../../../recipes/internal/key-watch.js';
import { requestRevocation } from '../../../recipes/internal/revocation.js';
import { Mutex } from '../../../recipes/mutex.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { Session } from '../../../src/session.js';
import type { Watch } from '../../../src/types.js';
import type { RegisterTests } from '../context.js';
import { handoffProbe, overriding, sleep, waitFor } from '../util.js';

/**
 * `kv`, recording the key of every watch opened through it (to see what a waiter waits on). With
 * `failNext`, the next watch of that key fails at once with the given error instead.
 */
function watchSpy(kv: KV): { kv: KV; watched: string[]; failNext: Map<string, unknown> } {
  const watched: string[] = [];
  const failNext = new Map<string, unknown>();
  const spied = new Proxy(kv, {
    get(target, p, receiver) {
      if (p === 'watch')
        return (key: Parameters<KV['watch']>[0], opts?: Parameters<KV['watch']>[1]): Watch => {
          const k = typeof key === 'string' ? key : toText(key);
          watched.push(k);
          if (failNext.has(k)) {
            const err = failNext.get(k);
            failNext.delete(k);
            return failingWatch(err);
          }
          return target.watch(key, opts);
        };
      const v = Reflect.get(target, p, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { kv: spied, watched, failNext };
}

function failingWatch(err: unknown): Watch {
  const ready = Promise.reject(err);
  ready.catch(() => undefined);
  return {
    ready,
    close: async () => undefined,
    [Symbol.asyncDispose]: async () => undefined,
    // biome-ignore lint/correctness/useYield: a watch that fails before its first batch
    async *[Symbol.asyncIterator]() {
      throw err;
    },
  };
}

/**
 * Holder A, waiter B, waiter C (spied). `removeB` takes B out of the queue while A still holds; C
 * sees its predecessor's delete and must NOT acquire: it re-checks, finds A, and watches A. Only
 * A's unlock lets C in.
 */
async function predecessorLeavesBeforeHolder(
  ctx: Parameters<RegisterTests>[0],
  tag: string,
  removeB: (b: { session: Session; waiting: Promise<unknown>; abort: AbortController }) => Promise<void>,
): Promise<void> {
  const { kv, prefix, backend } = ctx();
  const name = `${prefix(tag)}lock`;
  const ttl = backend.minTtlSeconds + 5;
  const a = await Session.create(kv, { ttlSeconds: ttl });
  const b = await Session.create(kv, { ttlSeconds: ttl });
  const spy = watchSpy(kv);
  const c = await Session.create(spy.kv, { ttlSeconds: ttl });
  const count = async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count;
  try {
    const ha = await new Mutex(a, name).lock();
    const abortB = new AbortController();
    const waitingB = new Mutex(b, name).lock({ signal: abortB.signal });
    waitingB.catch(() => undefined);
    await waitFor(async () => (await count()) === 2, 5000, "B's key");
    const mc = new Mutex(c, name);
    const bKey = `${name}/${b.lease.toString(16)}`;
    let aUnlocking = false;
    let cAcquiredWhileAHeld: boolean | undefined;
    const waitingC = mc.lock().then((h) => {
      cAcquiredWhileAHeld = !aUnlocking;
      return h;
    });
    await waitFor(() => spy.watched.includes(bKey), 5000, 'C watching its predecessor B');
    await removeB({ session: b, waiting: waitingB, abort: abortB });
    await waitFor(() => spy.watched.includes(ha.key), 5000, 'C watching the holder A after B left');
    expect(cAcquiredWhileAHeld).toBeUndefined();
    expect(await count()).toBe(2); // A and C
    aUnlocking = true;
    await ha.unlock();
    const hc = await waitingC;
    expect(cAcquiredWhileAHeld).toBe(false);
    expect(hc.token).toBeGreaterThan(ha.token);
    await hc.unlock();
  } finally {
    await Promise.all([a, b, c].map((s) => s.close().catch(() => undefined)));
  }
}

export const registerMutexTests: RegisterTests = (ctx) => {
  it('mutex — 8 contenders never overlap in the critical section, and tokens grow', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-excl')}lock`;
    const sessions = await Promise.all(
      Array.from({ length: 8 }, () => Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 })),
    );
    let inside = 0;
    let maxInside = 0;
    const tokens: number[] = [];
    await Promise.all(
      sessions.map(async (s) => {
        const m = new Mutex(s, name);
        for (let i = 0; i < 3; i++) {
          const h = await m.lock();
          inside++;
          maxInside = Math.max(maxInside, inside);
          tokens.push(h.token);
          await sleep(2);
          inside--;
          await h.unlock();
        }
      }),
    );
    await Promise.all(sessions.map((s) => s.close()));
    expect(maxInside).toBe(1);
    expect(tokens.length).toBe(24);
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1]!);
  });

  it('mutex — waiters acquire in FIFO order of their arrival', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-fifo')}lock`;
    const holder = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const h = await new Mutex(holder, name).lock();
    const order: number[] = [];
    const waiters: Array<Promise<void>> = [];
    const sessions: Session[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
      sessions.push(s);
      const m = new Mutex(s, name);
      waiters.push(
        m.lock().then(async (l) => {
          order.push(i);
          await l.unlock();
        }),
      );
      // Make arrival order unambiguous: wait until this waiter's key exists.
      await waitFor(
        async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === i + 2,
        5000,
        'waiter key',
      );
    }
    await h.unlock();
    await Promise.all(waiters);
    expect(order).toEqual([0, 1, 2, 3]);
    await Promise.all([holder, ...sessions].map((s) => s.close()));
  });

  it('mutex — tryLock returns Err(LockHeld) with the holder and leaves no key behind', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-try')}lock`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const first = await new Mutex(a, name).tryLock();
    expect(first.isOk()).toBe(true);
    const second = await new Mutex(b, name).tryLock();
    expect(second.isErr()).toBe(true);
    if (second.isErr() && first.isOk()) {
      expect(second.error.lease).toBe(a.lease);
      expect(second.error.token).toBe(first.value.token);
      expect(second.error.key).toBe(first.value.key);
    }
    expect((await kv.range(`${name}/`, { prefix: true })).count).toBe(1);
  });

  it('mutex — a key its session left behind in a failed acquire (no handle uses it) is taken over by the next lock() or tryLock(), not refused', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-orphan')}lock`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(a, name);
    // What an acquire whose put's outcome was unknown, and whose clean-up failed, leaves behind.
    const put = await kv.put(m.key, '', { lease: a.lease });
    const held = await m.lock();
    expect([held.key, held.token]).toEqual([m.key, put.revision]);
    // Now a handle uses it: a second acquire of the session is refused, the first keeps it.
    await expect(m.lock()).rejects.toSatisfy((e) => ConclaveError.is(e, ErrorCode.Conflict));
    expect((await kv.get(m.key))?.createRevision).toBe(held.token);
    await held.unlock();
    // tryLock takes a left-behind key over too; behind another session's hold it removes it again.
    const byB = await new Mutex(b, name).lock();
    await kv.put(m.key, '', { lease: a.lease });
    expect((await m.tryLock()).isErr()).toBe(true);
    expect(await kv.get(m.key)).toBeUndefined();
    await byB.unlock();
    const again = await m.tryLock();
    expect(again.isOk()).toBe(true);
    if (again.isOk()) await again.value.unlock();
    // Two concurrent tryLock() calls of the session on a left-behind key: one takes it, one is refused.
    await kv.put(m.key, '', { lease: a.lease });
    const both = await Promise.allSettled([m.tryLock(), new Mutex(a, name).tryLock()]);
    const taken = both.filter((r) => r.status === 'fulfilled' && r.value.isOk());
    const refused = both.filter(
      (r) => r.status === 'rejected' && ConclaveError.is(r.reason, ErrorCode.Conflict),
    );
    expect([taken.length, refused.length]).toEqual([1, 1]);
    for (const r of taken) if (r.status === 'fulfilled' && r.value.isOk()) await r.value.value.unlock();
  });

  it('mutex — a second lock() or tryLock() of a name on a session that holds or waits for it fails conflict and leaves the first alone', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-reentry')}lock`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(a, name);
    const held = await m.lock();
    const conflict = (p: Promise<unknown>) =>
      expect(p).rejects.toSatisfy((e) => ConclaveError.is(e, ErrorCode.Conflict) && !e.retryable);
    // The same Mutex object, another object of the same name and session, and tryLock: all refused.
    await conflict(m.lock());
    await conflict(new Mutex(a, name).lock());
    await conflict(new Mutex(a, name).tryLock());
    // The first handle still holds: its key is there, its lost has not fired, and it excludes others.
    expect((await kv.get(held.key))?.createRevision).toBe(held.token);
    expect(held.lost.aborted).toBe(false);
    expect((await new Mutex(b, name).tryLock()).isErr()).toBe(true);
    // etcd's Go behaviour, asked for explicitly: another handle on the same key.
    const shared = await new Mutex(a, name, { sameSession: 'share' }).lock();
    expect([shared.key, shared.token]).toEqual([held.key, held.token]);
    const sharedTry = await new Mutex(a, name, { sameSession: 'share' }).tryLock();
    expect(sharedTry.isOk() && sharedTry.value.token).toBe(held.token);
    // A session that is waiting (not holding) is refused too, and its waiting lock() goes on.
    const waiting = new Mutex(b, name).lock();
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'the waiter key',
    );
    await conflict(new Mutex(b, name).lock());
    await held.unlock();
    const next = await waiting;
    expect(next.token).toBeGreaterThan(held.token);
    // Released: the first session may lock again (and waits for b's hold).
    await next.unlock();
    const again = await m.lock();
    expect(again.token).toBeGreaterThan(next.token);
    await again.unlock();
  });

  it('mutex — a revocation request from another client reaches a revocable holder, which decides; nothing is taken', async () => {
    const { kv, prefix, backend, newKv } = ctx();
    const name = `${prefix('mutex-revoke')}lock`;
    const other = await newKv();
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(other, { ttlSeconds: backend.minTtlSeconds + 5 });
    const held = await new Mutex(a, name, { revocable: true }).lock();
    expect(held.revocationRequested.aborted).toBe(false);
    // A waiter on the other client finds the holder with tryLock and asks it to release.
    const tried = await new Mutex(b, name).tryLock();
    if (!tried.isErr()) throw new Error('b should not get the lock');
    expect(
      await requestRevocation(other, tried.error, { by: 'worker-b', reason: 'nightly maintenance' }),
    ).toBe(true);
    await waitFor(() => held.revocationRequested.aborted, 10_000, 'the revocation request');
    expect(held.revocationRequested.reason).toMatchObject({ by: 'worker-b', reason: 'nightly maintenance' });
    // Only a request: the holder still holds (same generation, lost not fired, guard holds).
    expect(held.lost.aborted).toBe(false);
    expect((await kv.get(held.key))?.createRevision).toBe(held.token);
    expect((await kv.txn({ compare: [held.guard()], success: [], failure: [] })).succeeded).toBe(true);
    // The holder decides to release: the waiter gets the lock.
    const waiting = new Mutex(b, name).lock();
    await held.unlock();
    const next = await waiting;
    expect(next.token).toBeGreaterThan(held.token);
    // Nobody to ask once that generation is gone; a non-revocable handle never hears a request.
    expect(await requestRevocation(kv, { key: held.key, token: held.token })).toBe(false);
    expect(await requestRevocation(kv, next)).toBe(true);
    await sleep(300);
    expect(next.revocationRequested.aborted).toBe(false);
    expect(next.lost.aborted).toBe(false);
    await next.unlock();
  });

  it('mutex — the key layout is name/ + lease id in lowercase hex (etcd Go concurrency.Mutex)', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-layout')}lock`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const h = await new Mutex(s, name).lock();
    expect(h.key).toBe(`${name}/${s.lease.toString(16)}`);
    const got = await kv.get(h.key);
    expect(got?.lease).toBe(s.lease);
    expect(got?.createRevision).toBe(h.token);
    await h.unlock();
    expect(await kv.get(h.key)).toBeUndefined();
  });

  it('mutex — an aborted waiter removes its own key and the lock stays usable', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-abort')}lock`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const h = await new Mutex(a, name).lock();
    const ac = new AbortController();
    const reason = new Error('gave up');
    const waiting = new Mutex(b, name).lock({ signal: ac.signal });
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'waiter key',
    );
    ac.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect((await kv.range(`${name}/`, { prefix: true })).count).toBe(1);
    await h.unlock();
    const again = await new Mutex(b, name).lock();
    await again.unlock();
  });

  it('mutex — guard() holds only while the handle owns the lock', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-guard')}lock`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const h = await new Mutex(s, name).lock();
    const t1 = await kv.txn({
      compare: [h.guard()],
      success: [{ type: 'put', key: `${name}-data`, value: 'x' }],
      failure: [],
    });
    expect(t1.succeeded).toBe(true);
    await h.unlock();
    const t2 = await kv.txn({
      compare: [h.guard()],
      success: [{ type: 'put', key: `${name}-data`, value: 'y' }],
      failure: [],
    });
    expect(t2.succeeded).toBe(false);
    expect(h.lost.aborted).toBe(true);
  });

  it("mutex — when the holder's lease is revoked, its lost fires and the waiter takes over with a larger token", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-revoke')}lock`;
    const a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const ha = await new Mutex(a, name).lock();
    const waiting = new Mutex(b, name).lock();
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'waiter key',
    );
    await kv.lease.revoke(a.lease);
    const hb = await waiting;
    await waitFor(() => ha.lost.aborted, 3000, "the old holder's lost");
    expect(hb.token).toBeGreaterThan(ha.token);
    await hb.unlock();
  });

  it('mutex — a holder cut off from the server sees lost before the waiter acquires', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const name = `${prefix('mutex-expire')}lock`;
    const proxied = await backend.proxied();
    try {
      const ttl = Math.max(2, backend.minTtlSeconds);
      const a = await Session.create(proxied.kv, { ttlSeconds: ttl });
      await using b = await Session.create(kv, { ttlSeconds: ttl + 5 });
      const ha = await new Mutex(a, name, { lostOnSuspend: false }).lock();
      let lostAt = 0;
      ha.lost.addEventListener('abort', () => (lostAt = performance.now()));
      const waiting = new Mutex(b, name).lock();
      await waitFor(
        async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
        5000,
        'waiter key',
      );
      await proxied.cut();
      const hb = await waiting;
      const acquiredAt = performance.now();
      expect(lostAt).toBeGreaterThan(0);
      expect(lostAt).toBeLessThan(acquiredAt);
      expect(hb.token).toBeGreaterThan(ha.token);
      await hb.unlock();
    } finally {
      await proxied.close();
    }
  }, 20_000);

  it('mutex — a waiter whose session is lost fails fast with session-lost', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-waiter-lost')}lock`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    // A long TTL: b's keep-alive loop would notice the revoke only after ~10 s; the waiter must
    // notice at once, through the watch on its own key.
    const b = await Session.create(kv, { ttlSeconds: 30 });
    const h = await new Mutex(a, name).lock();
    const waiting = new Mutex(b, name).lock();
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'waiter key',
    );
    await kv.lease.revoke(b.lease);
    await expect(waiting).rejects.toMatchObject({ code: 'session-lost' });
    expect(b.lost.aborted).toBe(false);
    await h.unlock();
    await b.close().catch(() => undefined);
  });

  it('mutex — unlock fails while the connection is down and succeeds when retried after it returns', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const name = `${prefix('mutex-unlock-retry')}lock`;
    const proxied = await backend.proxied();
    try {
      const s = await Session.create(proxied.kv, { ttlSeconds: backend.minTtlSeconds + 10 });
      const h = await new Mutex(s, name, { lostOnSuspend: false }).lock();
      await proxied.cut();
      await expect(h.unlock({ signal: AbortSignal.timeout(1500) })).rejects.toBeDefined();
      expect(await kv.get(h.key)).toBeDefined(); // still held on the server
      await proxied.restore();
      await h.unlock();
      expect(await kv.get(h.key)).toBeUndefined();
      await s.close();
    } finally {
      await proxied.close();
    }
  }, 20_000);

  it('mutex — a waiter whose predecessor aborts keeps waiting while an older holder remains', async () => {
    await predecessorLeavesBeforeHolder(ctx, 'mutex-pred-abort', async (b) => {
      const reason = new Error('B gave up');
      b.abort.abort(reason);
      await expect(b.waiting).rejects.toBe(reason);
    });
  });

  it("mutex — a waiter whose predecessor's session expires keeps waiting while an older holder remains", async () => {
    const { kv } = ctx();
    await predecessorLeavesBeforeHolder(ctx, 'mutex-pred-expire', async (b) => {
      await kv.lease.revoke(b.session.lease);
      await expect(b.waiting).rejects.toMatchObject({ code: 'session-lost' });
    });
  });

  it("mutex — lock cycles of one session share one watch of its key; a new holder's lost ignores the previous unlock's delete", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-kept-watch')}lock`;
    const spy = watchSpy(kv);
    await using s = await Session.create(spy.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(s, name);
    const ownWatches = () => spy.watched.filter((k) => k === m.key).length;
    const tokens: number[] = [];
    for (let i = 0; i < 3; i++) {
      const h = await m.lock();
      tokens.push(h.token);
      await h.unlock();
      expect(h.lost.aborted).toBe(true);
    }
    // Also across Mutex objects of the same session and name.
    const h = await new Mutex(s, name).lock();
    expect(h.token).toBeGreaterThan(tokens[2]!);
    expect(ownWatches()).toBe(1);
    // The kept watch delivered the earlier unlocks' deletes (all below h.token): h still holds.
    await sleep(150);
    expect(h.lost.aborted).toBe(false);
    const del = await kv.delete(h.key); // someone removes the key: the holder must learn it
    await waitFor(() => h.lost.aborted, 5000, 'lost after the delete');
    expect(String((h.lost.reason as Error).message)).toContain(`revision ${del.revision}`);
    // After the linger time with nothing held, the kept watch is closed; the next lock opens one.
    await sleep(keyWatchLingerMs + 300);
    const again = await m.lock();
    expect(ownWatches()).toBe(2);
    await sleep(150);
    expect(again.lost.aborted).toBe(false);
    await kv.lease.revoke(s.lease);
    await waitFor(() => again.lost.aborted, 5000, 'lost after the revoke');
  });

  it("mutex — when the kept watch of the holder's key loses its history, the holder is re-checked against the present", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-kept-compacted')}lock`;
    const spy = watchSpy(kv);
    await using s = await Session.create(spy.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(s, name);
    spy.failNext.set(
      m.key,
      new ConclaveError(ErrorCode.Compacted, 'compacted (test)', { compactRevision: 1 }),
    );
    const h = await m.lock();
    // The kept watch failed; the holder continues on a watch of its own, which reads the key.
    await waitFor(() => spy.watched.filter((k) => k === m.key).length === 2, 5000, 'the hand-over watch');
    await sleep(150);
    expect(h.lost.aborted).toBe(false);
    await kv.delete(h.key);
    await waitFor(() => h.lost.aborted, 5000, 'lost after the delete');
  });

  it("mutex — when the kept watch of the holder's key fails otherwise, the holder's lost fires", async () => {
    const { prefix, kv, backend } = ctx();
    const name = `${prefix('mutex-kept-failed')}lock`;
    const spy = watchSpy(kv);
    await using s = await Session.create(spy.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(s, name);
    spy.failNext.set(m.key, new ConclaveError(ErrorCode.Unavailable, 'watch stream gone (test)'));
    const h = await m.lock();
    await waitFor(() => h.lost.aborted, 5000, 'lost after the watch failed');
    expect(h.lost.reason).toMatchObject({ code: 'session-lost' });
    await h.unlock();
    // The next lock opens a fresh kept watch and works normally.
    const again = await m.lock();
    await sleep(150);
    expect(again.lost.aborted).toBe(false);
    await again.unlock();
  });

  it('mutex — a lock() whose new key is deleted before it starts watching it fails with session-lost', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-deleted-early')}lock`;
    let afterPut: (() => Promise<void>) | undefined;
    // A client whose enqueue txn returns only after `afterPut` ran (someone deletes the new key).
    const slowKv = new Proxy(kv, {
      get(target, p, receiver) {
        if (p === 'txn')
          return async (...args: Parameters<KV['txn']>) => {
            const r = await target.txn(...args);
            const hook = afterPut;
            if (hook && r.succeeded && args[0].success.some((op) => op.type === 'put')) {
              afterPut = undefined;
              await hook();
            }
            return r;
          };
        const v = Reflect.get(target, p, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using s = await Session.create(slowKv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(s, name);
    // One cycle first: the session's kept watch of the key is running (it lingers after unlock).
    await (await m.lock()).unlock();
    afterPut = async () => {
      const ac = new AbortController();
      const seen = (async () => {
        for await (const b of kv.watch(m.key, { signal: ac.signal, filters: ['noput'] }))
          if (b.events.length > 0) return;
      })();
      await kv.delete(m.key);
      await seen;
      ac.abort();
      await sleep(100); // the kept watch, on the same stream, has the delete too
    };
    await expect(m.lock()).rejects.toMatchObject({ code: 'session-lost' });
    expect(afterPut).toBeUndefined();
    const h = await m.lock();
    await sleep(100);
    expect(h.lost.aborted).toBe(false);
    await h.unlock();
  });

  it('mutex — an unlock hands the lock to the next waiter on the same client with proof, without a queue re-read', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-handoff')}lock`;
    // One client for both sessions, counting the waiter's queue re-reads.
    const probe = handoffProbe(kv);
    const ttl = backend.minTtlSeconds + 5;
    await using a = await Session.create(probe.kv, { ttlSeconds: ttl });
    await using b = await Session.create(probe.kv, { ttlSeconds: ttl });
    for (let round = 0; round < 3; round++) {
      const ha = await new Mutex(a, name).lock();
      let unlocked = false;
      let aLostFirst: boolean | undefined;
      const waiting = new Mutex(b, name).lock().then((h) => {
        expect(unlocked).toBe(true);
        aLostFirst = ha.lost.aborted;
        return h;
      });
      await waitFor(
        async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
        5000,
        "B's key",
      );
      await waitFor(() => handoffState(probe.kv).waiters === 1, 5000, 'B registered as a local waiter');
      const readsBefore = probe.queueReads();
      unlocked = true;
      await ha.unlock();
      const hb = await waiting;
      expect(probe.queueReads()).toBe(readsBefore);
      expect(aLostFirst).toBe(true);
      expect(hb.token).toBeGreaterThan(ha.token);
      expect(hb.lost.aborted).toBe(false);
      // The handed-over holder is a full holder: its guard holds, and its unlock frees the lock.
      const t = await kv.txn({ compare: [hb.guard()], success: [], failure: [] });
      expect(t.succeeded).toBe(true);
      await hb.unlock();
    }
    expect((await kv.range(`${name}/`, { prefix: true, countOnly: true })).count).toBe(0);
    // Nothing stays registered per lock name once the waits are over.
    expect(handoffState(probe.kv)).toEqual({ prefixes: 0, waiters: 0, releases: 0 });
  });

  it("mutex — a waiter woken by a local release's delete event, still waiting for its offer, can be aborted and loses its key cleanly", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-handoff-abort')}lock`;
    const probe = handoffProbe(kv);
    const ttl = backend.minTtlSeconds + 5;
    await using a = await Session.create(probe.kv, { ttlSeconds: ttl });
    await using b = await Session.create(probe.kv, { ttlSeconds: ttl });
    const count = async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count;
    // 1. Aborted while waiting for the offer: rejects at once with the reason, and leaves no key.
    const ha = await new Mutex(a, name).lock();
    const ac = new AbortController();
    const mb = new Mutex(b, name);
    const waiting = mb.lock({ signal: ac.signal });
    waiting.catch(() => undefined);
    await waitFor(() => handoffState(probe.kv).waiters === 1, 5000, 'B registered as a local waiter');
    probe.delayReplies(2000);
    const unlocking = ha.unlock();
    // A's key is gone (the txn applied) while its reply is held back.
    await waitFor(async () => (await count()) === 1, 5000, "A's delete applied");
    await sleep(50);
    const reason = new Error('caller gave up');
    const t0 = Date.now();
    ac.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(Date.now() - t0).toBeLessThan(1000);
    await waitFor(async () => (await count()) === 0, 5000, "B's key removed");
    await unlocking;
    probe.delayReplies(0);
    // 2. Its key deleted while waiting for the offer: fails with session-lost, holds nothing.
    const ha2 = await new Mutex(a, name).lock();
    const waiting2 = mb.lock();
    waiting2.catch(() => undefined);
    await waitFor(() => handoffState(probe.kv).waiters === 1, 5000, 'B registered again');
    probe.delayReplies(2000);
    const unlocking2 = ha2.unlock();
    await waitFor(async () => (await count()) === 1, 5000, "A's second delete applied");
    await kv.delete(mb.key);
    await expect(waiting2).rejects.toMatchObject({ code: 'session-lost' });
    await unlocking2;
    probe.delayReplies(0);
    expect(await count()).toBe(0);
    expect(handoffState(probe.kv)).toEqual({ prefixes: 0, waiters: 0, releases: 0 });
  });

  it('mutex — a waiter on another client queued before a local waiter gets the lock first; no handoff skips it', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-handoff-foreign')}lock`;
    const other = await ctx().newKv();
    const ttl = backend.minTtlSeconds + 5;
    await using a = await Session.create(kv, { ttlSeconds: ttl });
    await using f = await Session.create(other, { ttlSeconds: ttl });
    await using w = await Session.create(kv, { ttlSeconds: ttl });
    const count = async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count;
    const ha = await new Mutex(a, name).lock();
    const order: string[] = [];
    let inside = 0;
    let overlap = false;
    const enter = async (who: string, h: { unlock(): Promise<void> }) => {
      if (++inside > 1) overlap = true;
      order.push(who);
      await sleep(30);
      inside--;
      await h.unlock();
    };
    const fDone = new Mutex(f, name).lock().then((h) => enter('foreign', h));
    await waitFor(async () => (await count()) === 2, 5000, "the foreign waiter's key");
    const wDone = new Mutex(w, name).lock().then((h) => enter('local', h));
    await waitFor(async () => (await count()) === 3, 5000, "the local waiter's key");
    await sleep(50);
    await ha.unlock();
    await Promise.all([fDone, wDone]);
    expect(order).toEqual(['foreign', 'local']);
    expect(overlap).toBe(false);
  });

  it('mutex — no watch opened by lock cycles starts in the past (etcd serves those from a 100 ms catch-up)', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-watch-start')}lock`;
    const starts: Array<number | undefined> = [];
    const spied = overriding(kv, {
      watch: (real, key, opts) => {
        starts.push(opts?.startRevision);
        return real.watch(key, opts);
      },
    });
    const ttl = backend.minTtlSeconds + 5;
    await using a = await Session.create(spied, { ttlSeconds: ttl });
    await using b = await Session.create(spied, { ttlSeconds: ttl });
    // Other writes land between every enqueue and the watches it opens.
    const noise = (async () => {
      for (let i = 0; i < 40; i++) await kv.put(`${name}-noise`, String(i));
    })();
    await Promise.all(
      [a, b].map(async (s) => {
        const m = new Mutex(s, name);
        for (let i = 0; i < 4; i++) await (await m.lock()).unlock();
      }),
    );
    await noise;
    expect(starts.length).toBeGreaterThan(0);
    expect(starts.filter((x) => x !== undefined)).toEqual([]);
  });

  it("mutex — a holder's key deleted before the watch of it is registered still fires lost", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-own-gap')}lock`;
    let deleteFirst: string | undefined;
    // The first watch of `deleteFirst` opens only after that key was deleted by another client.
    const slow = overriding(kv, {
      watch: (real, key, opts) => {
        const k = typeof key === 'string' ? key : toText(key);
        if (k !== deleteFirst) return real.watch(key, opts);
        deleteFirst = undefined;
        return deferredWatch(
          real.delete(k).then(() => undefined),
          () => real.watch(key, opts),
        );
      },
    });
    await using s = await Session.create(slow, { ttlSeconds: backend.minTtlSeconds + 5 });
    const m = new Mutex(s, name);
    deleteFirst = m.key;
    const h = await m.lock();
    await waitFor(() => h.lost.aborted, 5000, "the holder's lost");
    expect(h.lost.reason).toMatchObject({ code: 'session-lost' });
    expect(deleteFirst).toBeUndefined();
    // The next lock cycle of the session is not fired by that old delete.
    const h2 = await m.lock();
    await sleep(100);
    expect(h2.lost.aborted).toBe(false);
    await h2.unlock();
  });
};

/** A watch opened only once `before` settles (to put events between a caller's read and its watch). */
function deferredWatch(before: Promise<void>, open: () => Watch): Watch {
  let inner: Watch | undefined;
  const opened = before.then(() => {
    inner = open();
    return inner;
  });
  const ready = opened.then((w) => w.ready);
  ready.catch(() => undefined);
  const close = async () => {
    await opened.catch(() => undefined);
    await inner?.close();
  };
  return {
    ready,
    close,
    [Symbol.asyncDispose]: close,
    async *[Symbol.asyncIterator]() {
      yield* await opened;
    },
  };
}
