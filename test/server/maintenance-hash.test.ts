/**
 * The store hash behind Maintenance.Hash/HashKV (hashStore in backends/raft/server/maintenance.ts)
 * is computed in slices, each in its own turn of the event loop, so a member holding a large store
 * keeps heartbeating and serving while it runs; and the sliced hash is the hash of the one-pass
 * definition (computed here from a range read), at any revision, whatever is written meanwhile.
 */
import { describe, expect, it } from 'vitest';
import { hashSliceBytesMax, hashSliceKeysMax, hashStore } from '../../backends/raft/server/maintenance.js';
import { crc32c } from '../../backends/raft/storage/crc32c.js';
import { Store } from '../../backends/raft/store/store.js';
import { ErrorCode } from '../../src/errors.js';

const enc = new TextEncoder();

/** The hash's definition in one pass (what the member computed before it was sliced). */
function hashOnePass(store: Store, revision: number): number {
  const u = Buffer.alloc(8);
  const mix = (crc: number, v: number) => {
    u.writeDoubleLE(v, 0);
    return crc32c(u, crc);
  };
  const all = new Uint8Array([0]);
  let crc = 0;
  for (const kv of store.range(all, { end: all, revision }).kvs) {
    crc = mix(crc, kv.key.length);
    crc = crc32c(kv.key, crc);
    crc = mix(crc, kv.value.length);
    crc = crc32c(kv.value, crc);
    crc = mix(crc, kv.createRevision);
    crc = mix(crc, kv.modRevision);
    crc = mix(crc, kv.version);
    crc = mix(crc, Number(kv.lease));
  }
  return mix(crc, store.mvcc.compactRev) >>> 0;
}

/** Counts turns of the event loop (one setImmediate per turn) until stopped. */
function turnCounter(): { stop: () => number } {
  let turns = 0;
  let on = true;
  const tick = () => {
    if (!on) return;
    turns++;
    setImmediate(tick);
  };
  setImmediate(tick);
  return {
    stop: () => {
      on = false;
      return turns;
    },
  };
}

function fill(store: Store, n: number, prefix = 'key'): void {
  for (let i = 0; i < n; i++)
    store.applyPut(enc.encode(`${prefix}${String(i).padStart(7, '0')}`), enc.encode(`v${i}`));
}

describe('store hash (HashKV) in slices', () => {
  it('over 200,000 keys the event loop keeps turning while the hash runs, and the hash is the one-pass hash', async () => {
    const store = new Store({ minTtlSeconds: 1 });
    fill(store, 200_000);
    const counter = turnCounter();
    const h = await hashStore(store, 0);
    const turns = counter.stop();
    // One slice per turn: ~200 slices of 1,000 keys. The one-pass hash ran in one turn (0 here).
    expect(turns).toBeGreaterThanOrEqual(Math.floor(200_000 / hashSliceKeysMax / 2));
    expect(h.revision).toBe(store.revision);
    expect(h.compactRevision).toBe(0);
    expect(h.hash).toBe(hashOnePass(store, store.revision));
  }, 120_000);

  it('at a past revision, with deletes, overwrites and a compaction, and at slice boundaries', async () => {
    for (const n of [
      0,
      1,
      hashSliceKeysMax - 1,
      hashSliceKeysMax,
      hashSliceKeysMax + 1,
      2 * hashSliceKeysMax,
    ]) {
      const store = new Store({ minTtlSeconds: 1 });
      fill(store, n);
      expect((await hashStore(store, 0)).hash).toBe(hashOnePass(store, store.revision));
    }
    const store = new Store({ minTtlSeconds: 1 });
    fill(store, 3000);
    for (let i = 0; i < 3000; i += 7) store.applyDelete(enc.encode(`key${String(i).padStart(7, '0')}`));
    store.applyCompact(500);
    const past = store.revision;
    fill(store, 1500); // overwrites: versions and mod revisions move on
    for (const rev of [501, 1000, past, store.revision]) {
      const h = await hashStore(store, rev);
      expect(h).toEqual({ hash: hashOnePass(store, rev), compactRevision: 500, revision: rev });
    }
    expect((await hashStore(store, past)).hash).not.toBe((await hashStore(store, 0)).hash);
    await expect(hashStore(store, 499)).rejects.toMatchObject({ code: ErrorCode.Compacted });
    // etcd 3.4 refuses the compacted revision itself too.
    await expect(hashStore(store, 500)).rejects.toMatchObject({ code: ErrorCode.Compacted });
    await expect(hashStore(store, store.revision + 1)).rejects.toMatchObject({
      code: ErrorCode.FutureRevision,
    });
  });

  it('values larger than a slice: a slice ends on its byte bound, every key is hashed once', async () => {
    const store = new Store({ minTtlSeconds: 1 });
    const big = new Uint8Array(Math.ceil(hashSliceBytesMax / 2) + 1).fill(7);
    for (let i = 0; i < 6; i++) store.applyPut(enc.encode(`big${i}`), big);
    store.applyPut(enc.encode('huge'), new Uint8Array(hashSliceBytesMax + 10).fill(1));
    fill(store, 10);
    const counter = turnCounter();
    const h = await hashStore(store, 0);
    // 6 × (just over half a slice) + one over a whole slice: at least 4 slices.
    expect(counter.stop()).toBeGreaterThanOrEqual(3);
    expect(h.hash).toBe(hashOnePass(store, store.revision));
  });

  it('writes applied between slices do not change the hash at its revision; a compaction meanwhile fails it', async () => {
    const store = new Store({ minTtlSeconds: 1 });
    fill(store, 20_000);
    const rev = store.revision;
    const expected = hashOnePass(store, rev);
    // Writes land between slices, over keys not yet hashed and already hashed.
    let writes = 0;
    let on = true;
    const writer = () => {
      if (!on) return;
      fill(store, 50, `key00${writes % 2}`);
      store.applyDelete(enc.encode(`key${String(19_999 - writes).padStart(7, '0')}`));
      writes++;
      setImmediate(writer);
    };
    setImmediate(writer);
    const h = await hashStore(store, 0);
    on = false;
    expect(writes).toBeGreaterThan(3);
    expect(store.revision).toBeGreaterThan(rev);
    expect(h).toEqual({ hash: expected, compactRevision: 0, revision: rev });

    const p = hashStore(store, rev);
    setImmediate(() => store.applyCompact(rev + 1));
    await expect(p).rejects.toMatchObject({ code: ErrorCode.Compacted });
  });
});
