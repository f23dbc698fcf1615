/**
 * MVCC key space with etcd v3.4 semantics: every write gets a revision {main, sub}; each key keeps
 * its records (puts and tombstones) since the last compaction, so reads at any revision since then
 * see the state as of that revision. Keys are ordered byte-wise in a B+ tree (sorted-btree), keyed
 * by the latin1 decoding of the bytes (one char per byte, so string order is byte order).
 *
 * A store restored from a snapshot (snapshot.ts) does not decode its keys' records up front: the
 * index maps each key to the offset of its encoded records in the snapshot buffer (`Mvcc.source`),
 * and a key's records become objects the first time they are read or written (`records()`).
 * Restoring a million keys then costs a million strings and one bulk-loaded tree, not six million
 * objects and a million value buffers (recovery time). Values decoded from the snapshot
 * are views into its buffer, which therefore stays alive while any of them does (it is the data).
 * A put to such a key does not decode it either: the new records go beside the encoded ones
 * (`Touched`) until something needs the key's whole history.
 *
 * Every write is a record of its own, as in etcd's backend: a txn that writes one key twice (a put
 * and a fromKey delete, or nested txns) leaves two records at one main revision, in sub order, and
 * a watch replaying that revision from the records gets both events (`eventsSince`).
 *
 * Reads at the latest revision (the common case) walk a second tree of the keys whose latest
 * record is a put (`#live`), so keys deleted since the last compaction cost them nothing; reads
 * at older revisions walk the whole index.
 *
 * Invariants: compactRev <= currentRev; each key's records are in increasing {main, sub} order,
 * the first one is a put and no two tombstones are adjacent; no record's main is above
 * currentRev except during a write (at currentRev + 1, until it commits or is undone).
 */
import BTreeModule from 'sorted-btree';
import { bulkLoad } from 'sorted-btree/extended/bulkLoad.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { KeyValue } from '../../../src/types.js';
import { KeyRecord, KvRecord, LazyRecord } from './key-record.js';
import {
  decodeRecords,
  encodedRecordsEnd,
  isSingleEncodedPut,
  lastEncodedIsPut,
  lastEncodedMain,
  lastEncodedPut,
} from './snapshot-format.js';

export { KeyRecord, KvRecord, LazyRecord } from './key-record.js';
export { encodedRecordsEnd } from './snapshot-format.js';

// sorted-btree ships CommonJS with `default` as the class.
const BTree = ((BTreeModule as unknown as { default?: unknown }).default ??
  BTreeModule) as typeof import('sorted-btree').default;
type BTree<K, V> = import('sorted-btree').default<K, V>;
/** A node of the key index as sorted-btree 2.x lays it out (read by `Mvcc.entry`). */
interface IndexNode {
  readonly keys: string[];
  readonly values: Records[];
  /** Internal nodes only: child i holds the keys up to keys[i]. */
  readonly children?: IndexNode[];
  readonly isShared?: boolean;
}

/** Latin1 key strings compare in byte order with plain `<` (no mixed key types to handle). */
const compareKeys = (a: string, b: string): number => (a > b ? 1 : a < b ? -1 : 0);
/** Branching factor of the key index (sorted-btree's default). */
export const indexNodeSize = 32;

// Buffer's native latin1 decoder accepts any Uint8Array as `this` (it is not in @types/node).
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice(start: number, end: number): string })
  .latin1Slice as (this: Uint8Array, start: number, end: number) => string;
/** The index key of a key's bytes (latin1: one char per byte), without a Buffer wrapper per call. */
export const keyString = (b: Uint8Array): string => latin1Slice.call(b, 0, b.length);
/** The latin1 string of `b[start, end)` (an index key read from a snapshot). */
export const latin1String = (b: Uint8Array, start: number, end: number): string =>
  latin1Slice.call(b, start, end);
export const keyBytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));

/** Up to this many records, a touched key's `recs` grows by exact copies. */
const touchedCopiedMax = 8;

/**
 * A key restored from a snapshot and written since by puts only: its restored records are still
 * encoded at `off` in `Mvcc.source`, and `recs` (never empty) are the records written since, all
 * above the encoded ones. A put to a restored key appends here instead of decoding the key's
 * history (its create revision, version and lease are read from the bytes), so applying a
 * recovered log keeps one small object per key instead of the decoded records (recovery
 * time); after its first write only, the key's entry is that record itself (`encodedAt` set: no
 * Touched and no array yet). Anything that needs the whole history (`records()`: a delete, a read
 * at an older revision, compaction) decodes the encoded part in front of the new records and
 * stores a plain array. `recs` only gains records above every earlier one (in place, or as a
 * longer copy: a snapshot frozen before shares this object and keeps the records at or below its
 * revision); a write's undo removes its own.
 */
