/**
 * The MVCC key space on its own: one record per write ({main, sub}, a txn writing one key twice
 * keeps both), reads at any revision, and the index of live keys that reads at the latest revision
 * walk (it must always give what a walk of the whole index gives).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';
import type { KeyValue, Op } from '../../src/types.js';
import { twice } from './txns.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** What a walk of the whole index gives at `rev` (every key, deleted ones too): the reference. */
function fullScan(s: Store, rev: number): string[] {
  const out: string[] = [];
  for (const k of s.mvcc.index.keysArray()) {
    const kv = s.mvcc.getAt(k, rev);
    if (kv) out.push(show(kv));
  }
  return out;
}

const show = (kv: KeyValue) =>
  `${dec.decode(kv.key)}=${dec.decode(kv.value)}@${kv.createRevision}/${kv.modRevision}/${kv.version}`;

/** Every kv of a range, as strings. */
const shown = (kvs: readonly KeyValue[]) => kvs.map(show);

const keyArb = fc.constantFrom('a', 'ab', 'b', 'c', 'd');
const opArb = fc.oneof(
  { arbitrary: fc.record({ t: fc.constant('put' as const), k: keyArb }), weight: 4 },
  {
    arbitrary: fc.record({ t: fc.constant('del' as const), k: keyArb, how: fc.constantFrom(0, 1, 2) }),
    weight: 3,
  },
  {
    arbitrary: fc.record({ t: fc.constant('twice' as const), k: keyArb, shape: fc.nat({ max: 3 }) }),
    weight: 2,
  },
  // A txn that writes, then reads a range at its own pending revision (the live keys mid-write).
  { arbitrary: fc.record({ t: fc.constant('txnRead' as const), k: keyArb }), weight: 2 },
  { arbitrary: fc.record({ t: fc.constant('compact' as const), back: fc.nat({ max: 3 }) }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant('snapshot' as const) }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant('revoke' as const) }), weight: 1 },
);
type OpArb = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

