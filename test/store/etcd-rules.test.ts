/**
 * The store's etcd 3.4 rules that the differential test (test/differential) found, pinned on the
 * store itself, with the neighbouring cases that must not change.
 */
import { describe, expect, it } from 'vitest';
import { checkTxnOps } from '../../backends/raft/limits.js';
import { Store } from '../../backends/raft/store/store.js';
import type { Op, Txn, WatchBatch } from '../../src/types.js';

const enc = new TextEncoder();

const put = (key: string): Op => ({ type: 'put', key, value: 'x' });
const del = (
  key: string,
  options: { prefix?: boolean; fromKey?: boolean; end?: string; prevKv?: boolean } = {},
): Op => ({
  type: 'delete',
  key,
  options,
});
const get = (key: string): Op => ({ type: 'get', key });
const nested = (success: Op[], failure: Op[] = []): Op => ({
  type: 'txn',
  txn: { compare: [], success, failure },
});
const txn = (success: Op[]): Txn => ({ compare: [], success, failure: [] });

function store(...keys: string[]): Store {
  const s = new Store({ minTtlSeconds: 1 });
  for (const k of keys) s.applyPut(enc.encode(k), enc.encode(`v-${k}`));
  return s;
}

describe('store — etcd 3.4 rules', () => {
  it('a countOnly read with a limit below the count reports the whole count and more = false', () => {
    const s = store('a', 'b', 'c');
    const r = s.range('', { fromKey: true, countOnly: true, limit: 1 });
    expect(r).toMatchObject({ count: 3, kvs: [], more: false });
  });

  it('a read with a limit below the count still reports more = true', () => {
    const s = store('a', 'b', 'c');
    const r = s.range('', { fromKey: true, limit: 2 });
    expect(r.count).toBe(3);
    expect(r.kvs.map((kv) => new TextDecoder().decode(kv.key))).toEqual(['a', 'b']);
    expect(r.more).toBe(true);
  });

  it('a plain put with ignoreValue of a missing key and an unknown lease fails lease-not-found', () => {
    const s = store();
    expect(() =>
      s.applyPut(enc.encode('missing'), new Uint8Array(), { ignoreValue: true, lease: 7n }),
    ).toThrow(expect.objectContaining({ code: 'lease-not-found' }));
  });

  it('a plain put with ignoreValue of a missing key and a granted lease fails key not found', () => {
    const s = store();
    s.applyLeaseGrant(7n, 60, 0);
    expect(() =>
      s.applyPut(enc.encode('missing'), new Uint8Array(), { ignoreValue: true, lease: 7n }),
    ).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
    expect(s.revision).toBe(1);
  });

  // Every case below was run against etcd 3.4 as well (v3rpc/key.go checkIntervals), with the
  // outcome asserted here.
  const duplicates: [string, Txn][] = [
    ['a nested put, then the same key put by the branch', txn([nested([put('c')]), put('c')])],
    ["a nested else-branch put, then the branch's put of that key", txn([nested([], [put('c')]), put('c')])],
    ['two nested txns putting one key', txn([nested([put('c')]), nested([put('c')])])],
    ['a nested prefix delete, then a put inside it', txn([nested([del('c', { prefix: true })]), put('cd')])],
    ['a put, then a nested delete of that key', txn([put('c'), nested([del('c')])])],
    ['a put, then a nested else-branch put of that key', txn([put('c'), nested([], [put('c')])])],
    ['a nested delete, then a nested put of that key', txn([nested([del('c')]), nested([put('c')])])],
  ];
  for (const [what, t] of duplicates) {
    it(`duplicate key: ${what}`, () => {
      const s = store('c');
      expect(() => s.applyTxn(t)).toThrow(expect.objectContaining({ code: 'duplicate-key' }));
      expect(s.revision).toBe(2);
    });
  }

  const accepted: [string, Txn][] = [
    [
      "a nested txn's then- and else-branch putting one key (only one runs)",
      txn([nested([put('c')], [put('c')])]),
    ],
    [
      "a nested txn's then-branch put and else-branch delete of one key",
      txn([nested([put('c')], [del('c')])]),
    ],
    // etcd collects a nested txn's deletes only after checking its puts against the deletes so far.
    ['a nested put, then a nested delete of that key', txn([nested([put('c')]), nested([del('c')])])],
    // etcd's interval check takes the range end "\0" literally: [key, "\0") holds no key.
    ['a fromKey delete and a put of a key it covers', txn([del('a', { fromKey: true }), put('c')])],
    [
      'a nested fromKey delete and a put of a key it covers',
      txn([nested([del('a', { fromKey: true })]), put('c')]),
    ],
    ['an inverted range delete and a put between its ends', txn([del('c', { end: 'a' }), put('b')])],
    ['a delete of every key (an empty prefix) and a put', txn([del('', { prefix: true }), put('c')])],
  ];
  for (const [what, t] of accepted) {
    it(`accepted: ${what}`, () => {
      const s = store('c');
      expect(s.applyTxn(t).succeeded).toBe(true);
    });
  }

  it('a fromKey delete runs, then the put of a key it covered: the key is created anew', () => {
    const s = store('c');
    s.applyTxn(txn([del('a', { fromKey: true }), put('c')]));
    expect(s.range('c').kvs[0]).toMatchObject({ version: 1, createRevision: 3 });
  });

  it('a nested txn may use what its parent leaves of the op limit, and no more (checked where a member proposes)', () => {
    const gets = (n: number) => Array.from({ length: n }, () => get('g'));
    expect(() => checkTxnOps(txn([...gets(99), nested(gets(28))]), 128)).not.toThrow();
    expect(() => checkTxnOps(txn([...gets(99), nested(gets(29))]), 128)).toThrow(
      expect.objectContaining({ code: 'too-many-ops' }),
    );
  });

  it("a watch sees a delete of a key the txn put before it with the key before the txn as prevKv (etcd's revision - 1)", async () => {
    const s = store('d');
    const w = s.hub.watch('', { fromKey: true, prevKv: true });
    const dec = (b?: Uint8Array) => (b ? new TextDecoder().decode(b) : undefined);
    const r = s.applyTxn(txn([put('d'), del('d', { fromKey: true, prevKv: true })]));
    // The delete's response reads inside the txn: it deleted the txn's own put.
    const deleted = r.responses[1];
    expect(deleted?.type === 'delete' && dec(deleted.prevKvs[0]?.value)).toBe('x');
    const next = await w[Symbol.asyncIterator]().next();
    const batch: WatchBatch = next.value;
    expect(batch.events.map((e) => [e.type, e.kv.modRevision, dec(e.prevKv?.value)])).toEqual([
      ['put', 3, 'v-d'],
      ['delete', 3, 'v-d'],
    ]);
    await w.close();
  });

  it("a nested txn's compare sees the store before the txn, so the branch it takes ignores the txn's earlier writes", () => {
    const s = store('old');
    const r = s.applyTxn(
      txn([
        put('n'),
        del('old'),
        {
          type: 'txn',
          txn: {
            compare: [
              { key: 'n', target: 'version', result: '=', value: 0 },
              { key: 'old', target: 'version', result: '=', value: 1 },
            ],
            success: [put('then')],
            failure: [put('else')],
          },
        },
        // A read in the txn still sees its earlier writes.
        get('n'),
      ]),
    );
    const inner = r.responses[2];
    expect(inner?.type === 'txn' && inner.succeeded).toBe(true);
    expect(s.range('then').count).toBe(1);
    expect(s.range('else').count).toBe(0);
    const read = r.responses[3];
    expect(read?.type === 'get' && read.count).toBe(1);
  });

  describe('txn checks run before any op, puts before reads (etcd checkRequests)', () => {
    const future = (key: string): Op => ({ type: 'get', key, options: { revision: 100 } });
    const leased = (key: string, lease: bigint): Op => ({ type: 'put', key, value: 'x', options: { lease } });
    const keep = (key: string): Op => ({ type: 'put', key, value: '', options: { ignoreValue: true } });
    const fails = (t: Txn, code: string) => {
      const s = store('c');
      expect(() => s.applyTxn(t)).toThrow(expect.objectContaining({ code }));
      expect(s.revision).toBe(2);
    };

    it('a future read before a put with an unknown lease fails lease-not-found', () =>
      fails(txn([future('c'), leased('d', 9n)]), 'lease-not-found'));
    it("a future read before a nested txn's put with an unknown lease fails lease-not-found", () =>
      fails(txn([future('c'), nested([leased('d', 9n)])]), 'lease-not-found'));
    it('a future read before an ignoreValue put of a missing key fails key not found', () =>
      fails(txn([future('c'), keep('missing')]), 'invalid-argument'));
    it('puts are checked in order: an unknown lease first', () =>
      fails(txn([leased('d', 9n), keep('missing')]), 'lease-not-found'));
    it('puts are checked in order: a missing key first', () =>
      fails(txn([keep('missing'), leased('d', 9n)]), 'invalid-argument'));
    it("a put in the branch a nested txn does not take is not checked: the read's error stands", () =>
      fails(txn([future('c'), nested([], [leased('d', 9n)])]), 'future-revision'));
    // etcd 3.4 passes the check (the key exists before the txn) and then panics applying the put
    // ("unexpected error during txn"); the embedded store refuses the txn and leaves no trace.
    it('an ignoreValue put of a key a fromKey delete before it removed fails key not found', () =>
      fails(txn([del('a', { fromKey: true }), keep('c')]), 'invalid-argument'));
  });
});