export class Touched {
  constructor(
    readonly off: number,
    public recs: KeyRecord[],
  ) {}
}

/**
 * A key's records: decoded, the offset in `Mvcc.source` of the encoded ones (a key restored from a
 * snapshot and not touched since), or both (`Touched`, or a single `KeyRecord` with `encodedAt`).
 * Encoded as snapshot-format.ts lays out (the key's bytes come just before).
 */
export type Records = KeyRecord[] | number | Touched | KeyRecord;

/** A touched key's entry as a `Touched` (a new one, not kept, for a single record). */
export const asTouched = (r: Touched | KeyRecord): Touched =>
  r instanceof KeyRecord ? new Touched(r.encodedAt, [r]) : r;

/**
 * A watch event. `prevKv` is etcd's (v3rpc/watch.go): none for a put that creates the key (its
 * create revision is its revision, even if the txn deleted an older one first), else the key as
 * it was at the event's revision - 1, so for a txn's second write of one key it is the key before
 * the txn (or none), not the txn's first write.
 */
export interface MvccEvent {
  readonly type: 'put' | 'delete';
  readonly kv: KeyValue;
  readonly prevKv?: KeyValue;
  /** The key as a latin1 string when the write had it at hand: the watch hub matches on it without making the kv. */
  readonly latin1Key?: string;
}

/** A delete's event, and the kv it deleted (what the delete's response returns as prevKv). */
export interface MvccDelete {
  readonly event: MvccEvent;
  readonly prev: KeyValue;
}

const EMPTY = new Uint8Array(0);

/** The record in effect at `rev` (the last one, in {main, sub} order, at or before it), or undefined. */
export function recordAt(recs: readonly KeyRecord[], rev: number): KeyRecord | undefined {
  for (let i = recs.length - 1; i >= 0; i--) if (recs[i]!.main <= rev) return recs[i];
  return undefined;
}

/** The key's record before revision `main` (at main - 1) from its records up to index `i`, or undefined. */
function recordBefore(recs: readonly KeyRecord[], main: number, i = recs.length - 1): KeyRecord | undefined {
  for (; i >= 0; i--) if (recs[i]!.main < main) return recs[i];
  return undefined;
}

/**
 * A put's watch event: its kv and prevKv are made when a watcher reads them (most applied events
 * are dropped unread: the hub keeps none while nobody watches).
 */
class PutEvent implements MvccEvent {
  readonly type = 'put' as const;
  constructor(
    readonly record: KeyRecord,
    /** The put's predecessor at revision main - 1 (undefined: none, or a tombstone). */
    readonly before: KeyRecord | undefined,
    readonly latin1Key: string,
  ) {}
  get kv(): KeyValue {
    return this.record.kv!;
  }
  get prevKv(): KeyValue | undefined {
    return this.before?.kv;
  }
}

/** A tombstone's event kv: the key, the delete's revision, nothing else (etcd's). */
const deletedKv = (key: Uint8Array, main: number): KeyValue => ({
  key,
  createRevision: 0,
  modRevision: main,
  version: 0,
  value: EMPTY,
  lease: 0n,
});

/** A broken store invariant (`Mvcc.checkInvariants`, `Store.checkInvariants`): a bug, never bad input. */
export class StoreInvariantError extends Error {
  constructor(what: string) {
    super(`store invariant broken: ${what}`);
    this.name = 'StoreInvariantError';
  }
}

/**
 * Checks an invariant on a write path, where breaking it would corrupt the key space silently
 * (a record below the current revision changes what reads at past revisions see, and what a
 * snapshot holds). O(1): run on every write, unlike `checkInvariants`.
 */
export function storeAssert(cond: unknown, what: string): asserts cond {
  if (!cond) throw new StoreInvariantError(what);
}

