import fc from 'fast-check';
import { expect, it } from 'vitest';
import { PrefixCache, type PrefixCacheChange } from '../../../recipes/prefix-cache.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import type { KeyValue } from '../../../src/types.js';
import type { RegisterTests } from '../context.js';
import { afterFirstRead, overriding, waitFor } from '../util.js';

const view = (kvs: readonly KeyValue[]) =>
  kvs.map((k) => `${toText(k.key)}=${toText(k.value)}@${k.modRevision}/${k.createRevision}`);

/** The cache's content equals a fresh range of its prefix at the cache's revision. */
async function expectExact(kv: KV, cache: PrefixCache, prefix: string): Promise<void> {
  const fresh = await kv.range(prefix, { prefix: true, revision: cache.revision });
  expect(view(cache.list())).toEqual(view(fresh.kvs));
  expect(cache.size).toBe(fresh.count);
}

/** A view kept only from the change stream (applying each change's events in order). */
function follower(): { apply(c: PrefixCacheChange): void; list(): string[] } {
  let m = new Map<string, KeyValue>();
  return {
    apply(c) {
      if (c.reset) m = new Map();
      for (const e of c.events) {
        if (e.type === 'put') m.set(toText(e.key), e.kv);
        else m.delete(toText(e.key));
      }
    },
    list: () => view([...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1])),
  };
}

