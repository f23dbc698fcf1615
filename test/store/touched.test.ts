/**
 * A restored key written by puts only keeps its encoded records and gets its new ones beside them
 * (`Touched` in store/mvcc.ts): everything a store answers or writes must be what the same store
 * gives with every record decoded — reads at every revision, txns, deletes, compaction, a write
 * undone midway, watch replays, and the snapshot bytes (whole, or frozen while writes go on).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KeyRecord, type Records, Touched } from '../../backends/raft/store/mvcc.js';
import { restoreStore, snapshotStore, snapshotStoreSliced } from '../../backends/raft/store/snapshot.js';
import type { Store } from '../../backends/raft/store/store.js';
import { Store as StoreClass } from '../../backends/raft/store/store.js';
import type { KeyValue } from '../../src/types.js';
import { twice } from './txns.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const show = (kv: KeyValue) =>
  `${dec.decode(kv.key)}=${dec.decode(kv.value)}@${kv.createRevision}/${kv.modRevision}/${kv.version}/${kv.lease}`;
const keys = ['a', 'b', 'c', 'd', 'e'];

/** A store with history on every key (several records, a tombstone, a lease), as a snapshot. */
function history(): Uint8Array {
  const s = new StoreClass({ minTtlSeconds: 1 });
  const lease = s.applyLeaseGrant(7n, 10, 0).id;
  for (let i = 0; i < 3; i++)
    for (const k of keys) s.applyPut(enc.encode(k), enc.encode(`${k}${i}`), k === 'c' ? { lease } : {});
  s.applyDelete('d');
  s.applyCompact(4);
  return snapshotStore(s);
}

/** Two stores restored from `data`: one as restored (encoded keys), one with every key decoded. */
function pair(data: Uint8Array): { r: Store; ref: Store } {
  const o = { minTtlSeconds: 1, nowMs: 0 };
  const r = restoreStore(data, o);
  const ref = restoreStore(data, o);
  for (const k of ref.mvcc.index.keysArray()) ref.mvcc.records(k);
  return { r, ref };
}

/** A restored key written since by puts only: its first write alone (a record) or `Touched`. */
const isTouched = (e: Records | undefined) => e instanceof Touched || e instanceof KeyRecord;
const touchedCount = (s: Store) => s.mvcc.index.valuesArray().filter(isTouched).length;
/** Restored keys with two or more writes since (both forms must be exercised). */
const touchedTwiceCount = (s: Store) => s.mvcc.index.valuesArray().filter((e) => e instanceof Touched).length;

const opArb = fc.oneof(
  {
    arbitrary: fc.record({
      t: fc.constant('put' as const),
      k: fc.constantFrom(...keys),
      lease: fc.boolean(),
    }),
    weight: 6,
  },
  { arbitrary: fc.record({ t: fc.constant('del' as const), k: fc.constantFrom(...keys) }), weight: 1 },
  {
    arbitrary: fc.record({
      t: fc.constant('twice' as const),
      k: fc.constantFrom(...keys),
      shape: fc.nat({ max: 3 }),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ t: fc.constant('put2' as const), k: fc.constantFrom(...keys) }), weight: 2 },
  // A read of every key, at the latest revision or an older one.
  { arbitrary: fc.record({ t: fc.constant('read' as const), back: fc.nat({ max: 3 }) }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant('compact' as const), back: fc.nat({ max: 4 }) }), weight: 1 },
);
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

