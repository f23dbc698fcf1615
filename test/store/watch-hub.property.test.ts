/**
 * The watch hub against a brute-force matcher: random watchers (single keys, prefixes, ranges,
 * fromKey, all keys; filters; prevKv; start revisions in the past, now and in the future; tiny
 * buffers so catching-up watchers park), random puts, deletes, txns, compactions, resyncs and
 * snapshot installs, and consumers that read at random moments. Every watcher must get exactly the
 * batches the brute force computes from the revisions the store applied — same revisions, same
 * events in order, nothing lost or repeated — or a prefix of them and then an error it may end
 * with (`compacted` after a compaction overtook its catch-up, `watch-overflow` when a live
 * watcher's buffer was full), or a prefix when it was closed. The hub's in-memory history is
 * kept short (0 to a few recent revisions, or the default) so that it is filled from the records
 * and trimmed behind catching-up and parked watchers.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';
import { historyRecentMax } from '../../backends/raft/store/watch-hub.js';
import { ConclaveError } from '../../src/errors.js';
import type { Op, Watch, WatchBatch, WatchEvent, WatchOptions } from '../../src/types.js';

const latin1 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));
const str = (b: Uint8Array): string => Buffer.from(b).toString('latin1');
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Keys over a tiny alphabet ('\xff' exercises a prefix without an end: "every key from it"). */
const keyArb = fc
  .array(fc.constantFrom('a', 'b', '\xff'), { minLength: 1, maxLength: 3 })
  .map((a) => a.join(''));

type Sel =
  | { kind: 'key'; key: string }
  | { kind: 'prefix'; key: string }
  | { kind: 'range'; key: string; end: string }
  | { kind: 'fromKey'; key: string }
  | { kind: 'all' };

const selArb: fc.Arbitrary<Sel> = fc.oneof(
  keyArb.map((key) => ({ kind: 'key' as const, key })),
  keyArb.map((key) => ({ kind: 'prefix' as const, key })),
  fc.tuple(keyArb, keyArb).map(([key, end]) => ({ kind: 'range' as const, key, end })),
  keyArb.map((key) => ({ kind: 'fromKey' as const, key })),
  fc.constant({ kind: 'all' as const }),
);

/** The brute force: does the selection hold `k`? (Written from the contract, not from the hub.) */
function holds(sel: Sel, k: string): boolean {
  switch (sel.kind) {
    case 'key':
      return k === sel.key;
    case 'prefix':
      return k.startsWith(sel.key);
    case 'range':
      return k >= sel.key && k < sel.end;
    case 'fromKey':
      return k >= sel.key;
    case 'all':
      return true;
  }
}

type Spec = {
  sel: Sel;
  filter: 'none' | 'noput' | 'nodelete';
  prevKv: boolean;
  /** past: a revision back from now; now: no start revision; future: revisions ahead. */
  start: { at: 'past'; back: number } | { at: 'now' } | { at: 'future'; ahead: number };
  buffer: number;
};

const specArb: fc.Arbitrary<Spec> = fc.record({
  sel: selArb,
  filter: fc.constantFrom('none', 'noput', 'nodelete'),
  prevKv: fc.boolean(),
  start: fc.oneof(
    fc.integer({ min: 0, max: 12 }).map((back) => ({ at: 'past' as const, back })),
    fc.constant({ at: 'now' as const }),
    fc.integer({ min: 1, max: 4 }).map((ahead) => ({ at: 'future' as const, ahead })),
  ),
  buffer: fc.constantFrom(1, 2, 3, 1024),
});

type Step =
  | { t: 'put'; k: string; v: number }
  | { t: 'del'; k: string; prefix: boolean }
  | { t: 'txn'; ops: Array<{ put: boolean; k: string }> }
  | { t: 'compact' }
  | { t: 'watch'; spec: Spec }
  | { t: 'close'; i: number }
  | { t: 'read'; i: number }
  | { t: 'readAll' }
  | { t: 'turn' }
  | { t: 'resync' }
  | { t: 'snapshot' };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('put' as const), k: keyArb, v: fc.nat(99) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('del' as const), k: keyArb, prefix: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('txn' as const),
      // Distinct keys: etcd refuses a txn that writes one key twice.
      ops: fc.uniqueArray(fc.record({ put: fc.boolean(), k: keyArb }), {
        minLength: 1,
        maxLength: 4,
        selector: (o) => o.k,
      }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ t: 'compact' as const }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('watch' as const), spec: specArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('close' as const), i: fc.nat(30) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('read' as const), i: fc.nat(30) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'readAll' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'turn' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'resync' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'snapshot' as const }) },
);

