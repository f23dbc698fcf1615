/**
 * namespace(): key layout (the same bytes as etcd's Go clientv3/namespace), ranges that never leave
 * the namespace, txn/watch/lease translation, and a differential property: a random sequence of
 * operations through a view gives the same results as the same operations written by hand against
 * the raw store with the prefix, minus the prefix.
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalKV } from '../../backends/raft/store/local-kv.js';
import { ConclaveError } from '../../src/errors.js';
import { concatBytes, prefixEnd, toBytes, toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { namespace } from '../../src/namespace.js';
import type { KeyValue, OpResponse, TxnResult, Watch, WatchBatch } from '../../src/types.js';
import { collect } from '../conformance/util.js';

const keysOf = (kvs: KeyValue[]) => kvs.map((k) => toText(k.key));

/** Every batch a watch delivers until it has been quiet for `quietMs` (or ended / failed). */
async function drain(w: Watch, quietMs = 200): Promise<{ batches: WatchBatch[]; error?: unknown }> {
  const it = w[Symbol.asyncIterator]();
  const batches: WatchBatch[] = [];
  try {
    for (;;) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        it.next(),
        new Promise<'quiet'>((res) => (timer = setTimeout(() => res('quiet'), quietMs))),
      ]);
      clearTimeout(timer);
      if (r === 'quiet' || r.done) return { batches };
      batches.push(r.value);
    }
  } catch (error) {
    return { batches, error };
  } finally {
    await w.close();
  }
}

let raw: LocalKV;
beforeEach(() => {
  raw = new LocalKV({ minTtlSeconds: 1, expiryCheckMs: 50 });
});
afterEach(async () => {
  await raw.close();
});

/** Keys around the namespace `app-a/` in byte order: just before, just after, far away. */
async function neighbours(kv: KV): Promise<void> {
  for (const k of ['app-a', 'app-a.', 'app-a0', 'app-b/x', 'zzz', 'a']) await kv.put(k, 'outside');
}