function apply(s: Store, op: Op, n: number): unknown {
  const value = `v${n}`;
  switch (op.t) {
    case 'put':
      return s.applyPut(
        enc.encode(op.k),
        enc.encode(value),
        op.lease ? { lease: 7n, prevKv: true } : { prevKv: true },
      );
    case 'del':
      return s.applyDelete(op.k, { prevKv: true });
    case 'twice':
      return s.applyTxn({ compare: [], success: twice(op.k, op.shape), failure: [] });
    case 'put2': {
      // Two keys in one txn, then a read at the txn's pending revision.
      const k2 = keys[(keys.indexOf(op.k) + 1) % keys.length]!;
      return s.applyTxn({
        compare: [{ key: op.k, target: 'version', result: '>', value: 0 }],
        success: [
          { type: 'put', key: op.k, value, options: { prevKv: true } },
          { type: 'put', key: k2, value: `${value}b`, options: { prevKv: true } },
          { type: 'get', key: '', options: { prefix: true } },
        ],
        failure: [{ type: 'put', key: op.k, value }],
      });
    }
    case 'read':
      return s.range('', {
        prefix: true,
        revision: op.back > 0 ? Math.max(s.mvcc.compactRev, s.revision - op.back) : 0,
      });
    case 'compact': {
      const rev = s.revision - op.back;
      if (rev > s.mvcc.compactRev) s.applyCompact(rev);
      return undefined;
    }
  }
}

/** Every kv at every revision still held, key by key (`getAt`), then as ranges at each revision. */
function reads(s: Store): string[] {
  const out: string[] = [];
  for (let rev = s.revision; rev >= Math.max(1, s.mvcc.compactRev); rev--) {
    out.push(`${rev}: ${s.range('', { prefix: true, revision: rev }).kvs.map(show).join(' ')}`);
    // Counting and limited reads make only some KeyValues (mvcc.count, scan's max): same answers.
    out.push(`${rev} count: ${s.range('', { prefix: true, revision: rev, countOnly: true }).count}`);
    for (const limit of [1, 2]) {
      const l = s.range('', { prefix: true, revision: rev, limit });
      out.push(`${rev} limit ${limit}: ${l.kvs.map(show).join(' ')} count ${l.count} more ${l.more}`);
    }
    for (const k of keys) {
      const kv = s.mvcc.getAt(k, rev);
      out.push(kv ? show(kv) : `${k} none`);
    }
  }
  return out;
}