/** A consumer that reads what is buffered without waiting for more. */
class Reader {
  readonly batches: WatchBatch[] = [];
  error: unknown;
  ended = false;
  closed = false;
  readonly #it: AsyncIterator<WatchBatch>;
  #pending: Promise<IteratorResult<WatchBatch>> | undefined;

  constructor(
    readonly w: Watch,
    readonly spec: Spec,
    readonly from: number,
    /** The store's revision when the watch was created. */
    readonly createdAt: number,
  ) {
    this.#it = w[Symbol.asyncIterator]();
  }

  /** Takes every batch available now (and what a catch-up turn adds while reading). */
  async read(): Promise<void> {
    while (!this.ended) {
      const p = (this.#pending ??= this.#it.next().then(
        (r) => r,
        (err: unknown) => {
          this.error = err;
          return { done: true, value: undefined } as IteratorResult<WatchBatch>;
        },
      ));
      const r = await Promise.race([p, turn().then(() => undefined)]);
      if (r === undefined) return;
      this.#pending = undefined;
      if (r.done) this.ended = true;
      else this.batches.push(r.value);
    }
  }
}

const recentArb = fc.constantFrom(0, 1, 3, historyRecentMax);

const fmt = (e: WatchEvent, withPrev: boolean): string =>
  `${e.type} ${str(e.kv.key)}=${str(e.kv.value)} c${e.kv.createRevision} m${e.kv.modRevision} v${e.kv.version}` +
  (withPrev && e.prevKv ? ` prev ${str(e.prevKv.value)}@${e.prevKv.modRevision}` : '');

