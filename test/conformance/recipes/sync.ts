import { expect, it } from 'vitest';
import { Barrier } from '../../../recipes/barrier.js';
import { DoubleBarrier } from '../../../recipes/double-barrier.js';
import { handoffState } from '../../../recipes/internal/handoff.js';
import { requestRevocation } from '../../../recipes/internal/revocation.js';
import { Mutex } from '../../../recipes/mutex.js';
import { RWMutex } from '../../../recipes/rw-mutex.js';
import { Semaphore } from '../../../recipes/semaphore.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { Session } from '../../../src/session.js';
import type { Bytes, Watch, WatchOptions } from '../../../src/types.js';
import type { RegisterTests } from '../context.js';
import { handoffProbe, sleep, waitFor } from '../util.js';

export const registerSyncTests: RegisterTests = (ctx) => {
  const sessions = async (n: number) => {
    const { kv, backend } = ctx();
    return Promise.all(
      Array.from({ length: n }, () => Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 })),
    );
  };
  const closeAll = (ss: Session[]) => Promise.all(ss.map((s) => s.close()));

  it('rwmutex — readers share, a writer excludes readers and other writers', async () => {
    const { prefix } = ctx();
    const name = `${prefix('rw-share')}rw`;
    const ss = await sessions(6);
    let readers = 0;
    let writers = 0;
    let maxReaders = 0;
    let violations = 0;
    await Promise.all(
      ss.map(async (s, i) => {
        const rw = new RWMutex(s, name);
        for (let round = 0; round < 3; round++) {
          if (i % 3 === 0) {
            const h = await rw.lock();
            writers++;
            if (writers > 1 || readers > 0) violations++;
            await sleep(3);
            writers--;
            await h.unlock();
          } else {
            const h = await rw.rLock();
            readers++;
            maxReaders = Math.max(maxReaders, readers);
            if (writers > 0) violations++;
            await sleep(10);
            readers--;
            await h.unlock();
          }
        }
      }),
    );
    await closeAll(ss);
    expect(violations).toBe(0);
    expect(maxReaders).toBeGreaterThan(1);
  });

  it('rwmutex — a waiting writer blocks later readers (no writer starvation)', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('rw-fair')}rw`;
    const [r1, w, r2] = await sessions(3);
    const h1 = await new RWMutex(r1!, name).rLock();
    const order: string[] = [];
    const pw = new RWMutex(w!, name).lock().then((h) => {
      order.push('writer');
      return h;
    });
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'writer queued',
    );
    const pr = new RWMutex(r2!, name).rLock().then((h) => {
      order.push('reader2');
      return h;
    });
    await sleep(200);
    expect(order).toEqual([]);
    await h1.unlock();
    const hw = await pw;
    await sleep(100);
    expect(order).toEqual(['writer']);
    await hw.unlock();
    await (await pr).unlock();
    expect(order).toEqual(['writer', 'reader2']);
    await closeAll([r1!, w!, r2!]);
  });

  it("rwmutex — a waiting writer's session expiring never lets two writers in", async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('rw-expire')}rw`;
    const [a, b, c] = await sessions(3);
    const ha = await new RWMutex(a!, name).lock();
    const pb = new RWMutex(b!, name).lock();
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'b queued',
    );
    let cHolds = false;
    const pc = new RWMutex(c!, name).lock().then((h) => {
      cHolds = true;
      return h;
    });
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 3,
      5000,
      'c queued',
    );
    await kv.lease.revoke(b!.lease); // the middle waiter's session expires
    await expect(pb).rejects.toMatchObject({ code: 'session-lost' });
    await sleep(300);
    expect(cHolds).toBe(false); // a still holds: c must keep waiting
    await ha.unlock();
    const hc = await pc;
    expect(hc.token).toBeGreaterThan(ha.token);
    await hc.unlock();
    await closeAll([a!, c!]);
  });

  it('rwmutex — readers releasing on the same client hand a waiting writer the lock only when none is left', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('rw-handoff')}rw`;
    const probe = handoffProbe(kv);
    const ttl = backend.minTtlSeconds + 5;
    await using r1 = await Session.create(probe.kv, { ttlSeconds: ttl });
    await using r2 = await Session.create(probe.kv, { ttlSeconds: ttl });
    await using w = await Session.create(probe.kv, { ttlSeconds: ttl });
    const h1 = await new RWMutex(r1, name).rLock();
    const h2 = await new RWMutex(r2, name).rLock();
    let released = 0;
    const writing = new RWMutex(w, name).lock().then((h) => {
      expect(released).toBe(2);
      return h;
    });
    await waitFor(
      () => handoffState(probe.kv).waiters === 1,
      5000,
      'the writer registered as a local waiter',
    );
    // The newest reader goes first: the writer is not first yet, re-checks, and waits for the other.
    released++;
    await h2.unlock();
    // Wait until the writer has re-checked after that release and waits again: registered, no
    // release pending, and its reads settled (a fixed sleep was too short on a loaded machine).
    let lastReads = -1;
    let stablePolls = 0;
    await waitFor(
      () => {
        const reads = probe.queueReads();
        const st = handoffState(probe.kv);
        stablePolls = reads === lastReads && st.waiters === 1 && st.releases === 0 ? stablePolls + 1 : 0;
        lastReads = reads;
        return stablePolls >= 5;
      },
      10_000,
      'the writer waiting again after the first reader left',
    );
    const readsBefore = probe.queueReads();
    released++;
    await h1.unlock();
    const hw = await writing;
    expect(probe.queueReads()).toBe(readsBefore); // handed over by the last reader's release
    expect(hw.token).toBeGreaterThan(h1.token);
    const t = await kv.txn({ compare: [hw.guard()], success: [], failure: [] });
    expect(t.succeeded).toBe(true);
    await hw.unlock();
    expect(handoffState(probe.kv)).toEqual({ prefixes: 0, waiters: 0, releases: 0 });
  });

  it('rwmutex — tryLock fails while read-held; tryRLock succeeds', async () => {
    const { prefix } = ctx();
    const name = `${prefix('rw-try')}rw`;
    const [a, b, c] = await sessions(3);
    const r = await new RWMutex(a!, name).rLock();
    expect((await new RWMutex(b!, name).tryLock()).isErr()).toBe(true);
    const r2 = await new RWMutex(c!, name).tryRLock();
    expect(r2.isOk()).toBe(true);
    await r.unlock();
    if (r2.isOk()) await r2.value.unlock();
    await closeAll([a!, b!, c!]);
  });

  it('rwmutex and semaphore — a second acquire of one session fails conflict; the first keeps its hold', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('rw-reentry')}rw`;
    const [a, b] = await sessions(2);
    const isConflict = (e: unknown) => ConclaveError.is(e, ErrorCode.Conflict);
    const r = await new RWMutex(a!, name).rLock();
    await expect(new RWMutex(a!, name).rLock()).rejects.toSatisfy(isConflict);
    await expect(new RWMutex(a!, name).tryRLock()).rejects.toSatisfy(isConflict);
    expect((await kv.get(r.key))?.createRevision).toBe(r.token);
    expect(r.lost.aborted).toBe(false);
    // Another session still shares the read lock, and a writer is still excluded by the first.
    const r2 = await new RWMutex(b!, name).rLock();
    await r2.unlock();
    expect((await new RWMutex(b!, name).tryLock()).isErr()).toBe(true);
    await r.unlock();
    const w = await new RWMutex(a!, name).lock();
    await expect(new RWMutex(a!, name).lock()).rejects.toSatisfy(isConflict);
    await expect(new RWMutex(a!, name).tryLock()).rejects.toSatisfy(isConflict);
    await w.unlock();

    const sem = `${prefix('sem-reentry')}sem`;
    const p = await new Semaphore(a!, sem, 2).acquire();
    await expect(new Semaphore(a!, sem, 2).acquire()).rejects.toSatisfy(isConflict);
    expect((await kv.get(p.key))?.createRevision).toBe(p.token);
    const q = await new Semaphore(b!, sem, 2).acquire();
    await p.release();
    await q.release();
    await closeAll([a!, b!]);
  });

  it('rwmutex and semaphore — revocable holders hear revocation requests, also one made while they waited', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('rw-revoke')}rw`;
    const [a, b] = await sessions(2);
    const w = await new RWMutex(a!, name, { revocable: true }).lock();
    // b waits for a read lock; an operator asks the waiter to give up before it even holds.
    const waiting = new RWMutex(b!, name, { revocable: true }).rLock();
    await waitFor(
      async () => (await kv.range(`${name}/read/`, { prefix: true, countOnly: true })).count === 1,
      5000,
      "the reader's key",
    );
    const readerKey = (await kv.range(`${name}/read/`, { prefix: true })).kvs[0]!;
    expect(await requestRevocation(kv, { key: toText(readerKey.key), token: readerKey.createRevision })).toBe(
      true,
    );
    expect(await requestRevocation(kv, w, { reason: 'readers wait' })).toBe(true);
    await waitFor(() => w.revocationRequested.aborted, 10_000, "the writer's request");
    await w.unlock();
    const r = await waiting;
    // The request made while it waited is seen once it holds.
    await waitFor(() => r.revocationRequested.aborted, 10_000, "the reader's request");
    expect(r.lost.aborted).toBe(false);
    await r.unlock();

    const sem = `${prefix('sem-revoke')}sem`;
    const p = await new Semaphore(a!, sem, 1, { revocable: true }).acquire();
    expect(await requestRevocation(kv, p, { by: 'ops' })).toBe(true);
    await waitFor(() => p.revocationRequested.aborted, 10_000, "the permit's request");
    expect(p.revocationRequested.reason).toMatchObject({ by: 'ops' });
    await p.release();
    await closeAll([a!, b!]);
  });

  it('semaphore — never more than N holders under contention, with aborts', async () => {
    const { prefix } = ctx();
    const name = `${prefix('sem')}s`;
    const ss = await sessions(6);
    let inside = 0;
    let maxInside = 0;
    let aborted = 0;
    await Promise.all(
      ss.map(async (s, i) => {
        const sem = new Semaphore(s, name, 2);
        for (let round = 0; round < 3; round++) {
          const signal = i === 5 && round === 1 ? AbortSignal.timeout(5) : undefined;
          let p: Awaited<ReturnType<Semaphore['acquire']>>;
          try {
            p = await sem.acquire(signal ? { signal } : {});
          } catch {
            aborted++;
            continue;
          }
          inside++;
          maxInside = Math.max(maxInside, inside);
          await sleep(5);
          inside--;
          await p.release();
        }
      }),
    );
    await closeAll(ss);
    expect(maxInside).toBe(2);
    expect(aborted).toBeLessThanOrEqual(1);
  });

  for (const permits of [1, 2]) {
    it(`semaphore — a permit released while the waiter opens its watch is not missed (${permits} permit${permits > 1 ? 's' : ''})`, async () => {
      const { kv, prefix, backend } = ctx();
      const name = `${prefix(`sem-gap${permits}`)}s`;
      const holders = await sessions(permits);
      const held = await Promise.all(holders.map((h) => new Semaphore(h, name, permits).acquire()));
      // The waiter's first watch of the holders is created only after one permit is released: the
      // delete falls between its enqueue and its watch, and only the re-check at the watch's
      // registered revision can see it (1 permit: the predecessor's watch; 2: the holders' range).
      const gap = watchOpenedAfter(
        kv,
        (key) => key.includes('/holders/'),
        () => held[0]!.release(),
      );
      const b = await Session.create(gap.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
      const p = await new Semaphore(b, name, permits).acquire({ signal: AbortSignal.timeout(10_000) });
      expect(gap.fired()).toBe(true);
      await p.release();
      await Promise.all(held.map((h) => h.release()));
      await closeAll([...holders, b]);
    });
  }

  it('mutex — a waiting predecessor that gives up while the next waiter opens its watch is not waited for', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-gap')}m`;
    const [sh, sp] = await sessions(2);
    const held = await new Mutex(sh!, name).lock();
    const giveUp = new AbortController();
    const waiting = new Mutex(sp!, name).lock({ signal: giveUp.signal });
    waiting.catch(() => undefined);
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'the second waiter queued',
    );
    // The third waiter's predecessor is the second (not the first key): its watch is created only
    // after the second gave up (its key deleted), so only the delayed gap read finds it gone.
    let own = '';
    const gap = watchOpenedAfter(
      kv,
      (key) => key.startsWith(`${name}/`) && key !== own,
      async () => {
        giveUp.abort();
        await waiting.catch(() => undefined);
      },
    );
    const sw = await Session.create(gap.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const third = new Mutex(sw, name);
    own = third.key;
    const acquired = third.lock({ signal: AbortSignal.timeout(10_000) });
    await waitFor(() => gap.fired(), 5000, "the third waiter's predecessor watch");
    await held.unlock();
    const h = await acquired;
    expect(h.token).toBeGreaterThan(held.token);
    await h.unlock();
    await closeAll([sh!, sp!, sw]);
  });

  it('semaphore — a participant with a different permit count gets a conflict error', async () => {
    const { prefix } = ctx();
    const name = `${prefix('sem-conflict')}s`;
    const [a, b] = await sessions(2);
    const p = await new Semaphore(a!, name, 3).acquire();
    await expect(new Semaphore(b!, name, 4).acquire()).rejects.toMatchObject({ code: 'conflict' });
    await p.release();
    await closeAll([a!, b!]);
  });

  it('barrier — wait blocks until release; abort rejects with the reason', async () => {
    const { kv, prefix } = ctx();
    const b = new Barrier(kv, `${prefix('barrier')}b`);
    expect(await b.hold()).toBe(true);
    expect(await b.hold()).toBe(false);
    let passed = false;
    const waiting = b.wait().then(() => (passed = true));
    const ac = new AbortController();
    const reason = new Error('enough');
    const aborted = b.wait({ signal: ac.signal });
    await sleep(100);
    ac.abort(reason);
    await expect(aborted).rejects.toBe(reason);
    expect(passed).toBe(false);
    await b.release();
    await waiting;
    expect(passed).toBe(true);
    await b.wait(); // already down
  });

  it('double barrier — all enter together, an extra participant is refused, all leave together', async () => {
    const { prefix } = ctx();
    const name = `${prefix('dbarrier')}d`;
    const ss = await sessions(4);
    const entered: number[] = [];
    const first = ss
      .slice(0, 2)
      .map((s, i) => new DoubleBarrier(s, name, 3).enter().then(() => entered.push(i)));
    await sleep(200);
    expect(entered).toEqual([]);
    await new DoubleBarrier(ss[2]!, name, 3).enter();
    await Promise.all(first);
    expect(entered.length).toBe(2);
    await expect(new DoubleBarrier(ss[3]!, name, 3).enter()).rejects.toMatchObject({ code: 'conflict' });
    let left = 0;
    const leaving = ss.slice(0, 2).map((s) => new DoubleBarrier(s, name, 3).leave().then(() => left++));
    await sleep(200);
    expect(left).toBe(0);
    await new DoubleBarrier(ss[2]!, name, 3).leave();
    await Promise.all(leaving);
    expect(left).toBe(2);
    await closeAll(ss);
  });

  it('double barrier — an aborted enter removes its key, so only real participants complete the group', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('dbarrier-abort')}d`;
    const ss = await sessions(3);
    const ac = new AbortController();
    const reason = new Error('not today');
    const quitter = new DoubleBarrier(ss[0]!, name, 2).enter({ signal: ac.signal });
    await waitFor(
      async () => (await kv.range(`${name}/waiters/`, { prefix: true, countOnly: true })).count === 1,
      5000,
      'the first waiter key',
    );
    ac.abort(reason);
    await expect(quitter).rejects.toBe(reason);
    expect((await kv.range(`${name}/waiters/`, { prefix: true, countOnly: true })).count).toBe(0);
    let entered = 0;
    const one = new DoubleBarrier(ss[1]!, name, 2).enter().then(() => entered++);
    await sleep(150);
    expect(entered).toBe(0); // the aborted participant did not count
    await new DoubleBarrier(ss[2]!, name, 2).enter();
    await one;
    expect(entered).toBe(1);
    await Promise.all([
      new DoubleBarrier(ss[1]!, name, 2).leave(),
      new DoubleBarrier(ss[2]!, name, 2).leave(),
    ]);
    expect((await kv.range(`${name}/`, { prefix: true, countOnly: true })).count).toBe(0);
    await closeAll(ss);
  });

  it('barrier — many waiters are released by one release, and an aborted waiter does not hold it up', async () => {
    const { kv, prefix } = ctx();
    const b = new Barrier(kv, `${prefix('barrier-many')}b`);
    await b.hold();
    const ac = new AbortController();
    let released = 0;
    const waiters = Array.from({ length: 6 }, (_, i) =>
      new Barrier(kv, b.key).wait(i === 0 ? { signal: ac.signal } : {}).then(() => released++),
    );
    await sleep(100);
    ac.abort();
    await expect(waiters[0]).rejects.toBeDefined();
    expect(released).toBe(0);
    await b.release();
    await Promise.all(waiters.slice(1));
    expect(released).toBe(5);
  });
};

/**
 * A KV whose first watch of a key that `matches` is opened only after `before()` ran (a change
 * that falls between a waiter's read and its watch); `fired()` tells whether that happened.
 */
function watchOpenedAfter(
  kv: KV,
  matches: (key: string) => boolean,
  before: () => Promise<unknown>,
): { kv: KV; fired(): boolean } {
  let fired = false;
  const proxy = new Proxy(kv, {
    get(t, prop) {
      const v = Reflect.get(t, prop, t);
      if (prop !== 'watch') return typeof v === 'function' ? v.bind(t) : v;
      return (key: Bytes, opts: WatchOptions): Watch => {
        if (fired || !matches(typeof key === 'string' ? key : toText(key))) return t.watch(key, opts);
        fired = true;
        let real: Watch | undefined;
        const ready = (async () => {
          await before();
          real = t.watch(key, opts);
          return real.ready;
        })();
        const close = async () => {
          await ready.catch(() => undefined);
          await real?.close();
        };
        return {
          ready,
          close,
          async *[Symbol.asyncIterator]() {
            await ready;
            yield* real!;
          },
          [Symbol.asyncDispose]: close,
        };
      };
    },
  });
  return { kv: proxy, fired: () => fired };
}