describe('restored keys written since (touched)', () => {
  it('answers, writes and snapshots exactly as the decoded store does', async () => {
    const data = history();
    let sawTouched = false;
    let sawTouchedTwice = false;
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 25 }), fc.nat({ max: 25 }), async (ops, freezeAt) => {
        const { r, ref } = pair(data);
        for (let i = 0; i < ops.length; i++) {
          expect(apply(r, ops[i]!, i)).toEqual(apply(ref, ops[i]!, i));
          // The invariants hold whether a key is encoded, touched or decoded.
          r.checkInvariants();
          ref.checkInvariants();
          // Reads at the latest revision do not decode a touched key.
          expect(r.range('', { prefix: true }).kvs.map(show)).toEqual(
            ref.range('', { prefix: true }).kvs.map(show),
          );
          if (touchedCount(r) > 0) sawTouched = true;
          if (touchedTwiceCount(r) > 0) sawTouchedTwice = true;
          if (i === freezeAt) {
            // A snapshot frozen now, encoded while both stores keep applying the remaining ops.
            const want = snapshotStore(ref);
            let j = i + 1;
            const got = await snapshotStoreSliced(r, {
              sliceMs: 0,
              nextTurn: async () => {
                if (j < ops.length && ops[j]!.t !== 'compact') {
                  apply(r, ops[j]!, j);
                  apply(ref, ops[j]!, j);
                  j++;
                }
              },
            });
            expect(got && Buffer.from(got.data).equals(Buffer.from(want))).toBe(true);
            i = j - 1;
          }
        }
        // The same bytes, whether a key is touched or decoded.
        expect(Buffer.from(snapshotStore(r)).equals(Buffer.from(snapshotStore(ref)))).toBe(true);
        // Replays from the oldest revision held.
        const from = Math.max(1, r.mvcc.compactRev + 1);
        if (from <= r.revision) expect(r.mvcc.eventsSince(from)).toEqual(ref.mvcc.eventsSince(from));
        expect(reads(r)).toEqual(reads(ref));
        expect([...(r.leases.byId.get(7n)?.keys ?? [])].sort()).toEqual(
          [...(ref.leases.byId.get(7n)?.keys ?? [])].sort(),
        );
      }),
      { numRuns: 300 },
    );
    expect(sawTouched).toBe(true);
    expect(sawTouchedTwice).toBe(true);
  });

  it('a write undone midway that put a restored key, put it again and deleted it leaves its encoded records', () => {
    const data = history();
    const { r, ref } = pair(data);
    for (const x of [r, ref]) x.range('z', { prefix: true }); // the live keys exist (nothing decoded)
    const m = r.mvcc;
    const main = r.revision + 1;
    m.undo = [];
    const first = m.put('a', enc.encode('a'), enc.encode('x'), 0n, main, 0);
    expect(m.index.get('a')).toBeInstanceOf(KeyRecord); // the first write alone
    // Each write's event has the key as it was before the write's revision (the restored one).
    expect(show(first.prevKv!)).toBe('a=a2@2/12/3/0');
    const second = m.put('a', enc.encode('a'), enc.encode('y'), 0n, main, 1);
    expect([show(second.kv), show(second.prevKv!)]).toEqual([`a=y@2/${main}/5/0`, 'a=a2@2/12/3/0']);
    expect(m.index.get('a')).toBeInstanceOf(Touched);
    m.put('d', enc.encode('d'), enc.encode('z'), 0n, main, 2); // deleted before the restore
    m.delete('a', main, 3); // decodes 'a'
    expect(Array.isArray(m.index.get('a'))).toBe(true);
    const undo = m.undo;
    m.undo = undefined;
    for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
    expect(typeof m.index.get('a')).toBe('number');
    expect(typeof m.index.get('d')).toBe('number');
    expect(Buffer.from(snapshotStore(r)).equals(Buffer.from(data))).toBe(true);
    // And a put undone on a key touched before the write leaves it touched as it was.
    r.applyPut(enc.encode('b'), enc.encode('1'));
    ref.applyPut(enc.encode('b'), enc.encode('1'));
    m.undo = [];
    m.put('b', enc.encode('b'), enc.encode('2'), 0n, r.revision + 1, 0);
    const undo2 = m.undo;
    m.undo = undefined;
    for (let i = undo2.length - 1; i >= 0; i--) undo2[i]!();
    expect(m.index.get('b')).toBeInstanceOf(KeyRecord);
    expect(r.range('', { prefix: true }).kvs.map(show)).toEqual(
      ref.range('', { prefix: true }).kvs.map(show),
    );
    expect(reads(r)).toEqual(reads(ref));
  });

  it('a first write replaces the index entry in place only where no clone of the index shares it', () => {
    // Enough keys for a tree of several levels (32 keys a node).
    const s = new StoreClass({ minTtlSeconds: 1 });
    const names = Array.from({ length: 3000 }, (_, i) => `k${String(i).padStart(5, '0')}`);
    for (const k of names) s.applyPut(enc.encode(k), enc.encode('v'), {});
    const r = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
    const put = (k: string, v: string) => {
      r.applyPut(enc.encode(k), enc.encode(v), {});
      s.applyPut(enc.encode(k), enc.encode(v), {});
    };
    for (const k of names.filter((_, i) => i % 5 === 0)) put(k, 'w'); // owned by the index alone
    const frozen = r.mvcc.index.clone(); // what a snapshot freeze holds
    for (const k of names.filter((_, i) => i % 7 === 0)) put(k, 'x'); // shared with `frozen`
    for (const k of names.filter((_, i) => i % 3 === 0)) put(k, 'y'); // some paths copied by now
    for (const [i, k] of names.entries()) {
      expect(typeof frozen.get(k) === 'number', k).toBe(i % 5 !== 0);
      expect(isTouched(r.mvcc.index.get(k)), k).toBe(i % 5 === 0 || i % 7 === 0 || i % 3 === 0);
    }
    expect(r.range('', { prefix: true }).kvs.map(show)).toEqual(s.range('', { prefix: true }).kvs.map(show));
    expect(Buffer.from(snapshotStore(r)).equals(Buffer.from(snapshotStore(s)))).toBe(true);
  });
});