export const registerPrefixCacheTests: RegisterTests = (ctx) => {
  it('prefix cache — reads the prefix, follows puts and deletes (with prev kv), and nothing outside it', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-basic');
    await kv.put(`${p}a`, '1');
    await kv.put(`${p}b`, '2');
    await kv.put(`${p.slice(0, -1)}0`, 'outside'); // just past the prefix
    await using cache = await PrefixCache.start(kv, p);
    expect(cache.size).toBe(2);
    expect(toText(cache.get(`${p}a`)!.value)).toBe('1');
    expect(cache.bytes).toBe(`${p}a`.length + 1 + `${p}b`.length + 1);
    const it = cache.changes()[Symbol.asyncIterator]();
    await kv.put(`${p}a`, '3');
    await kv.delete(`${p}b`);
    await kv.put(`${p}c/x`, '4');
    const seen: string[] = [];
    while (seen.length < 3) {
      const c = (await it.next()).value as PrefixCacheChange;
      for (const e of c.events)
        seen.push(
          e.type === 'put'
            ? `put ${toText(e.key).slice(p.length)} ${toText(e.kv.value)} prev ${e.prevKv ? toText(e.prevKv.value) : '-'}`
            : `delete ${toText(e.key).slice(p.length)} prev ${toText(e.prevKv.value)}`,
        );
    }
    expect(seen).toEqual(['put a 3 prev 1', 'delete b prev 2', 'put c/x 4 prev -']);
    expect(cache.list({ under: `${p}c/` }).map((k) => toText(k.key))).toEqual([`${p}c/x`]);
    await expectExact(kv, cache, p);
    await it.return?.();
    // Aborting an iterator's signal ends that iterator normally (a requested stop); the cache goes on.
    const ac = new AbortController();
    const stopped = cache.changes({ signal: ac.signal });
    const pending = stopped.next();
    ac.abort(new Error('stop following'));
    expect(await pending).toEqual({ done: true, value: undefined });
    await kv.put(`${p}d`, '5');
    await cache.ready((await kv.put(`${p}e`, '6')).revision);
    expect(cache.size).toBe(4);
  });

  it('prefix cache — equals a fresh range after random writes, deletes, txns and compactions, and a follower of its changes equals it', async () => {
    const { kv, prefix } = ctx();
    const key = fc.constantFrom('a', 'b', 'c', 'd/1', 'd/2', 'e');
    const op = fc.oneof(
      fc.record({ t: fc.constant('put' as const), k: key, v: fc.string({ maxLength: 4 }) }),
      fc.record({ t: fc.constant('del' as const), k: key }),
      fc.record({ t: fc.constant('delp' as const), k: fc.constantFrom('d/', '') }),
      fc.record({ t: fc.constant('txn' as const), k: key, k2: key }),
      // A compaction at the current revision: the cache's live watch must not lose anything.
      fc.record({ t: fc.constant('compact' as const) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 20 }), async (ops) => {
        const p = prefix('pc-prop');
        await kv.put(`${p}a`, 'init');
        await using cache = await PrefixCache.start(kv, p);
        const f = follower();
        f.apply({
          revision: cache.revision,
          events: cache.list().map((k) => ({ type: 'put', key: k.key, kv: k })),
          reset: true,
        });
        const changes = cache.changes();
        let last = 0;
        for (const o of ops) {
          if (o.t === 'put') last = (await kv.put(`${p}${o.k}`, o.v)).revision;
          else if (o.t === 'del') last = (await kv.delete(`${p}${o.k}`)).revision;
          else if (o.t === 'delp') last = (await kv.delete(`${p}${o.k}`, { prefix: true })).revision;
          else if (o.t === 'compact')
            // Compacting again at an already compacted revision is refused (etcd): that is fine here.
            await kv
              .compact((await kv.status()).revision)
              .catch((e) => expect(ConclaveError.is(e, 'compacted')).toBe(true));
          else
            last = (
              await kv.txn({
                compare: [],
                success:
                  o.k === o.k2
                    ? [{ type: 'put', key: `${p}${o.k}`, value: 'tx' }]
                    : [
                        { type: 'put', key: `${p}${o.k}`, value: 'tx' },
                        { type: 'delete', key: `${p}${o.k2}` },
                      ],
                failure: [],
              })
            ).revision;
        }
        await cache.ready(last);
        expect(cache.revision).toBeGreaterThanOrEqual(last);
        // At the store's current revision (at or above any compaction), so the fresh range can be read there.
        await cache.ready();
        await expectExact(kv, cache, p);
        // Drain what the follower has been sent so far and compare.
        const it = changes[Symbol.asyncIterator]();
        while (f.list().join() !== view(cache.list()).join()) {
          const n = await Promise.race([it.next(), new Promise<'t'>((r) => setTimeout(() => r('t'), 5000))]);
          if (n === 't' || n.done) break;
          f.apply(n.value);
        }
        expect(f.list()).toEqual(view(cache.list()));
        await it.return?.();
      }),
      { numRuns: 8 },
    );
  }, 60_000);

  it('prefix cache — a compaction of the history it needs makes it re-read and emit a resync, and it stays exact', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-compact');
    await kv.put(`${p}gone`, 'x');
    await kv.put(`${p}kept`, '1');
    // Between the cache's first read and its watch: writes, then a compaction past them.
    const racing = afterFirstRead(kv, async () => {
      await kv.delete(`${p}gone`);
      await kv.put(`${p}kept`, '2');
      const r = await kv.put(`${p}new`, 'n');
      await kv.compact(r.revision);
    });
    const cache = new PrefixCache(racing, p);
    const changes = cache.changes();
    await cache.start();
    try {
      const it = changes[Symbol.asyncIterator]();
      const c = (await it.next()).value as PrefixCacheChange;
      expect(c.resync).toBe('compacted');
      const byType = c.events.map((e) => `${e.type} ${toText(e.key).slice(p.length)}`).sort();
      expect(byType).toEqual(['delete gone', 'put kept', 'put new']);
      await expectExact(kv, cache, p);
      await it.return?.();
    } finally {
      await cache.close();
    }
  });

  it('prefix cache — changes({ withContent }) starts with the content (the first read when taken before start), then every change', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-content');
    await kv.put(`${p}a`, '1');
    // Between the first read and the watch: a write the content must not include.
    const racing = afterFirstRead(kv, async () => {
      await kv.put(`${p}b`, '2');
    });
    const cache = new PrefixCache(racing, p);
    const early = cache.changes({ withContent: true });
    const plain = cache.changes();
    await cache.start();
    try {
      const first = (await early.next()).value as PrefixCacheChange;
      expect(first.reset).toBe(true);
      expect(first.resync).toBeUndefined();
      expect(first.events.map((e) => toText(e.key).slice(p.length))).toEqual(['a']);
      const second = (await early.next()).value as PrefixCacheChange;
      expect(second.events.map((e) => `${e.type} ${toText(e.key).slice(p.length)}`)).toEqual(['put b']);
      // An iterator without withContent gets only the change.
      const onlyChange = (await plain.next()).value as PrefixCacheChange;
      expect(onlyChange.reset).toBeUndefined();
      expect(onlyChange.events.map((e) => toText(e.key).slice(p.length))).toEqual(['b']);
      // Taken after start: the content now.
      const late = cache.changes({ withContent: true });
      const now = (await late.next()).value as PrefixCacheChange;
      expect(now.reset).toBe(true);
      expect(now.events.map((e) => toText(e.key).slice(p.length))).toEqual(['a', 'b']);
      expect(now.revision).toBe(cache.revision);
      await late.return();
    } finally {
      await early.return();
      await plain.return();
      await cache.close();
    }
  });

  it('prefix cache — ready(revision) resolves after a write elsewhere without any change under the prefix', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-ready');
    await kv.put(`${p}a`, '1');
    await using cache = await PrefixCache.start(kv, p);
    const elsewhere = await kv.put(`${prefix('pc-ready-other')}x`, 'y');
    await cache.ready(elsewhere.revision, { signal: AbortSignal.timeout(10_000) });
    expect(cache.revision).toBeGreaterThanOrEqual(elsewhere.revision);
    const mine = await kv.put(`${p}b`, '2');
    await cache.ready(mine.revision, { signal: AbortSignal.timeout(10_000) });
    expect(toText(cache.get(`${p}b`)!.value)).toBe('2');
    await cache.ready(undefined, { signal: AbortSignal.timeout(10_000) });
    await expect(cache.ready(mine.revision + 1_000_000)).rejects.toSatisfy((e) =>
      ConclaveError.is(e, 'future-revision'),
    );
  });

  it('prefix cache — an iterator that falls behind gets one reset with the whole content', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-overflow');
    await using cache = await PrefixCache.start(kv, p, { changesBufferedMax: 2 });
    const changes = cache.changes();
    let last = 0;
    for (let i = 0; i < 6; i++) last = (await kv.put(`${p}k${i}`, `${i}`)).revision;
    await kv.delete(`${p}k0`);
    await cache.ready(last + 1);
    const it = changes[Symbol.asyncIterator]();
    const c = (await it.next()).value as PrefixCacheChange;
    expect(c.reset).toBe(true);
    expect(c.resync).toBe('overflow');
    expect(c.events.map((e) => toText(e.key).slice(p.length))).toEqual(['k1', 'k2', 'k3', 'k4', 'k5']);
    await it.return?.();
  });

  it('prefix cache — a prefix over keysMax or bytesMax is refused at start, and stops a running cache with a named error', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-bounds');
    for (let i = 0; i < 3; i++) await kv.put(`${p}k${i}`, 'v');
    const refused = await PrefixCache.start(kv, p, { keysMax: 2 }).catch((e) => e);
    expect(ConclaveError.is(refused, 'too-many-requests')).toBe(true);
    expect(String(refused.message)).toMatch(/keysMax/);
    const cache = await PrefixCache.start(kv, p, { keysMax: 10, bytesMax: 200 });
    const changes = cache.changes();
    await kv.put(`${p}big`, 'x'.repeat(300));
    const err = await (async () => {
      for await (const _ of changes) {
        /* until it fails */
      }
    })().catch((e) => e);
    expect(ConclaveError.is(err, 'too-many-requests')).toBe(true);
    expect(String(err.message)).toMatch(/bytesMax/);
    expect(() => cache.list()).toThrow(/bytesMax/);
    await cache.close();
  });

  it('prefix cache — converges after its connection is cut and restored while the prefix changes', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const p = prefix('pc-cut');
    await kv.put(`${p}a`, '1');
    const proxy = await backend.proxied();
    try {
      const cache = await PrefixCache.start(proxy.kv, p);
      await proxy.cut();
      await kv.put(`${p}a`, '2');
      await kv.delete(`${p}a`);
      const last = await kv.put(`${p}b`, '3');
      await proxy.restore();
      await waitFor(() => cache.revision >= last.revision, 20_000, 'the cache to catch up');
      await expectExact(kv, cache, p);
      await cache.close();
    } finally {
      await proxy.close();
    }
  }, 40_000);
  it('prefix cache — ready() retries a read that failed retryably, and gives up on one that did not', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('pc-ready-retry');
    let failRanges = 0;
    let failWith: ConclaveError | undefined;
    const flaky = overriding(kv, {
      range: (real, key, opts) => {
        if (failRanges > 0 && failWith) {
          failRanges--;
          return Promise.reject(failWith);
        }
        return real.range(key, opts);
      },
    });
    await using cache = await PrefixCache.start(flaky, p);
    const elsewhere = await kv.put(`${prefix('pc-ready-retry-other')}x`, 'y');
    failWith = new ConclaveError(ErrorCode.Unavailable, 'test: no leader');
    failRanges = 2;
    await cache.ready(elsewhere.revision, { signal: AbortSignal.timeout(10_000) });
    expect(failRanges).toBe(0);
    const again = await kv.put(`${prefix('pc-ready-retry-other')}x`, 'z');
    failWith = new ConclaveError(ErrorCode.PermissionDenied, 'test: denied');
    failRanges = 1;
    await expect(cache.ready(again.revision)).rejects.toBe(failWith);
  });
};