export class Mvcc {
  index: BTree<string, Records> = new BTree<string, Records>(undefined, compareKeys, indexNodeSize);
  /** The snapshot buffer that undecoded (numeric) index entries point into. */
  source: Buffer | undefined;
  compactRev = 0;
  #currentRev = 1;
  /** The highest main revision of any record: currentRev, or currentRev + 1 during a write. */
  #top = 1;
  /**
   * The keys whose latest record is a put, each with the same `Records` as in `index` (a key's
   * entry changes in both when its records are decoded: `#decoded`). A scan at a revision at or
   * above every record's (`#top`) walks it instead of `index`, so keys deleted since the last
   * compaction cost such a read nothing (a work queue creates and deletes many keys, and nobody
   * compacts). Built by the first such scan (one pass over the index, decoding nothing; not at
   * restore, which stays O(keys) without touching records), kept up to date by every write and
   * undo after that. Costs one more B+ tree entry per live key.
   */
  #live: BTree<string, Records> | undefined;
  /** The index `#live` was built from: if `index` was replaced by other means, it is rebuilt. */
  #liveOf: BTree<string, Records> | undefined;

  get currentRev(): number {
    return this.#currentRev;
  }

  /** Setting the current revision commits a write (or restores one): no record is above it then. */
  set currentRev(rev: number) {
    this.#currentRev = rev;
    this.#top = rev;
  }

  /**
   * Loads a restored snapshot's keys: `keys` strictly ascending, `offsets[i]` where key i's
   * encoded records start in `source`. Builds the index bottom-up in O(n) (no per-key insert).
   * `currentRev` must be set first (or right after): no record is above it.
   */
  load(source: Buffer, keys: string[], offsets: number[]): void {
    this.source = keys.length > 0 ? source : undefined;
    this.index = bulkLoad<string, Records>(keys, offsets, indexNodeSize, compareKeys);
    this.#live = undefined;
  }

  /** Takes over another key space's state (a restored Raft snapshot). */
  replaceWith(other: Mvcc): void {
    this.index = other.index;
    this.source = other.source;
    this.currentRev = other.currentRev;
    this.compactRev = other.compactRev;
    this.#top = other.#top;
    this.#live = other.#live;
    this.#liveOf = other.#liveOf;
  }

  /** The index's root when the last `entry()` found its key in a leaf only the index owns. */
  #slotRoot: IndexNode | undefined;
  #slotLeaf: IndexNode | undefined;
  #slotAt = 0;

