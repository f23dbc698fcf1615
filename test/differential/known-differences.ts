/**
 * Differences between the embedded store and etcd 3.4 that the differential test found, each
 * written as a check of etcd's behaviour (the reference). etcd-vs-embedded.test.ts runs every
 * check on etcd as a normal test (so the claim about etcd stays true) and on the embedded store:
 * as `it.fails` while the difference stands, as a plain test once it is marked `fixed` (then the
 * matching rewrite in model.ts goes too, so the property covers the shape again). Fixed ones stay
 * here as regression tests.
 *
 * The fixed ones were in backends/raft/store/store.ts (the txn rules are now in txn-check.ts);
 * etcd's side is etcdserver/apply.go (Put, Range, Txn, checkRequests, compareToPath) and
 * etcdserver/api/v3rpc/key.go (checkIntervals) of v3.4. The open one is in
 * backends/raft/store/mvcc.ts (one record per key and revision; `eventsSince`); etcd's side is
 * mvcc's per-sub-revision records and v3rpc/watch.go (prevKv read at revision - 1, none for a
 * create).
 */
import { expect } from 'vitest';
import type { KV } from '../../src/kv.js';
import type { Op, Txn, WatchEvent } from '../../src/types.js';

export interface KnownDifference {
  readonly name: string;
  /** Set when the embedded store has been fixed: its test then runs as a plain `it`. */
  readonly fixed?: boolean;
  /** Checks etcd's behaviour on `kv`, using keys under `p` only. */
  check(kv: KV, p: string): Promise<void>;
}

const put = (key: string): Op => ({ type: 'put', key, value: 'x' });
const del = (key: string, options: { prefix?: boolean; fromKey?: boolean } = {}): Op => ({
  type: 'delete',
  key,
  options,
});
const nested = (success: Op[], failure: Op[] = []): Op => ({
  type: 'txn',
  txn: { compare: [], success, failure },
});
const txn = (success: Op[]): Txn => ({ compare: [], success, failure: [] });
/** A lease id nobody granted. */
const noSuchLease = 0x7eadbeefn;

/** The events a watch from `startRevision` replays under `p`, until `n` arrived (5 s at most). */
async function replay(kv: KV, p: string, startRevision: number, n: number): Promise<WatchEvent[]> {
  const w = kv.watch(p, { prefix: true, startRevision, prevKv: true, signal: AbortSignal.timeout(5_000) });
  const events: WatchEvent[] = [];
  try {
    for await (const b of w) {
      events.push(...b.events);
      if (events.length >= n) break;
    }
  } catch {
    // Timed out: the events so far are the answer.
  } finally {
    await w.close();
  }
  return events;
}

async function duplicate(kv: KV, t: Txn): Promise<void> {
  await expect(kv.txn(t)).rejects.toMatchObject({ code: 'duplicate-key' });
}

export const knownDifferences: KnownDifference[] = [
  {
    name: 'a put with ignoreValue of a missing key and an unknown lease fails lease-not-found (the lease is looked up first)',
    fixed: true,
    async check(kv, p) {
      await expect(
        kv.put(`${p}missing`, '', { ignoreValue: true, lease: noSuchLease }),
      ).rejects.toMatchObject({
        code: 'lease-not-found',
      });
    },
  },
  {
    name: 'a txn with a read at a future revision and a put with an unknown lease fails lease-not-found (puts are checked before reads)',
    fixed: true,
    async check(kv, p) {
      const { revision } = await kv.status();
      await expect(
        kv.txn(
          txn([
            { type: 'get', key: `${p}a`, options: { revision: revision + 5 } },
            { type: 'put', key: `${p}a`, value: 'x', options: { lease: noSuchLease } },
          ]),
        ),
      ).rejects.toMatchObject({ code: 'lease-not-found' });
    },
  },
  {
    name: 'a countOnly read with a limit below the count reports more = false (the limit cuts the keys returned: none)',
    fixed: true,
    async check(kv, p) {
      await kv.put(`${p}a`, '1');
      await kv.put(`${p}b`, '2');
      const r = await kv.range(p, { prefix: true, countOnly: true, limit: 1 });
      expect(r.count).toBe(2);
      expect(r.kvs).toEqual([]);
      expect(r.more).toBe(false);
    },
  },
  {
    name: "a nested txn's put of a key the branch puts again later is a duplicate key",
    fixed: true,
    check: (kv, p) => duplicate(kv, txn([nested([put(`${p}c`)]), put(`${p}c`)])),
  },
  {
    name: "a nested txn's else-branch put of a key the branch puts later is a duplicate key",
    fixed: true,
    check: (kv, p) => duplicate(kv, txn([nested([], [put(`${p}c`)]), put(`${p}c`)])),
  },
  {
    name: 'two nested txns putting one key are a duplicate key',
    fixed: true,
    check: (kv, p) => duplicate(kv, txn([nested([put(`${p}c`)]), nested([put(`${p}c`)])])),
  },
  {
    name: "a nested txn's delete covering a key the branch puts later is a duplicate key",
    fixed: true,
    check: (kv, p) => duplicate(kv, txn([nested([del(p, { prefix: true })]), put(`${p}c`)])),
  },
  {
    name: "a nested txn's delete of a key the branch put before it is a duplicate key",
    fixed: true,
    check: (kv, p) => duplicate(kv, txn([put(`${p}c`), nested([del(`${p}c`)])])),
  },
  {
    name: 'a fromKey delete and a put of a key it covers in one branch are accepted (etcd sees [key, "\\0") as empty)',
    fixed: true,
    async check(kv, p) {
      const t = await kv.txn(txn([del(`${p}a`, { fromKey: true }), put(`${p}c`)]));
      expect(t.succeeded).toBe(true);
      expect((await kv.get(`${p}c`))?.version).toBe(1);
    },
  },
  {
    name: "a nested txn's compares see the store as it was before the txn, not the txn's earlier writes",
    fixed: true,
    async check(kv, p) {
      const t = await kv.txn(
        txn([
          put(`${p}n`),
          {
            type: 'txn',
            txn: {
              compare: [{ key: `${p}n`, target: 'create', result: '=', value: 0 }],
              success: [],
              failure: [],
            },
          },
        ]),
      );
      const inner = t.responses[1];
      expect(inner?.type === 'txn' && inner.succeeded).toBe(true);
    },
  },
  {
    name: 'a watch replaying a txn that puts a key and deletes it again (a fromKey delete) gets both events, the delete without prevKv (none before the txn)',
    async check(kv, p) {
      const { revision } = await kv.txn(txn([put(`${p}d`), del(`${p}d`, { fromKey: true })]));
      const events = await replay(kv, p, revision, 2);
      expect(events.map((e) => [e.type, e.kv.modRevision])).toEqual([
        ['put', revision],
        ['delete', revision],
      ]);
      expect(events[1]?.prevKv).toBeUndefined();
    },
  },
];
