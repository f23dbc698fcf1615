import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';
import { twice } from './txns.js';

const enc = new TextEncoder();
const opArb = fc.oneof(
  fc.record({
    t: fc.constant('put' as const),
    k: fc.constantFrom('a', 'b', 'c', 'd', 'ab'),
    v: fc.string({ maxLength: 4 }),
    lease: fc.boolean(),
  }),
  fc.record({
    t: fc.constant('del' as const),
    k: fc.constantFrom('a', 'b', 'c', 'ab'),
    prefix: fc.boolean(),
  }),
  fc.record({ t: fc.constant('compact' as const) }),
  fc.record({ t: fc.constant('revoke' as const) }),
  // A txn that writes one key two or three times (what etcd's duplicate-key check lets through):
  // one record per write, all at the txn's revision (`twice` in applyOp).
  fc.record({
    t: fc.constant('twice' as const),
    k: fc.constantFrom('a', 'b', 'c', 'ab'),
    shape: fc.constantFrom(0, 1, 2, 3),
  }),
);

describe('store snapshot', () => {
  it('restoring a snapshot gives a store that answers every read at every revision identically', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const s = new Store({ minTtlSeconds: 1 });
        const st = { lease: 0n, next: 100n };
        for (const op of ops) applyOp(s, op, st);
        s.appliedIndex = 77;
        const r = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
        expect(r.revision).toBe(s.revision);
        expect(r.appliedIndex).toBe(77);
        expect(r.mvcc.compactRev).toBe(s.mvcc.compactRev);
        for (let rev = Math.max(1, s.mvcc.compactRev); rev <= s.revision; rev++) {
          expect(r.range('', { prefix: true, revision: rev })).toEqual(
            s.range('', { prefix: true, revision: rev }),
          );
        }
        expect([...r.leases.byId.keys()]).toEqual([...s.leases.byId.keys()]);
        for (const [id, l] of s.leases.byId) expect([...r.leases.byId.get(id)!.keys]).toEqual([...l.keys]);
      }),
      { numRuns: 200 },
    );
  });

  it('a corrupt snapshot is refused with a clear error: old JSON format, unknown format, every truncation', () => {
    const o = { minTtlSeconds: 1, nowMs: 0 };
    expect(() => restoreStore(enc.encode('{"v":1,"keys":[]}'), o)).toThrow(
      /format 1 \(JSON\).*empty directory/,
    );
    expect(() => restoreStore(new Uint8Array([9, 0, 0]), o)).toThrow(/unknown format version 9/);
    const s = new Store({ minTtlSeconds: 1 });
    const l = s.applyLeaseGrant(5n, 10, 0).id;
    s.applyPut(enc.encode('a'), enc.encode('1'), { lease: l });
    s.applyPut(enc.encode('b'), enc.encode('22'), {});
    s.applyDelete('b');
    const data = snapshotStore(s);
    for (let n = 0; n < data.length; n++) {
      expect(() => restoreStore(data.subarray(0, n), o), `truncated to ${n}`).toThrow(
        expect.objectContaining({ code: 'corrupt' }),
      );
    }
    const longer = new Uint8Array(data.length + 1);
    longer.set(data);
    expect(() => restoreStore(longer, o)).toThrow(/bytes after the snapshot/);
  });

  it('a restored store decodes nothing up front: snapshotting it again gives the same bytes', () => {
    const s = new Store({ minTtlSeconds: 1 });
    const l = s.applyLeaseGrant(5n, 10, 0).id;
    for (let i = 0; i < 50; i++)
      s.applyPut(enc.encode(`k${i % 20}`), enc.encode(`v${i}`), i % 3 ? {} : { lease: l });
    s.applyDelete('k1');
    s.applyCompact(10);
    s.appliedIndex = 9;
    const data = snapshotStore(s);
    const r = restoreStore(data, { minTtlSeconds: 1, nowMs: 0 });
    expect(snapshotStore(r)).toEqual(data);
    // Values are views into the snapshot buffer (no copy per value): the store keeps it as its data.
    expect(r.range('k2').kvs[0]!.value.buffer).toBe(data.buffer);
  });
});

describe('store snapshot install', () => {
  it('installing a newer snapshot resyncs a live watcher: it receives every revision it missed, once, in order', async () => {
    const behind = new Store({ minTtlSeconds: 1 });
    behind.applyPut(enc.encode('w/a'), enc.encode('1'), {});
    const w = behind.hub.watch('w/', { prefix: true, startRevision: behind.revision + 1, prevKv: true });
    const ahead = restoreStore(snapshotStore(behind), { minTtlSeconds: 1, nowMs: 0 });
    ahead.applyPut(enc.encode('w/b'), enc.encode('2'), {});
    ahead.applyTxn({
      compare: [],
      failure: [],
      success: [
        { type: 'put', key: 'w/a', value: '3' },
        { type: 'delete', key: 'w/b' },
      ],
    });
    const restored = restoreStore(snapshotStore(ahead), { minTtlSeconds: 1, nowMs: 0 });
    behind.replaceState(restored);
    expect(behind.revision).toBe(ahead.revision);
    const got: string[] = [];
    for await (const b of w) {
      for (const e of b.events)
        got.push(`${b.revision}:${e.type}:${new TextDecoder().decode(e.kv.key)}:${e.prevKv ? 'prev' : '-'}`);
      if (b.revision === ahead.revision) break;
    }
    expect(got).toEqual(['3:put:w/b:-', '4:put:w/a:prev', '4:delete:w/b:prev']);
  });

  it('installing a snapshot compacted past a watcher ends it with compacted and the compact revision', async () => {
    const behind = new Store({ minTtlSeconds: 1 });
    behind.applyPut(enc.encode('x'), enc.encode('1'), {});
    const w = behind.hub.watch('x', { startRevision: 2 });
    const ahead = restoreStore(snapshotStore(behind), { minTtlSeconds: 1, nowMs: 0 });
    for (let i = 0; i < 5; i++) ahead.applyPut(enc.encode('x'), enc.encode(`v${i}`), {});
    ahead.applyCompact(5);
    behind.replaceState(restoreStore(snapshotStore(ahead), { minTtlSeconds: 1, nowMs: 0 }));
    await expect(
      (async () => {
        for await (const _ of w) {
          // no events expected before the error
        }
      })(),
    ).rejects.toMatchObject({ code: 'compacted', compactRevision: 5 });
  });
});