describe('mvcc records and live keys', () => {
  it('a read at the latest revision (live keys) always equals a walk of the whole index, through writes, txns, compactions, revocations and restores', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), fc.boolean(), (ops, readFirst) => {
        let s = new Store({ minTtlSeconds: 1 });
        // Whether the live keys exist before the first write, or get built later (mid-txn even).
        if (readFirst) s.range('', { prefix: true });
        let lease = 0n;
        let n = 0;
        const check = () => {
          const rev = s.revision;
          expect(shown(s.range('', { prefix: true }).kvs)).toEqual(fullScan(s, rev));
          expect(shown(s.range('b', { end: 'd' }).kvs)).toEqual(
            fullScan(s, rev).filter((x) => x >= 'b' && x < 'd'),
          );
          expect(shown(s.range('a', { prefix: true }).kvs)).toEqual(
            fullScan(s, rev).filter((x) => x.startsWith('a')),
          );
          if (rev > 1 && rev - 1 >= s.mvcc.compactRev) {
            expect(shown(s.range('', { prefix: true, revision: rev - 1 }).kvs)).toEqual(fullScan(s, rev - 1));
          }
        };
        for (const op of ops as OpArb[]) {
          n++;
          if (op.t === 'put') {
            if (lease === 0n && n % 3 === 0) lease = s.applyLeaseGrant(BigInt(100 + n), 10, 0).id;
            s.applyPut(enc.encode(op.k), enc.encode(`v${n}`), n % 3 === 0 ? { lease } : {});
          } else if (op.t === 'del') {
            s.applyDelete(op.k, op.how === 0 ? {} : op.how === 1 ? { prefix: true } : { fromKey: true });
          } else if (op.t === 'twice') {
            s.applyTxn({ compare: [], success: twice(op.k, op.shape), failure: [] });
          } else if (op.t === 'txnRead') {
            const ops: Op[] = [
              { type: 'delete', key: op.k, options: { fromKey: true } },
              { type: 'put', key: op.k, value: `r${n}` },
              { type: 'get', key: '', options: { prefix: true } },
            ];
            const t = s.applyTxn({ compare: [], success: ops, failure: [] });
            const got = t.responses[2];
            // The txn's own read sees its writes: what the store holds once it committed.
            expect(got?.type === 'get' && shown(got.kvs)).toEqual(fullScan(s, s.revision));
          } else if (op.t === 'compact') {
            const rev = s.revision - op.back;
            if (rev > s.mvcc.compactRev) s.applyCompact(rev);
          } else if (op.t === 'revoke' && lease !== 0n) {
            s.applyLeaseRevoke(lease);
            lease = 0n;
          } else if (op.t === 'snapshot') {
            s = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
            lease = 0n;
            for (const id of s.leases.byId.keys()) lease = id;
          }
          check();
        }
      }),
      { numRuns: 300 },
    );
  });

  it('a write undone midway leaves the records and the live keys as they were (built before it or during it)', () => {
    for (const buildDuring of [false, true]) {
      const s = new Store({ minTtlSeconds: 1 });
      for (const k of ['a', 'b', 'c']) s.applyPut(enc.encode(k), enc.encode('1'));
      s.applyDelete('b');
      const restored = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
      for (const x of [s, restored]) {
        if (!buildDuring) x.range('', { prefix: true });
        const before = shown(x.range('', { prefix: true }).kvs);
        const m = x.mvcc;
        const main = x.revision + 1;
        m.undo = [];
        let sub = 0;
        m.put('d', enc.encode('d'), enc.encode('2'), 0n, main, sub++); // a new key
        m.put('b', enc.encode('b'), enc.encode('2'), 0n, main, sub++); // a deleted one, again
        m.delete('a', main, sub++); // a live one
        m.delete('d', main, sub++); // the new one, deleted in the same write
        // A read at the pending revision (it builds the live keys when `buildDuring`).
        const mid: string[] = [];
        m.scan('', '\u0000', main, (_k, kv) => mid.push(show(kv)));
        expect(mid).toEqual([`b=2@${main}/${main}/1`, 'c=1@4/4/1']);
        const undo = m.undo;
        m.undo = undefined;
        for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
        expect(shown(x.range('', { prefix: true }).kvs)).toEqual(before);
        expect(shown(x.range('', { prefix: true }).kvs)).toEqual(fullScan(x, x.revision));
        expect(x.mvcc.records('d')).toBeUndefined();
        // The next write still works on the restored state.
        x.applyPut(enc.encode('d'), enc.encode('3'));
        expect(shown(x.range('', { prefix: true }).kvs)).toEqual(fullScan(x, x.revision));
      }
    }
  });

  it('an index replaced from outside (a copy-on-write clone, say) is noticed: the live keys are rebuilt from it', () => {
    const s = new Store({ minTtlSeconds: 1 });
    for (const k of ['a', 'b']) s.applyPut(enc.encode(k), enc.encode('1'));
    expect(shown(s.range('', { prefix: true }).kvs)).toEqual(['a=1@2/2/1', 'b=1@3/3/1']);
    const original = s.mvcc.index;
    s.mvcc.index = original.clone();
    s.applyPut(enc.encode('c'), enc.encode('1'));
    s.applyDelete('a');
    expect(original.has('c')).toBe(false);
    expect(shown(s.range('', { prefix: true }).kvs)).toEqual(['b=1@3/3/1', 'c=1@4/4/1']);
    expect(shown(s.range('', { prefix: true }).kvs)).toEqual(fullScan(s, s.revision));
  });

  it('a txn writing one key twice keeps both records at its revision, in sub order; reads see the last', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('k'), enc.encode('old'));
    const { revision } = s.applyTxn({ compare: [], success: twice('k', 2), failure: [] });
    const recs = s.mvcc.records('k')!;
    expect(recs.map((r) => [r.main, r.sub, r.kv ? dec.decode(r.kv.value) : null])).toEqual([
      [2, 0, 'old'],
      [revision, 0, null],
      [revision, 1, 't2'],
      [revision, 2, null],
    ]);
    expect(s.range('k').kvs).toEqual([]);
    expect(shown(s.range('k', { revision: revision - 1 }).kvs)).toEqual(['k=old@2/2/1']);
    // Compaction at that revision keeps what etcd keeps: the last record, unless a tombstone.
    s.applyCompact(revision);
    expect(s.mvcc.records('k')).toBeUndefined();
  });

  it('compaction at a revision with two writes of a key keeps only the last one', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('k'), enc.encode('old'));
    const { revision } = s.applyTxn({ compare: [], success: twice('k', 1), failure: [] });
    s.applyCompact(revision);
    expect(s.mvcc.records('k')!.map((r) => [r.main, r.sub, r.kv?.version])).toEqual([[revision, 1, 1]]);
    expect(shown(s.range('k').kvs)).toEqual([`k=t1@${revision}/${revision}/1`]);
  });
});
