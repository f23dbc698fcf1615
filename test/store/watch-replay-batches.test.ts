/**
 * Grouped replay (`WatchOptions.replayBatchRevisionsMax`, what `conclave serve` asks for to match
 * etcd's watchBatchMaxRevs): a watch from a past revision gets its history in batches of up to
 * that many revisions, each batch's revision the last it covers; live revisions after it come one
 * batch each; a consumer that does not read is parked, never overflowed; and every event arrives
 * once, in order. Without the option, one batch per revision (unchanged).
 */
import { describe, expect, it } from 'vitest';
import { Store } from '../../backends/raft/store/store.js';
import { catchUpScanMax } from '../../backends/raft/store/watch-hub.js';
import type { Watch, WatchBatch } from '../../src/types.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const put = (s: Store, k: string, v: string) => s.applyPut(enc.encode(k), enc.encode(v)).revision;

/** Reads batches until one at or past `until`. */
async function batchesUntil(w: Watch, until: number): Promise<WatchBatch[]> {
  const out: WatchBatch[] = [];
  for await (const b of w) {
    out.push(b);
    if (b.revision >= until) break;
  }
  return out;
}

describe('grouped watch replay', () => {
  it('a short replay is one batch at the current revision; live revisions follow one batch each', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const first = put(s, 'g/a', '1');
    put(s, 'other', 'x'); // a revision the watch does not match
    s.applyTxn({
      compare: [],
      success: [
        { type: 'put', key: enc.encode('g/b'), value: enc.encode('2') },
        { type: 'put', key: enc.encode('g/c'), value: enc.encode('3') },
      ],
      failure: [],
    });
    const current = put(s, 'other', 'y');
    const w = s.hub.watch('g/', { prefix: true, startRevision: first, replayBatchRevisionsMax: 1000 });
    const live = put(s, 'g/d', '4');
    const got = await batchesUntil(w, live);
    expect(got.map((b) => [b.revision, b.events.map((e) => dec.decode(e.kv.key))])).toEqual([
      [current, ['g/a', 'g/b', 'g/c']],
      [live, ['g/d']],
    ]);
    await w.close();
    // Without the option: a batch per revision, as before.
    const plain = s.hub.watch('g/', { prefix: true, startRevision: first });
    const perRev = await batchesUntil(plain, live);
    expect(perRev.map((b) => b.events.length)).toEqual([1, 2, 1]);
    await plain.close();
  });

  it('a long replay comes in batches of at most replayBatchRevisionsMax revisions, every event once and in order', async () => {
    const s = new Store({ minTtlSeconds: 1 });
    const n = catchUpScanMax * 2 + 37;
    const first = s.revision + 1;
    for (let i = 0; i < n; i++) put(s, 'l/k', `v${i}`);
    const last = s.revision;
    // A small buffer: grouped batches count as their revisions against it, so the replay parks
    // and resumes as the consumer reads instead of buffering the whole history.
    const w = s.hub.watch('l/', {
      prefix: true,
      startRevision: first,
      replayBatchRevisionsMax: 300,
      bufferBatchesMax: 600,
    });
    expect(s.hub.groups().parked).toBe(1);
    const got = await batchesUntil(w, last);
    expect(got.every((b) => b.events.length <= 300)).toBe(true);
    expect(got.length).toBeGreaterThanOrEqual(Math.ceil(n / 300));
    const values = got.flatMap((b) => b.events.map((e) => dec.decode(e.kv.value)));
    expect(values).toEqual(Array.from({ length: n }, (_, i) => `v${i}`));
    // Each batch's revision is its last event's (the replay covered everything up to it).
    for (const b of got) expect(b.revision).toBe(b.events.at(-1)!.kv.modRevision);
    await w.close();
    expect(s.hub.size).toBe(0);
  });
});