  /**
   * The key's index entry (`index.get`), remembering the leaf slot it was found in when no node
   * on the way is shared with a clone of the index (copy-on-write: `clone()` marks the root
   * shared, and a write marks the children of each node it copies), so that the write that
   * follows can replace it without a second walk down the tree (`#replace`). Reads sorted-btree's
   * nodes (2.x: `_root`, `keys`, `children`, `values`, `isShared`); the index compares keys with
   * plain `<`, as here.
   */
  entry(key: string): Records | undefined {
    const root = (this.index as unknown as { _root: IndexNode })._root;
    let node = root;
    let owned = !root.isShared;
    for (;;) {
      const keys = node.keys;
      // The first key at or above `key` (a child holds the keys up to its own key here).
      let lo = 0;
      let hi = keys.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (keys[mid]! < key) lo = mid + 1;
        else hi = mid;
      }
      const children = node.children;
      if (children === undefined) {
        if (lo >= keys.length || keys[lo] !== key) return undefined;
        this.#slotRoot = owned ? root : undefined;
        this.#slotLeaf = node;
        this.#slotAt = lo;
        return node.values[lo];
      }
      if (lo >= children.length) return undefined;
      node = children[lo]!;
      if (node.isShared) owned = false;
    }
  }

  /**
   * Sets a key's index entry, in place when the last `entry()` found `key` at a slot only the
   * index owns and nothing changed the tree since (same root, still not shared, the key and its
   * old entry `was` still there), else with `index.set`.
   */
  #replace(key: string, was: Records, value: Records): void {
    const leaf = this.#slotLeaf;
    const at = this.#slotAt;
    const root = this.#slotRoot;
    this.#slotRoot = this.#slotLeaf = undefined;
    if (
      root !== undefined &&
      root === (this.index as unknown as { _root: IndexNode })._root &&
      !root.isShared &&
      leaf!.keys[at] === key &&
      leaf!.values[at] === was
    )
      leaf!.values[at] = value;
    else this.index.set(key, value);
  }

  /** A key's records, decoded (and kept decoded) if they were still encoded; undefined if none. */
  records(key: string): KeyRecord[] | undefined {
    const r = this.index.get(key);
    if (r === undefined || Array.isArray(r)) return r;
    const recs = this.#peek(key, r);
    this.#decoded(key, recs);
    return recs;
  }

  /**
   * The key's latest record (its last one) if it is a put, else undefined (no key, or deleted),
   * from its index entry `r`; an encoded one is read without decoding the key's records (the
   * record returned is not kept).
   */
  latest(key: string, r: Records | undefined): KeyRecord | undefined {
    if (r === undefined) return undefined;
    if (typeof r === 'number') return lastEncodedPut(this.source!, r, key.length);
    const last =
      r instanceof KeyRecord ? r : Array.isArray(r) ? r[r.length - 1]! : r.recs[r.recs.length - 1]!;
    return last.isPut ? last : undefined;
  }

  /** Replaces a key's encoded records with their decoding, in the index and the live keys. */
  #decoded(key: string, recs: KeyRecord[]): void {
    this.index.set(key, recs);
    if (recs[recs.length - 1]!.isPut) this.#live?.set(key, recs);
  }

  /**
   * The whole records of an entry, decoding without keeping the result (while iterating the
   * index, which must not change). A `Touched` entry gives a new array (its `recs` stay as they are).
   */
  #peek(key: string, r: Records): KeyRecord[] {
    if (typeof r === 'number') return decodeRecords(this.source!, r, key.length);
    if (Array.isArray(r)) return r;
    if (r instanceof KeyRecord) return decodeRecords(this.source!, r.encodedAt, key.length).concat(r);
    return decodeRecords(this.source!, r.off, key.length).concat(r.recs);
  }

  /**
   * Checks the invariants stated in the file comment over the whole key space, between writes,
   * and throws a `StoreInvariantError` naming the key and the broken rule. O(records), decoding
   * encoded keys into throwaway arrays (the index is not changed): for the store tests and
   * simulations after every step, not for the request path. The put rules are etcd's
   * (mvcc/kvstore_txn.go `put`): a put's mod revision is its own main revision; a put of a live
   * key keeps its create revision and adds 1 to its version; a put after a tombstone (or as the
   * key's first record ever) starts a new generation: create = main, version = 1. The first record
   * kept after a compaction may be a put from the middle of a generation, so it is exempt from the
   * create/version rule.
   */
  checkInvariants(): void {
    const cur = this.#currentRev;
    if (!(this.compactRev >= 0 && this.compactRev <= cur))
      throw new StoreInvariantError(`compactRev ${this.compactRev} is not within [0, currentRev ${cur}]`);
    if (this.#top !== cur)
      throw new StoreInvariantError(`a write is open: records reach ${this.#top}, currentRev is ${cur}`);
    let liveKeys = 0;
    const live = this.#liveOf === this.index ? this.#live : undefined;
    this.index.forEachPair((k, entry) => {
      const where = `key ${JSON.stringify(k)}`;
      const recs = this.#peek(k, entry);
      if (recs.length === 0) throw new StoreInvariantError(`${where} has no records`);
      if (!recs[0]!.isPut) throw new StoreInvariantError(`${where}: its first record is a tombstone`);
      for (let i = 0; i < recs.length; i++) {
        const r = recs[i]!;
        const at = `${where} record ${i} {${r.main}, ${r.sub}}`;
        if (r.main > cur) throw new StoreInvariantError(`${at} is above currentRev ${cur}`);
        const p = i > 0 ? recs[i - 1]! : undefined;
        if (p && (r.main < p.main || (r.main === p.main && r.sub <= p.sub)))
          throw new StoreInvariantError(`${at} is not after {${p.main}, ${p.sub}}`);
        if (!r.isPut) {
          if (p && !p.isPut) throw new StoreInvariantError(`${at}: two tombstones in a row`);
          continue;
        }
        if (r.mod !== r.main) throw new StoreInvariantError(`${at}: mod revision ${r.mod} is not its main`);
        if (r.version < 1 || r.create < 1 || r.create > r.main)
          throw new StoreInvariantError(`${at}: create ${r.create}, version ${r.version}`);
        if (p?.isPut && (r.create !== p.create || r.version !== p.version + 1))
          throw new StoreInvariantError(
            `${at}: create ${r.create}, version ${r.version} after a put with create ${p.create}, version ${p.version}`,
          );
        if (p && !p.isPut && (r.create !== r.main || r.version !== 1))
          throw new StoreInvariantError(
            `${at}: create ${r.create}, version ${r.version} after a tombstone (expected ${r.main}, 1)`,
          );
        if (r.hasKv && keyString(r.kv!.key) !== k)
          throw new StoreInvariantError(`${at}: its kv holds key ${JSON.stringify(keyString(r.kv!.key))}`);
      }
      const isLive = recs[recs.length - 1]!.isPut;
      if (isLive) liveKeys++;
      if (live && live.has(k) !== isLive)
        throw new StoreInvariantError(
          `${where} is ${isLive ? 'live but not' : 'deleted but still'} in the live keys`,
        );
    });
    if (live && live.size !== liveKeys)
      throw new StoreInvariantError(`the live keys hold ${live.size} keys, the index ${liveKeys} live ones`);
  }

  /** The encoded bytes of an undecoded entry (the snapshot writer copies them as they are). */
  encoded(r: number): Uint8Array {
    return this.source!.subarray(r, encodedRecordsEnd(this.source!, r));
  }

  checkRevision(rev: number): number {
    if (rev <= 0) return this.currentRev;
    if (rev > this.currentRev)
      throw new ConclaveError(ErrorCode.FutureRevision, 'mvcc: required revision is a future revision');
    if (rev < this.compactRev) {
      throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted', {
        compactRevision: this.compactRev,
      });
    }
    return rev;
  }

  /** The key's state at `rev`, or undefined. */
  getAt(key: string, rev: number): KeyValue | undefined {
    const r = this.index.get(key);
    if (r === undefined) return undefined;
    // At or above a touched key's first write since the restore, its encoded records are older.
    if (r instanceof Touched && rev >= r.recs[0]!.main) return recordAt(r.recs, rev)?.kv;
    if (r instanceof KeyRecord && rev >= r.main) return r.kv;
    let recs: KeyRecord[];
    if (Array.isArray(r)) recs = r;
    else {
      recs = this.#peek(key, r);
      this.#decoded(key, recs);
    }
    return recordAt(recs, rev)?.kv;
  }

  /**
   * Live keys in [start, end) at `rev`, in key order; end '' = the single key, '\0' = to the end.
   * Stops after `max` visits.
   */
  scan(
    start: string,
    end: string,
    rev: number,
    visit: (key: string, kv: KeyValue) => void,
    max = Number.POSITIVE_INFINITY,
  ): void {
    if (max <= 0) return;
    if (end === '') {
      const kv = this.getAt(start, rev);
      if (kv) visit(start, kv);
      return;
    }
    const span = this.#span(start, end, rev);
    if (!span) return;
    const { tree, high, latest } = span;
    let visited = 0;
    // Entries decoded on the way are kept once the iteration is over (the tree must not change
    // under its iteration).
    let decoded: Array<[string, KeyRecord[]]> | undefined;
    tree.forRange(start, high, end === '\u0000', (k, r) => {
      let kv: KeyValue | undefined;
      // A touched key's encoded records are all older than its first write since the restore.
      if (r instanceof KeyRecord && rev >= r.main) kv = r.kv;
      else {
        let recs: KeyRecord[];
        if (Array.isArray(r)) recs = r;
        else if (r instanceof Touched && rev >= r.recs[0]!.main) recs = r.recs;
        else {
          recs = this.#peek(k, r);
          (decoded ??= []).push([k, recs]);
        }
        kv = latest ? recs[recs.length - 1]!.kv : recordAt(recs, rev)?.kv;
      }
      if (!kv) return;
      visit(k, kv);
      if (++visited >= max) return { break: true };
    });
    if (decoded) for (const [k, recs] of decoded) this.#decoded(k, recs);
  }

  /**
   * The tree a range read at `rev` walks, and its inclusive upper key (`end` '\0': the last key);
   * undefined when the range is empty. At or above every record, a key's state is its latest
   * record, and only live keys have one: the live tree.
   */
  #span(
    start: string,
    end: string,
    rev: number,
  ): { tree: BTree<string, Records>; high: string; latest: boolean } | undefined {
    const latest = rev >= this.#top;
    const tree = latest
      ? this.#liveOf === this.index && this.#live
        ? this.#live
        : this.#buildLive()
      : this.index;
    const high = end === '\u0000' ? tree.maxKey() : end;
    if (high === undefined || start > high) return undefined;
    return { tree, high, latest };
  }

  /**
   * How many keys `scan` would visit, without making their KeyValues (a `countOnly` read, or the
   * count beside a limited one). At the latest revision that is the size of the live tree's range;
   * at an older one each key's record at `rev` is looked at (an encoded key is decoded for that,
   * but not kept: counting a large range must not leave it decoded in memory).
   */
  count(start: string, end: string, rev: number): number {
    if (end === '') return this.getAt(start, rev) ? 1 : 0;
    const span = this.#span(start, end, rev);
    if (!span) return 0;
    const { tree, high, latest } = span;
    if (latest) return tree.forRange(start, high, end === '\u0000');
    let n = 0;
    tree.forRange(start, high, end === '\u0000', (k, r) => {
      if (r instanceof KeyRecord && rev >= r.main) {
        if (r.isPut) n++;
        return;
      }
      const recs = Array.isArray(r)
        ? r
        : r instanceof Touched && rev >= r.recs[0]!.main
          ? r.recs
          : this.#peek(k, r);
      if (recordAt(recs, rev)?.isPut) n++;
    });
    return n;
  }

  /**
   * Keys whose latest record is a put (etcd_debugging_mvcc_keys_total: etcd's keysGauge goes up
   * when a key is created and down at its tombstone, mvcc/key_index.go). The size of the live
   * tree, built here if no read at the latest revision has built it yet.
   */
  liveKeys(): number {
    return (this.#liveOf === this.index && this.#live ? this.#live : this.#buildLive()).size;
  }

  /**
   * Builds `#live` from the index (see there). When every key is live (a store restored from a
   * snapshot without tombstones, the common case) it is a copy-on-write clone of the index: O(1),
   * and the two trees share their nodes until a write copies the path it changes.
   */
  #buildLive(): BTree<string, Records> {
    const src = this.source;
    const isLive = (r: Records): boolean => {
      if (typeof r === 'number') return lastEncodedIsPut(src!, r);
      if (r instanceof KeyRecord) return r.isPut;
      const recs = Array.isArray(r) ? r : r.recs;
      return recs[recs.length - 1]!.isPut;
    };
    // First pass: stops at the first key that is not live.
    const allLive = this.index.forEachPair((_k, r) => (isLive(r) ? undefined : { break: false })) !== false;
    if (allLive) this.#live = this.index.clone();
    else {
      const keys: string[] = [];
      const values: Records[] = [];
      this.index.forEachPair((k, r) => {
        if (!isLive(r)) return;
        keys.push(k);
        values.push(r);
      });
      this.#live = bulkLoad<string, Records>(keys, values, indexNodeSize, compareKeys);
    }
    this.#liveOf = this.index;
    return this.#live;
  }

  /** Undo actions of the current write, run in reverse if it fails midway (a txn is all or nothing). */
  undo: Array<() => void> | undefined;

  /**
   * Writes a put at {main, sub} (at or above every record: `main` is the write's revision); returns
   * its watch event. `entry` and `prev` may be passed when the caller already looked them up (the
   * key's index entry, and `latest(key, entry)`, which includes the txn's earlier writes: the
   * put's version and create revision follow from it). A key still encoded in the restored
   * snapshot is not decoded: it becomes `Touched`. The record keeps where `keyB` and `value` are
   * (their bytes: a command's entry), not the views themselves (see `KeyRecord`).
   */
  put(
    key: string,
    keyB: Uint8Array,
    value: Uint8Array,
    lease: bigint,
    main: number,
    sub: number,
    entry: Records | undefined = this.entry(key),
    prev: KeyRecord | undefined = this.latest(key, entry),
  ): MvccEvent {
    const create = prev ? prev.create : main;
    const version = prev ? prev.version + 1 : 1;
    // A key whose records get read (a watcher, say: its predecessor's kv was made) gets its kv at
    // once from the views at hand, the predecessor's key and the command's value (made later it
    // would take two more views); else the record keeps where the bytes are (`LazyRecord`). A
    // restored key's first write since the restore becomes its index entry (see `Touched`).
    const r: KeyRecord = prev?.hasKv
      ? new KvRecord(main, sub, {
          key: prev.kv!.key,
          createRevision: create,
          modRevision: main,
          version,
          value,
          lease,
        })
      : new LazyRecord(
          main,
          sub,
          value.length,
          value.buffer,
          value.byteOffset,
          keyB.buffer,
          keyB.byteOffset,
          keyB.length,
          create,
          main,
          version,
          lease,
          typeof entry === 'number' ? entry : -1,
        );
    // The event's prevKv: none for a create, else the key before this revision (`prev` unless
    // the txn wrote the key already; an encoded key's records are all below `main`).
    const before = !prev
      ? undefined
      : typeof entry === 'number'
        ? prev
        : this.#recordBefore(key, entry!, main);
    this.#append(key, entry, r);
    return new PutEvent(r, before, key);
  }

  /** The key's record before revision `main` (at main - 1), from its index entry; undefined if none. */
  #recordBefore(key: string, r: Records, main: number): KeyRecord | undefined {
    // An encoded key has no record at or above `main` (only a write in progress has).
    if (typeof r === 'number') return lastEncodedPut(this.source!, r, key.length);
    if (Array.isArray(r)) return recordBefore(r, main);
    if (r instanceof KeyRecord)
      return r.main < main ? r : lastEncodedPut(this.source!, r.encodedAt, key.length);
    const recs = r.recs;
    for (let i = recs.length - 1; i >= 0; i--) if (recs[i]!.main < main) return recs[i];
    return lastEncodedPut(this.source!, r.off, key.length);
  }

  /** Writes a tombstone at {main, sub} if the key is live at `main`. */
  delete(key: string, main: number, sub: number): MvccDelete | undefined {
    const recs = this.records(key);
    const prev = recs ? recordAt(recs, main)?.kv : undefined;
    if (!recs || !prev) return undefined;
    const before = recs[recs.length - 1]!.main === main ? recordBefore(recs, main)?.kv : prev;
    this.#append(key, recs, KeyRecord.tombstone(main, sub));
    const kv = deletedKv(prev.key, main);
    return { event: before ? { type: 'delete', kv, prevKv: before } : { type: 'delete', kv }, prev };
  }

  /** Appends a record (above every other of the key) to its index entry `entry`, with its undo. */
  #append(key: string, entry: Records | undefined, r: KeyRecord): void {
    // A write's records are above every committed one (etcd's revisions only grow): a record at or
    // below currentRev would rewrite history that reads, watches and snapshots have already seen.
    storeAssert(
      r.main > this.#currentRev,
      `a write at revision ${r.main} of ${JSON.stringify(key)} is not above currentRev ${this.#currentRev}`,
    );
    if (r.main > this.#top) {
      this.#top = r.main;
      this.undo?.push(() => {
        this.#top = this.#currentRev;
      });
    }
    if (entry === undefined) {
      const added = [r];
      this.index.set(key, added);
      this.#live?.set(key, added);
      this.undo?.push(() => {
        this.index.delete(key);
        this.#live?.delete(key);
      });
      return;
    }
    if (typeof entry === 'number') {
      // A restored key's first write since the restore: its encoded records stay as they are.
      const src = this.source!;
      const wasLive = lastEncodedIsPut(src, entry);
      // The record is the entry (its `encodedAt` is `entry`): no Touched, no array yet.
      const e = r.encodedAt === entry ? r : new Touched(entry, [r]);
      this.#replace(key, entry, e);
      if (r.isPut) this.#live?.set(key, e);
      else this.#live?.delete(key);
      this.undo?.push(() => {
        // Whatever the entry became meanwhile (a later op of the write may have decoded it, and
        // its own undo already ran), it holds the encoded records and this one.
        this.index.set(key, entry);
        if (wasLive) this.#live?.set(key, entry);
        else this.#live?.delete(key);
      });
      return;
    }
    if (entry instanceof KeyRecord) {
      // A touched key's second record since the restore.
      const t = new Touched(entry.encodedAt, [entry, r]);
      this.#replace(key, entry, t);
      if (r.isPut) this.#live?.set(key, t);
      else this.#live?.delete(key);
      this.undo?.push(() => {
        // As for the first write: whatever the entry became, it held `entry` and this record.
        this.index.set(key, entry);
        if (entry.isPut) this.#live?.set(key, entry);
        else this.#live?.delete(key);
      });
      return;
    }
    const recs = Array.isArray(entry) ? entry : entry.recs;
    const last = recs[recs.length - 1]!;
    // A key's records stay in {main, sub} order: reads find a revision's record by that order.
    storeAssert(
      last.main < r.main || (last.main === r.main && last.sub < r.sub),
      `record {${r.main}, ${r.sub}} of ${JSON.stringify(key)} is not after its last {${last.main}, ${last.sub}}`,
    );
    const wasLive = last.isPut;
    // A touched key's first few records: an exact copy (a push would reserve 17 slots).
    if (recs !== entry && recs.length < touchedCopiedMax) (entry as Touched).recs = recs.concat(r);
    else recs.push(r);
    if (!r.isPut) this.#live?.delete(key);
    else if (!wasLive) this.#live?.set(key, entry);
    this.undo?.push(() => {
      // The key's entry as it is now: a `Touched` one may have been decoded by a later op of the
      // write (whose undo already ran), and this record is its last either way.
      const now = this.index.get(key)!;
      (Array.isArray(now) ? now : (now as Touched).recs).pop();
      // `#live` as it is now: it may have been built after this record was appended.
      if (wasLive) this.#live?.set(key, now);
      else this.#live?.delete(key);
    });
  }

  /**
   * The events of every revision in [fromRev, toRev) still held in the records, in revision
   * order ({main, sub} order: a key written twice in one txn gives two events), each with the
   * prevKv a live watch got (the key at the revision before) — what a watch replays. Used to fill
   * a watch hub's history for revisions it did not see applied (before a restore or a restart).
   */
  eventsSince(
    fromRev: number,
    toRev = Number.POSITIVE_INFINITY,
  ): Array<{ rev: number; events: MvccEvent[] }> {
    const byRev = new Map<number, Array<{ sub: number; ev: MvccEvent }>>();
    this.index.forEachPair((k, entry) => {
      // An undecoded key whose last record is older than fromRev has nothing to replay.
      if (typeof entry === 'number' && lastEncodedMain(this.source!, entry) < fromRev) return;
      if (entry instanceof Touched && entry.recs[entry.recs.length - 1]!.main < fromRev) return;
      if (entry instanceof KeyRecord && entry.main < fromRev) return;
      const recs = this.#peek(k, entry);
      for (let i = 0; i < recs.length; i++) {
        const r = recs[i]!;
        if (r.main < fromRev) continue;
        if (r.main >= toRev) break;
        const before = r.isPut && r.create === r.main ? undefined : recordBefore(recs, r.main, i - 1)?.kv;
        let ev: MvccEvent;
        if (r.isPut) ev = before ? { type: 'put', kv: r.kv!, prevKv: before } : { type: 'put', kv: r.kv! };
        else {
          // A tombstone follows a put (of this revision or an earlier one): that put has the key.
          const kv = deletedKv(recs[i - 1]!.kv!.key, r.main);
          ev = before ? { type: 'delete', kv, prevKv: before } : { type: 'delete', kv };
        }
        let list = byRev.get(r.main);
        if (!list) byRev.set(r.main, (list = []));
        list.push({ sub: r.sub, ev });
      }
    });
    return [...byRev.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([rev, list]) => ({ rev, events: list.sort((a, b) => a.sub - b.sub).map((x) => x.ev) }));
  }

  /**
   * etcd's compaction rules: drops history below `rev` but keeps each key's state at `rev` (its
   * last record at or below `rev`, unless that is a tombstone, and every record above).
   */
  compact(rev: number): void {
    if (rev <= this.compactRev) {
      throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted', {
        compactRevision: this.compactRev,
      });
    }
    if (rev > this.currentRev)
      throw new ConclaveError(ErrorCode.FutureRevision, 'mvcc: required revision is a future revision');
    this.compactRev = rev;
    const drop: string[] = [];
    const decoded: Array<[string, KeyRecord[]]> = [];
    this.index.forEachPair((k, entry) => {
      // An undecoded key with a single put keeps it whatever `rev` is: leave it encoded.
      if (typeof entry === 'number' && isSingleEncodedPut(this.source!, entry)) return;
      const recs = this.#peek(k, entry);
      if (recs !== entry) decoded.push([k, recs]);
      let keepFrom = 0;
      for (let i = recs.length - 1; i >= 0; i--) {
        if (recs[i]!.main <= rev) {
          keepFrom = recs[i]!.isPut ? i : i + 1;
          break;
        }
      }
      if (keepFrom > 0) recs.splice(0, keepFrom);
      if (recs.length === 0) drop.push(k);
    });
    // A key whose records all go had a tombstone last: it is not live.
    for (const [k, recs] of decoded) if (recs.length > 0) this.#decoded(k, recs);
    for (const k of drop) this.index.delete(k);
  }
}
