/**
 * The store's checked invariants (`Store.checkInvariants`, `Mvcc.checkInvariants`): they hold
 * after every step of seeded random histories (puts with and without leases, deletes, range
 * deletes, txns writing a key twice, compaction, lease revocation, snapshot and restore), and
 * each check fails on the corruption it is there to catch, injected by hand.
 */
import { describe, expect, it } from 'vitest';
import { KvRecord, StoreInvariantError } from '../../backends/raft/store/mvcc.js';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';
import { Prng } from '../sim/prng.js';
import { twice } from './txns.js';

const enc = new TextEncoder();
const keys = ['a', 'b', 'c', 'd', 'e', 'f'];
const seeds = 40;
const stepsPerSeed = 150;

/** One random step on `s` (returns the store to use next: a restore replaces it). */
function step(s: Store, rng: Prng, i: number): Store {
  const k = rng.pick(keys);
  const roll = rng.int(100);
  try {
    if (roll < 40) {
      const leases = [...s.leases.byId.keys()];
      const lease = leases.length > 0 && rng.chance(0.4) ? rng.pick(leases) : undefined;
      s.applyPut(enc.encode(k), enc.encode(`v${i}`), lease === undefined ? {} : { lease });
    } else if (roll < 52) s.applyDelete(k);
    else if (roll < 57) s.applyDelete(k, { fromKey: true });
    else if (roll < 67) s.applyTxn({ compare: [], success: twice(k, rng.int(4)), failure: [] });
    else if (roll < 74) s.applyLeaseGrant(BigInt(1 + rng.int(4)), 10, 0);
    else if (roll < 79) {
      const leases = [...s.leases.byId.keys()];
      if (leases.length > 0) s.applyLeaseRevoke(rng.pick(leases));
    } else if (roll < 86) {
      if (s.revision > 1) s.applyCompact(1 + rng.int(s.revision));
    } else if (roll < 92)
      s.range('', { prefix: true }); // builds the live-key tree
    else if (roll < 96) s.range(k, { revision: Math.max(s.mvcc.compactRev, 1) });
    else return restoreStore(snapshotStore(s), { minTtlSeconds: 1, nowMs: 0 });
  } catch (err) {
    // Refusals a random history meets (a lease granted twice, a compacted revision) are fine.
    if (err instanceof StoreInvariantError) throw err;
  }
  return s;
}

/** A store with history on every key, a leased key, a tombstone, and the live-key tree built. */
function sample(): Store {
  const s = new Store({ minTtlSeconds: 1 });
  s.applyLeaseGrant(7n, 10, 0);
  for (let i = 0; i < 3; i++) for (const k of keys) s.applyPut(enc.encode(k), enc.encode(`${k}${i}`));
  s.applyPut(enc.encode('c'), enc.encode('leased'), { lease: 7n });
  s.applyDelete('d');
  s.range('', { prefix: true });
  s.checkInvariants();
  return s;
}

describe('store invariants', () => {
  it(`hold after every step of ${seeds} seeded random histories`, () => {
    for (let seed = 1; seed <= seeds; seed++) {
      const rng = new Prng(seed);
      let s = new Store({ minTtlSeconds: 1 });
      for (let i = 0; i < stepsPerSeed; i++) {
        s = step(s, rng, i);
        try {
          s.checkInvariants();
        } catch (err) {
          throw new Error(`seed ${seed}, step ${i}: ${(err as Error).message}`);
        }
      }
    }
  });

  const corruptions: Array<[string, (s: Store) => void, RegExp]> = [
    [
      'records out of order',
      (s) => {
        const recs = s.mvcc.records('a')!;
        [recs[0], recs[1]] = [recs[1]!, recs[0]!];
      },
      /is not after/,
    ],
    [
      'a wrong version',
      (s) => {
        const recs = s.mvcc.records('b')!;
        const r = recs[1]!;
        recs[1] = new KvRecord(r.main, r.sub, { ...r.kv!, version: r.version + 5 });
      },
      /version/,
    ],
    [
      'a mod revision that is not the record’s',
      (s) => {
        const recs = s.mvcc.records('e')!;
        const r = recs[0]!;
        recs[0] = new KvRecord(r.main, r.sub, { ...r.kv!, modRevision: r.main + 1 });
      },
      /mod revision/,
    ],
    [
      'two tombstones in a row',
      (s) => {
        s.mvcc.records('d')!.push(KvRecord.tombstone(s.revision, 1));
      },
      /two tombstones/,
    ],
    [
      'a record above the current revision',
      (s) => {
        const recs = s.mvcc.records('f')!;
        const r = recs[recs.length - 1]!;
        recs.push(
          new KvRecord(s.revision + 3, 0, { ...r.kv!, modRevision: s.revision + 3, version: r.version + 1 }),
        );
      },
      /above currentRev/,
    ],
    [
      'a compact revision past the current one',
      (s) => void (s.mvcc.compactRev = s.revision + 1),
      /compactRev/,
    ],
    [
      'a deleted key left in the live keys',
      (s) => {
        // Written behind the live-key tree's back (index only), as a missed update would be.
        const recs = [...s.mvcc.records('e')!, KvRecord.tombstone(s.revision, 0)];
        s.mvcc.index.set('e', recs);
      },
      /still in the live keys/,
    ],
    ['a lease that lost its key', (s) => s.leases.byId.get(7n)!.keys.delete('c'), /does not list it/],
    [
      'a lease listing a key put without it',
      (s) => s.leases.byId.get(7n)!.keys.add('a'),
      /lease 7 lists key "a"/,
    ],
  ];
  for (const [what, corrupt, message] of corruptions) {
    it(`fail on an injected corruption: ${what}`, () => {
      const s = sample();
      corrupt(s);
      expect(() => s.checkInvariants()).toThrow(StoreInvariantError);
      expect(() => s.checkInvariants()).toThrow(message);
    });
  }

  it('hold on a restored store whose keys are still encoded, and see a corruption of the bytes', () => {
    const data = snapshotStore(sample());
    const r = restoreStore(data, { minTtlSeconds: 1, nowMs: 0 });
    r.checkInvariants();
    expect(typeof r.mvcc.index.get('a')).toBe('number'); // nothing decoded by the check
    // Key "a"'s first record's main revision (u64 LE right after its record count) set to 0xff…:
    // its records are then out of order, found without decoding them into the index.
    const bad = Buffer.from(data);
    const at = bad.indexOf(Buffer.from([1, 0, 0, 0, 0x61])) + 5; // key length 1, "a"
    bad.writeUInt32LE(0x7fff_ffff, at + 4);
    const rb = restoreStore(bad, { minTtlSeconds: 1, nowMs: 0 });
    expect(() => rb.checkInvariants()).toThrow(StoreInvariantError);
  });
});
