/**
 * The store's watch iterator and the embedded client's (FailoverWatch) are hand-written, not async
 * generators: a buffered batch is handed over as an already-settled promise, where a generator
 * (two of them, nested, for the embedded client) took 2 (4) microtask turns and several promises
 * per batch — paid by every watcher of a busy prefix. These tests pin what the iterators must
 * keep doing (order, early exit closes, errors after the buffered batches) and the one-turn
 * handover (fails on the generator versions).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { Store } from '../../backends/raft/store/store.js';
import type { Watch, WatchBatch } from '../../src/types.js';

const enc = new TextEncoder();
const put = (s: Store, k: string, v: string) => s.applyPut(enc.encode(k), enc.encode(v)).revision;

/** Microtask turns until `p` settles (-1: not within 20). */
async function turnsToSettle(p: Promise<unknown>): Promise<number> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 20; i++) {
    if (settled) return i;
    await Promise.resolve();
  }
  return -1;
}

const revisions = (bs: readonly WatchBatch[]) => bs.map((b) => b.revision);

describe('store watch iterator', () => {
  it('hands over a buffered batch in one microtask turn, in order', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const w = s.hub.watch(enc.encode('k'), {});
    const r1 = put(s, 'k', '1');
    const r2 = put(s, 'k', '2');
    const it = w[Symbol.asyncIterator]();
    const a = it.next();
    expect(await turnsToSettle(a)).toBeLessThanOrEqual(1);
    const b = it.next();
    expect(await turnsToSettle(b)).toBeLessThanOrEqual(1);
    expect([(await a).value?.revision, (await b).value?.revision]).toEqual([r1, r2]);
    await w.close();
  });

  it('a consumer waiting gets the next batch; leaving the loop early closes the watch', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const w = s.hub.watch(enc.encode('k'), {});
    const got: WatchBatch[] = [];
    const loop = (async () => {
      for await (const b of w) {
        got.push(b);
        if (got.length === 2) break;
      }
    })();
    await Promise.resolve();
    const r1 = put(s, 'k', '1');
    await new Promise((r) => setImmediate(r));
    const r2 = put(s, 'k', '2');
    await loop;
    expect(revisions(got)).toEqual([r1, r2]);
    expect(s.hub.size).toBe(0);
  });

  it('close while a consumer waits ends its loop normally', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const w = s.hub.watch(enc.encode('k'), {});
    const loop = (async () => {
      let n = 0;
      for await (const _ of w) n++;
      return n;
    })();
    await new Promise((r) => setImmediate(r));
    await w.close();
    expect(await loop).toBe(0);
  });

  it('an overflowed watch hands over what it buffered, then throws watch-overflow', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const w = s.hub.watch(enc.encode('k'), { bufferBatchesMax: 2 });
    const revs = [put(s, 'k', '1'), put(s, 'k', '2')];
    put(s, 'k', '3'); // the third batch does not fit: the watch ends
    const got: WatchBatch[] = [];
    await expect(
      (async () => {
        for await (const b of w) got.push(b);
      })(),
    ).rejects.toMatchObject({ code: 'watch-overflow' });
    expect(revisions(got)).toEqual(revs);
    expect(s.hub.size).toBe(0);
  });
});

describe('embedded client watch iterator', () => {
  let cluster: EmbeddedCluster | undefined;
  afterEach(async () => {
    await cluster?.kv.close();
    await cluster?.close();
    cluster = undefined;
  });
  const hubSize = (c: EmbeddedCluster) => [...c.members.values()].reduce((n, m) => n + m.store.hub.size, 0);

  it('hands over a buffered batch in one microtask turn, in order', async () => {
    cluster = await startCluster({ nodes: 1 });
    const kv = cluster.kv;
    const w = kv.watch('k');
    await w.ready;
    const r1 = (await kv.put('k', '1')).revision;
    const r2 = (await kv.put('k', '2')).revision;
    const it = w[Symbol.asyncIterator]();
    const a = it.next();
    expect(await turnsToSettle(a)).toBeLessThanOrEqual(1);
    const b = it.next();
    expect(await turnsToSettle(b)).toBeLessThanOrEqual(1);
    expect([(await a).value?.revision, (await b).value?.revision]).toEqual([r1, r2]);
    await w.close();
    expect(hubSize(cluster)).toBe(0);
  });

  it('leaving the loop early closes the watch on its member; an error ends it after the buffered batches', async () => {
    cluster = await startCluster({ nodes: 1 });
    const kv = cluster.kv;
    const w1 = kv.watch('a');
    await w1.ready;
    const loop = (async () => {
      const got: number[] = [];
      for await (const b of w1) {
        got.push(b.revision);
        if (got.length === 2) break;
      }
      return got;
    })();
    const ra = [(await kv.put('a', '1')).revision, (await kv.put('a', '2')).revision];
    expect(await loop).toEqual(ra);
    expect(hubSize(cluster)).toBe(0);

    const w2: Watch = kv.watch('b', { bufferBatchesMax: 2 });
    await w2.ready;
    const rb = [(await kv.put('b', '1')).revision, (await kv.put('b', '2')).revision];
    await kv.put('b', '3');
    const got: number[] = [];
    await expect(
      (async () => {
        for await (const b of w2) got.push(b.revision);
      })(),
    ).rejects.toMatchObject({ code: 'watch-overflow' });
    expect(got).toEqual(rb);
    expect(hubSize(cluster)).toBe(0);
  });
});

describe('watch hub matching', () => {
  it('a write looks at the watchers of its key only: none for 10,000 watchers on other keys and prefixes', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const ws: Watch[] = [];
    for (let i = 0; i < 5000; i++) ws.push(s.hub.watch(enc.encode(`idle/${i}`), {}));
    for (let i = 0; i < 5000; i++) ws.push(s.hub.watch(enc.encode(`idle/${i}/`), { prefix: true }));
    const hot = s.hub.watch(enc.encode('hot/'), { prefix: true });
    for (let i = 0; i < 100; i++) put(s, `other/${i}`, 'v');
    expect(s.hub.visited).toBe(0);
    for (let i = 0; i < 100; i++) put(s, `hot/${i}`, 'v');
    expect(s.hub.visited).toBe(100);
    // A write to a watched key reaches its watcher and the prefix watcher over it, no other.
    put(s, 'idle/7/x', 'v');
    expect(s.hub.visited).toBe(101);
    put(s, 'idle/7', 'v');
    expect(s.hub.visited).toBe(102);
    for (const w of [...ws, hot]) await w.close();
    expect(s.hub.size).toBe(0);
  });
});
