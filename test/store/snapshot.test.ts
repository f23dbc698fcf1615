import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';

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
);

describe('store snapshot', () => {
  it('restoring a snapshot gives a store that answers every read at every revision identically', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const s = new Store({ minTtlSeconds: 1 });
        let lease = 0n;
        let nextLease = 100n;
        for (const op of ops) {
          if (op.t === 'put') {
            if (op.lease && lease === 0n) lease = s.applyLeaseGrant(nextLease++, 10, 0).id;
            s.applyPut(enc.encode(op.k), enc.encode(op.v), op.lease ? { lease } : {});
          } else if (op.t === 'del') s.applyDelete(op.k, op.prefix ? { prefix: true } : {});
          else if (op.t === 'compact' && s.revision > s.mvcc.compactRev + 1) s.applyCompact(s.revision - 1);
          else if (op.t === 'revoke' && lease !== 0n) {
            s.applyLeaseRevoke(lease);
            lease = 0n;
          }
        }
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

  it('restored values are copies: they do not share memory with the snapshot buffer', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('k'), enc.encode('value'), {});
    const data = snapshotStore(s);
    const r = restoreStore(data, { minTtlSeconds: 1, nowMs: 0 });
    data.fill(0);
    expect(new TextDecoder().decode(r.range('k').kvs[0]!.value)).toBe('value');
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