describe('namespace', () => {
  it('writes key k as prefix + k, byte for byte, and reads it back without the prefix', async () => {
    const ns = namespace(raw, 'app-a/');
    await ns.put('config/x', 'v1');
    const stored = await raw.get('app-a/config/x');
    expect(stored && toText(stored.value)).toBe('v1');
    // Written raw (as a Go client through namespace.NewKV, or etcdctl with the full key), read through the view.
    await raw.put('app-a/from-go', 'g');
    const got = await ns.get('from-go');
    expect(got && toText(got.key)).toBe('from-go');
    expect(got && toText(got.value)).toBe('g');
    // Binary prefixes and keys are bytes, not text.
    const bin = namespace(raw, new Uint8Array([0, 0xfe]));
    await bin.put(new Uint8Array([1]), 'b');
    expect((await raw.get(new Uint8Array([0, 0xfe, 1])))?.value).toEqual(toBytes('b'));
  });

  it('prefix, fromKey and "\\0" ranges stay inside the namespace', async () => {
    await neighbours(raw);
    const ns = namespace(raw, 'app-a/');
    for (const k of ['a', 'b', 'c/1', 'c/2']) await ns.put(k, k);
    expect(keysOf((await ns.range('', { prefix: true })).kvs)).toEqual(['a', 'b', 'c/1', 'c/2']);
    expect(keysOf((await ns.range('', { fromKey: true })).kvs)).toEqual(['a', 'b', 'c/1', 'c/2']);
    expect(keysOf((await ns.range('b', { fromKey: true })).kvs)).toEqual(['b', 'c/1', 'c/2']);
    expect(keysOf((await ns.range('b', { end: '\0' })).kvs)).toEqual(['b', 'c/1', 'c/2']);
    expect(keysOf((await ns.range('c/', { prefix: true })).kvs)).toEqual(['c/1', 'c/2']);
    expect(keysOf((await ns.range('a', { end: 'c/2' })).kvs)).toEqual(['a', 'b', 'c/1']);
    expect((await ns.range('', { fromKey: true, countOnly: true })).count).toBe(4);
    // A fromKey delete removes the namespace's keys from there on, nothing outside.
    const d = await ns.delete('b', { fromKey: true, prevKv: true });
    expect(d.deleted).toBe(3);
    expect(keysOf(d.prevKvs)).toEqual(['b', 'c/1', 'c/2']);
    expect(keysOf((await raw.range('', { fromKey: true })).kvs)).toEqual([
      'a',
      'app-a',
      'app-a.',
      'app-a/a',
      'app-a0',
      'app-b/x',
      'zzz',
    ]);
  });

  it('a prefix ending in 0xff bytes ends the namespace at GetPrefixRangeEnd (the next key outside is not taken in)', async () => {
    const pfx = new Uint8Array([0x61, 0xff]);
    const ns = namespace(raw, pfx);
    await raw.put(new Uint8Array([0x62]), 'outside'); // "b": Go's wrapped end "b\0" would include it
    await raw.put(new Uint8Array([0x61, 0xfe, 0xff]), 'outside');
    await ns.put('k', 'inside');
    expect(keysOf((await ns.range('', { fromKey: true })).kvs)).toEqual(['k']);
    expect(keysOf((await ns.range('', { prefix: true })).kvs)).toEqual(['k']);
    // An all-0xff prefix: every key from prefix + k on is inside.
    const top = namespace(raw, new Uint8Array([0xff]));
    await top.put('z', '1');
    expect(keysOf((await top.range('', { fromKey: true })).kvs)).toEqual(['z']);
    expect(Array.from(prefixEnd(new Uint8Array([0xff])))).toEqual([0]);
  });

  it('refuses an empty single key (it would address the prefix itself) and an empty prefix', async () => {
    const ns = namespace(raw, 'app-a/');
    for (const call of [
      () => ns.get(''),
      () => ns.put('', 'v'),
      () => ns.range(''),
      () => ns.delete(''),
      () => ns.txn({ compare: [], success: [{ type: 'put', key: '', value: 'v' }], failure: [] }),
      () => ns.txn({ compare: [], success: [{ type: 'get', key: '' }], failure: [] }),
    ]) {
      await expect(call()).rejects.toSatisfy((e) => ConclaveError.is(e, 'invalid-argument'));
    }
    expect(() => ns.watch('')).toThrow(/key/);
    expect(() => namespace(raw, '')).toThrow(/must not be empty/);
    expect(await raw.get('app-a/')).toBeUndefined();
  });

  it('translates txn compares (incl. ranges) and nested ops, and strips every result', async () => {
    await neighbours(raw);
    const ns = namespace(raw, 'app-a/');
    const p = await ns.put('x', '1');
    await ns.put('w', '1');
    // A range compare over the whole namespace: no key in it has version > 1 (neighbours outside do not count).
    await raw.put('app-a0', 'again');
    const t = await ns.txn({
      compare: [
        { key: 'x', target: 'create', result: '=', value: p.revision },
        { key: '', prefix: true, target: 'version', result: '<', value: 2 },
      ],
      success: [
        { type: 'put', key: 'x', value: '2', options: { prevKv: true } },
        { type: 'get', key: '', options: { fromKey: true } },
        {
          type: 'txn',
          txn: {
            compare: [{ key: 'y', target: 'version', result: '=', value: 0 }],
            success: [
              { type: 'put', key: 'y', value: 'y' },
              { type: 'delete', key: 'w', options: { prevKv: true } },
            ],
            failure: [],
          },
        },
      ],
      failure: [],
    });
    expect(t.succeeded).toBe(true);
    const [put, get, nested] = t.responses as [OpResponse, OpResponse, OpResponse];
    expect(put.type === 'put' && put.prevKv && toText(put.prevKv.key)).toBe('x');
    expect(get.type === 'get' && keysOf(get.kvs)).toEqual(['w', 'x']);
    const inner = (nested as { type: 'txn' } & TxnResult).responses[1];
    expect(inner?.type === 'delete' && keysOf(inner.prevKvs)).toEqual(['w']);
    expect(keysOf((await ns.range('', { prefix: true })).kvs)).toEqual(['x', 'y']);
    expect((await raw.get('app-a/y')) !== undefined).toBe(true);
    // The compare is on the namespaced key: the same txn on a key only present outside fails.
    const f = await ns.txn({
      compare: [{ key: 'zzz', target: 'version', result: '>', value: 0 }],
      success: [],
      failure: [],
    });
    expect(f.succeeded).toBe(false);
  });

  it('watches (prefix, fromKey, prev kv) deliver only the namespace, stripped', async () => {
    const ns = namespace(raw, 'app-a/');
    const wp = ns.watch('', { prefix: true, prevKv: true });
    const wf = ns.watch('m', { fromKey: true });
    await Promise.all([wp.ready, wf.ready]);
    await raw.put('app-b/x', 'outside');
    await raw.put('app-a0', 'outside');
    await ns.put('a', '1');
    await ns.put('a', '2');
    await ns.put('n', '1');
    await ns.delete('a');
    const events = (bs: WatchBatch[]) => bs.flatMap((b) => b.events);
    const gp = await collect(wp, (bs) => events(bs).length >= 4);
    expect(
      events(gp).map((e) => `${e.type} ${toText(e.kv.key)} ${e.prevKv ? toText(e.prevKv.key) : '-'}`),
    ).toEqual(['put a -', 'put a a', 'put n -', 'delete a a']);
    const gf = await collect(wf, (bs) => events(bs).length >= 1);
    expect(events(gf).map((e) => toText(e.kv.key))).toEqual(['n']);
    await wp.close();
    await wf.close();
  });

  it('a watch from a compacted revision fails compacted with the compact revision, as unwrapped', async () => {
    const ns = namespace(raw, 'app-a/');
    const r1 = await ns.put('k', '1');
    const r2 = await ns.put('k', '2');
    await ns.compact(r2.revision);
    const w = ns.watch('k', { startRevision: r1.revision });
    const err = await collect(w, () => false, 3000).catch((e) => e);
    expect(ConclaveError.is(err, 'compacted')).toBe(true);
    expect((err as ConclaveError).compactRevision).toBe(r2.revision);
    // From the compact revision on it replays, stripped.
    const w2 = ns.watch('k', { startRevision: r2.revision });
    const got = await collect(w2, (bs) => bs.some((b) => b.events.length > 0));
    expect(toText(got[0]!.events[0]!.kv.key)).toBe('k');
    await w2.close();
  });

  it('lease timeToLive lists only the lease keys inside the namespace, stripped', async () => {
    const ns = namespace(raw, 'app-a/');
    const l = await ns.lease.grant(30);
    await ns.put('held', 'v', { lease: l.id });
    await raw.put('elsewhere', 'v', { lease: l.id });
    const t = await ns.lease.timeToLive(l.id, { keys: true });
    expect(t.keys.map(toText)).toEqual(['held']);
    const tr = await raw.lease.timeToLive(l.id, { keys: true });
    expect(tr.keys.map(toText).sort()).toEqual(['app-a/held', 'elsewhere']);
    await ns.lease.revoke(l.id);
    expect(await ns.get('held')).toBeUndefined();
  });

  it('nested views are the concatenated prefix', async () => {
    const ab = namespace(namespace(raw, 'a/'), 'b/');
    await ab.put('k', 'v');
    expect(await raw.get('a/b/k')).toBeDefined();
    expect(keysOf((await ab.range('', { fromKey: true })).kvs)).toEqual(['k']);
  });

  it('random operations through a view equal the same operations on the raw store with the prefix, minus the prefix', async () => {
    const pfx = toBytes('ns/');
    const end = prefixEnd(pfx);
    const P = (k: string) => concatBytes(pfx, toBytes(k));
    const key = fc.constantFrom('a', 'b', 'b0', 'c/1', 'c/2', 'd');
    const op = fc.oneof(
      fc.record({ t: fc.constant('put' as const), k: key, v: fc.string({ maxLength: 3 }) }),
      fc.record({ t: fc.constant('del' as const), k: key, sel: fc.constantFrom('one', 'prefix', 'from') }),
      fc.record({ t: fc.constant('range' as const), k: key, sel: fc.constantFrom('one', 'prefix', 'from') }),
      fc.record({ t: fc.constant('cas' as const), k: key, v: fc.string({ maxLength: 3 }) }),
    );
    const norm = (x: unknown): unknown =>
      JSON.parse(
        JSON.stringify(x, (_k, v) =>
          v instanceof Uint8Array ? toText(v) : typeof v === 'bigint' ? v.toString() : v,
        ),
      );
    const strip = (x: unknown): unknown => JSON.parse(JSON.stringify(norm(x)).replaceAll('"ns/', '"'));
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
        const a = new LocalKV({ minTtlSeconds: 1 });
        const b = new LocalKV({ minTtlSeconds: 1 });
        try {
          for (const s of [a, b]) await neighbours(s);
          const view = namespace(b, pfx);
          for (const o of ops) {
            const sel = 'sel' in o ? o.sel : 'one';
            const rawSel = sel === 'prefix' ? { end: prefixEnd(P(o.k)) } : sel === 'from' ? { end } : {};
            const viewSel = sel === 'prefix' ? { prefix: true } : sel === 'from' ? { fromKey: true } : {};
            let ra: unknown;
            let rb: unknown;
            if (o.t === 'put') {
              ra = await a.put(P(o.k), o.v, { prevKv: true });
              rb = await view.put(o.k, o.v, { prevKv: true });
            } else if (o.t === 'del') {
              ra = await a.delete(P(o.k), { ...rawSel, prevKv: true });
              rb = await view.delete(o.k, { ...viewSel, prevKv: true });
            } else if (o.t === 'range') {
              ra = await a.range(P(o.k), rawSel);
              rb = await view.range(o.k, viewSel);
            } else {
              const txn = (k: (s: string) => Uint8Array | string) => ({
                compare: [{ key: k(o.k), target: 'version' as const, result: '>' as const, value: 0 }],
                success: [{ type: 'put' as const, key: k(o.k), value: o.v, options: { prevKv: true } }],
                failure: [{ type: 'get' as const, key: k(''), options: { end: '\0' } }],
              });
              ra = await a.txn({ ...txn(P), failure: [{ type: 'get', key: pfx, options: { end } }] });
              rb = await view.txn(txn((s) => (s === '' ? '\0' : s)));
            }
            expect(strip(rb)).toEqual(strip(ra));
          }
        } finally {
          await a.close();
          await b.close();
        }
      }),
      { numRuns: 40 },
    );
  });
  it('watches through a view equal raw watches of the prefixed range, minus the prefix, including below and at a compaction', async () => {
    const pfx = toBytes('ns/');
    const P = (k: string) => concatBytes(pfx, toBytes(k));
    const key = fc.constantFrom('a', 'b', 'c/1', 'c/2');
    const op = fc.oneof(
      fc.record({ t: fc.constant('put' as const), k: key, v: fc.string({ maxLength: 3 }) }),
      fc.record({ t: fc.constant('del' as const), k: key }),
    );
    const norm = (x: unknown): unknown =>
      JSON.parse(
        JSON.stringify(x, (_k, v) =>
          v instanceof Uint8Array ? toText(v) : typeof v === 'bigint' ? v.toString() : v,
        ).replaceAll('"ns/', '"'),
      );
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { minLength: 2, maxLength: 15 }),
        fc.nat(),
        fc.constantFrom('one', 'prefix', 'from'),
        async (ops, cut, sel) => {
          const a = new LocalKV({ minTtlSeconds: 1 });
          const b = new LocalKV({ minTtlSeconds: 1 });
          try {
            for (const s of [a, b]) await neighbours(s);
            const view = namespace(b, pfx);
            const revs: number[] = [];
            for (const o of ops) {
              if (o.t === 'put') {
                revs.push((await a.put(P(o.k), o.v)).revision);
                await view.put(o.k, o.v);
              } else {
                revs.push((await a.delete(P(o.k))).revision);
                await view.delete(o.k);
              }
            }
            // Compact both at the same revision (a delete of an absent key leaves the revision alone).
            const at = revs[cut % revs.length]!;
            await a.compact(at);
            await b.compact(at);
            const rawSel =
              sel === 'prefix' ? { end: prefixEnd(P('c/')) } : sel === 'from' ? { end: prefixEnd(pfx) } : {};
            const viewSel = sel === 'prefix' ? { prefix: true } : sel === 'from' ? { fromKey: true } : {};
            const rawKey = sel === 'prefix' ? P('c/') : sel === 'from' ? P('b') : P('a');
            const viewKey = sel === 'prefix' ? 'c/' : sel === 'from' ? 'b' : 'a';
            for (const start of [at - 1, at]) {
              if (start < 1) continue;
              const ra = await drain(a.watch(rawKey, { ...rawSel, startRevision: start, prevKv: true }));
              const rb = await drain(view.watch(viewKey, { ...viewSel, startRevision: start, prevKv: true }));
              expect(norm(rb.batches.flatMap((x) => x.events))).toEqual(
                norm(ra.batches.flatMap((x) => x.events)),
              );
              expect(ConclaveError.is(rb.error, 'compacted')).toBe(ConclaveError.is(ra.error, 'compacted'));
              if (ConclaveError.is(ra.error))
                expect((rb.error as ConclaveError).compactRevision).toBe(ra.error.compactRevision);
            }
          } finally {
            await a.close();
            await b.close();
          }
        },
      ),
      { numRuns: 15 },
    );
  });
});