describe('watch hub (property)', () => {
  it('every watcher gets exactly the brute-force events, in order, nothing lost or repeated', async () => {
    let catchUps = 0;
    let parkedSeen = 0;
    await fc.assert(
      // `recent`: the revisions the hub keeps in memory whoever watches (0 and small values make
      // watches that start in the past fill the history from the records, and trim it as they
      // catch up).
      fc.asyncProperty(
        recentArb,
        fc.array(stepArb, { minLength: 1, maxLength: 60, size: 'max' }),
        async (recent, steps) => {
          let s = new Store({ minTtlSeconds: 1 });
          s.hub.recentRevisions = recent;
          /** Every applied revision's events, as the store handed them to its hub. */
          const applied = new Map<number, readonly WatchEvent[]>();
          /** Revisions whose events are puts of distinct keys: compacting at one keeps all its events. */
          const safe = new Set<number>();
          const record = (store: Store) => {
            const notify = store.hub.notify.bind(store.hub);
            store.hub.notify = (rev, events) => {
              applied.set(rev, events);
              const keys = events.map((e) => str(e.kv.key));
              if (events.every((e) => e.type === 'put') && new Set(keys).size === keys.length) safe.add(rev);
              notify(rev, events);
            };
          };
          record(s);
          const readers: Reader[] = [];
          for (const step of steps) {
            switch (step.t) {
              case 'put':
                s.applyPut(latin1(step.k), latin1(`v${step.v}`));
                break;
              case 'del':
                s.applyDelete(latin1(step.k), step.prefix ? { prefix: true } : {});
                break;
              case 'txn': {
                const ops: Op[] = step.ops.map((o, j) =>
                  o.put
                    ? { type: 'put', key: latin1(o.k), value: latin1(`t${j}`) }
                    : { type: 'delete', key: latin1(o.k) },
                );
                s.applyTxn({ compare: [], success: ops, failure: [] });
                break;
              }
              case 'compact': {
                let c = s.revision;
                while (c > s.mvcc.compactRev && !safe.has(c)) c--;
                if (c > s.mvcc.compactRev) s.applyCompact(c);
                break;
              }
              case 'watch': {
                const sp = step.spec;
                const o: WatchOptions = { prevKv: sp.prevKv, bufferBatchesMax: sp.buffer };
                if (sp.filter !== 'none') o.filters = [sp.filter];
                if (sp.sel.kind === 'prefix') o.prefix = true;
                if (sp.sel.kind === 'fromKey') o.fromKey = true;
                if (sp.sel.kind === 'range') o.end = latin1(sp.sel.end);
                // Only revisions after the compaction one are asked for (at it, the records may hold
                // fewer events than were applied, as in etcd).
                const now = s.revision;
                if (sp.start.at === 'past')
                  o.startRevision = Math.max(s.mvcc.compactRev + 1, now - sp.start.back, 1);
                if (sp.start.at === 'future') o.startRevision = now + 1 + sp.start.ahead;
                const key = sp.sel.kind === 'all' ? latin1('') : latin1(sp.sel.key);
                if (sp.sel.kind === 'all') o.prefix = true;
                const w = s.hub.watch(key, o);
                const from = o.startRevision ?? now + 1;
                if (from <= now) catchUps++;
                readers.push(new Reader(w, sp, from, now));
                break;
              }
              case 'close': {
                const r = readers[step.i % Math.max(1, readers.length)];
                if (r && !r.closed) {
                  await r.read();
                  r.closed = true;
                  await r.w.close();
                }
                break;
              }
              case 'read':
                await readers[step.i % Math.max(1, readers.length)]?.read();
                break;
              case 'readAll':
                for (const r of readers) await r.read();
                break;
              case 'turn':
                await turn();
                break;
              case 'resync':
                s.hub.resync();
                break;
              case 'snapshot': {
                // Installing a snapshot of the same state: the hub forgets its history and every
                // watcher catches up from the records.
                const copy = restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
                s.replaceState(copy);
                break;
              }
            }
            parkedSeen = Math.max(parkedSeen, s.hub.groups().parked);
          }
          // Let every catch-up finish: read until nothing is catching up or parked.
          for (let i = 0; i < 1000; i++) {
            for (const r of readers) if (!r.closed) await r.read();
            const g = s.hub.groups();
            if (g.catchingUp === 0 && g.parked === 0) break;
            await turn();
          }
          for (const r of readers) if (!r.closed) await r.read();
          const compactRev = s.mvcc.compactRev;
          const last = s.revision;
          for (const r of readers) {
            const sp = r.spec;
            const want: string[] = [];
            for (let rev = r.from; rev <= last; rev++) {
              const evs = (applied.get(rev) ?? []).filter(
                (e) =>
                  holds(sp.sel, str(e.kv.key)) &&
                  !(sp.filter === 'noput' && e.type === 'put') &&
                  !(sp.filter === 'nodelete' && e.type === 'delete'),
              );
              // prevKv is compared above the compaction revision only (at it, a replay from the
              // records cannot know the compacted previous version, as in etcd).
              if (evs.length > 0)
                want.push(`${rev}: ${evs.map((e) => fmt(e, sp.prevKv && rev > compactRev)).join(' | ')}`);
            }
            const got = r.batches.map(
              (b) =>
                `${b.revision}: ${b.events.map((e) => fmt(e, sp.prevKv && b.revision > compactRev)).join(' | ')}`,
            );
            // A watcher without prevKv never gets one; events are plain objects (a spread or JSON keeps them whole).
            for (const b of r.batches)
              for (const e of b.events) {
                if (!sp.prevKv) expect(e.prevKv).toBeUndefined();
                expect(Object.getPrototypeOf(e)).toBe(Object.prototype);
                expect({ ...e }.kv).toBe(e.kv);
              }
            const label = JSON.stringify(sp);
            if (r.error !== undefined) {
              expect(ConclaveError.is(r.error), label).toBe(true);
              const code = (r.error as ConclaveError).code;
              expect(['compacted', 'watch-overflow'], `${label} ${code}`).toContain(code);
              expect(got, label).toEqual(want.slice(0, got.length));
              if (code === 'watch-overflow') {
                // Only a live watcher overflows (a catching-up one waits for its consumer): what it
                // missed was applied after it was created, with a full buffer before it.
                expect(r.batches.length, label).toBeGreaterThanOrEqual(sp.buffer);
                const missed = want[got.length];
                if (missed !== undefined)
                  expect(Number(missed.split(':')[0]), label).toBeGreaterThan(r.createdAt);
              }
            } else if (r.closed) expect(got, label).toEqual(want.slice(0, got.length));
            else {
              expect(r.ended, label).toBe(false);
              expect(got, label).toEqual(want);
            }
          }
          for (const r of readers) await r.w.close();
          expect(s.hub.size).toBe(0);
          s = undefined as unknown as Store;
        },
      ),
      {
        numRuns: 300,
        // One run that parks for sure: a replay of 4 revisions into a buffer of 1.
        examples: [
          [
            0,
            [
              ...[1, 2, 3, 4].map((v) => ({ t: 'put' as const, k: 'a', v })),
              {
                t: 'watch' as const,
                spec: {
                  sel: { kind: 'key' as const, key: 'a' },
                  filter: 'none' as const,
                  prevKv: true,
                  start: { at: 'past' as const, back: 4 },
                  buffer: 1,
                },
              },
              { t: 'put' as const, k: 'a', v: 5 },
              { t: 'readAll' as const },
            ],
          ],
        ],
      },
    );
    // The runs did exercise catching up and parking.
    expect(catchUps).toBeGreaterThan(50);
    expect(parkedSeen).toBeGreaterThan(0);
  }, 120_000);
});