/** Applies one generated op to a store (lease ids are deterministic, so two stores stay in step). */
function applyOp(s: Store, op: Arb, st: { lease: bigint; next: bigint }): void {
  if (op.t === 'put') {
    if (op.lease && st.lease === 0n) st.lease = s.applyLeaseGrant(st.next++, 10, 0).id;
    s.applyPut(enc.encode(op.k), enc.encode(op.v), op.lease ? { lease: st.lease } : {});
  } else if (op.t === 'del') s.applyDelete(op.k, op.prefix ? { prefix: true } : {});
  else if (op.t === 'compact' && s.revision > s.mvcc.compactRev + 1) s.applyCompact(s.revision - 1);
  else if (op.t === 'revoke' && st.lease !== 0n) {
    s.applyLeaseRevoke(st.lease);
    st.lease = 0n;
  } else if (op.t === 'twice') s.applyTxn({ compare: [], success: twice(op.k, op.shape), failure: [] });
}
type Arb = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

/** Every key's MVCC records, decoded. */
const records = (s: Store) =>
  s.mvcc.index.keysArray().map((k) => [k, s.mvcc.records(k)!.map((r) => [r.main, r.sub, r.kv])]);

/** Every event a watch from `rev` replays, up to the store's current revision, as strings. */
async function replay(s: Store, rev: number): Promise<string[]> {
  const w = s.hub.watch('', { prefix: true, startRevision: rev, prevKv: true });
  const out: string[] = [];
  // A put on a sentinel key ends the replay at a known revision.
  s.applyPut(enc.encode('~end'), enc.encode(''), {});
  const end = s.revision;
  const dec = new TextDecoder();
  for await (const b of w) {
    for (const e of b.events) {
      const kv = e.kv;
      out.push(
        `${b.revision}:${e.type}:${dec.decode(kv.key)}=${dec.decode(kv.value)}@${kv.createRevision}/${kv.modRevision}/${kv.version}/${kv.lease}` +
          (e.prevKv ? ` prev ${dec.decode(e.prevKv.value)}@${e.prevKv.modRevision}` : ''),
      );
    }
    if (b.revision >= end) break;
  }
  return out;
}

describe('store snapshot restore (decoded on demand)', () => {
  it('a restored store stays identical to the original through further writes, deletes, compactions, revocations and a second snapshot; watches replay the same events', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArb, { maxLength: 30 }),
        fc.array(opArb, { maxLength: 30 }),
        fc.boolean(),
        async (before, after, watched) => {
          const s = new Store({ minTtlSeconds: 1 });
          // A watcher from the start makes the original keep its history as it applies; without
          // one, it keeps none and fills it from the records like the restored store.
          const early = watched ? s.hub.watch('', { prefix: true }) : undefined;
          const st = { lease: 0n, next: 100n };
          for (const op of before) applyOp(s, op, st);
          const r = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
          const rt = { ...st };
          for (const op of after) {
            applyOp(s, op, st);
            applyOp(r, op, rt);
          }
          const r2 = restoreStore(snapshotStore(r), { minTtlSeconds: 1, nowMs: 0 });
          for (const x of [r, r2]) {
            // Every key's records (compaction must trim undecoded keys too).
            expect(records(x)).toEqual(records(s));
            expect(x.revision).toBe(s.revision);
            expect(x.mvcc.compactRev).toBe(s.mvcc.compactRev);
            for (let rev = Math.max(1, s.mvcc.compactRev); rev <= s.revision; rev++) {
              expect(x.range('', { prefix: true, revision: rev })).toEqual(
                s.range('', { prefix: true, revision: rev }),
              );
            }
            expect([...x.leases.byId.keys()]).toEqual([...s.leases.byId.keys()]);
            for (const [id, l] of s.leases.byId)
              expect([...x.leases.byId.get(id)!.keys].sort()).toEqual([...l.keys].sort());
          }
          // Replays from every revision after the compaction one (at the compaction revision
          // itself, a store that kept its history still has events compaction removed from the
          // records, as etcd's watchable store may; a restored one has what the records hold).
          // Each replay ends with a sentinel put, applied to all three stores to stay in step.
          const first = s.mvcc.compactRev + 1;
          const last = s.revision;
          for (let rev = last; rev >= first; rev--) {
            const want = await replay(s, rev);
            expect(await replay(r, rev)).toEqual(want);
            expect(await replay(r2, rev)).toEqual(want);
          }
          await early?.close();
        },
      ),
      { numRuns: 150 },
    );
  });

  it('a watch from before the restore revision replays from the records; a later one from an older revision too', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    for (let i = 1; i <= 6; i++) s.applyPut(enc.encode(`k${i % 3}`), enc.encode(`v${i}`), {});
    const r = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
    r.hub.resync();
    r.applyPut(enc.encode('k1'), enc.encode('v7'), {});
    const revs = async (rev: number) => (await replay(r, rev)).map((e) => Number(e.split(':')[0]));
    // Revisions 2–7 were restored, 8 was applied after; each replay ends with a sentinel put.
    expect(await revs(5)).toEqual([5, 6, 7, 8, 9]);
    expect(await revs(2)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
});
