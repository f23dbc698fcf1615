/**
 * Snapshot and restore of the whole store: every key's records since compaction, the current and
 * compacted revisions, leases (granted TTL and attached keys) and the applied Raft index. Used for
 * Raft snapshots and log compaction. Lease deadlines are volatile and not included: whoever
 * restores and leads calls `leases.promote(now)`, as a new leader would.
 *
 * The byte format, and every read and write of a record, is in snapshot-format.ts.
 *
 * It is written in two passes (size, then bytes into one exact buffer); a key whose records were
 * never decoded since the store was restored is copied as the bytes it was restored from, and a
 * key only put to since (`Touched` in mvcc.ts) as those bytes with its new records after them.
 *
 * Taking a snapshot without stopping the member (`snapshotStoreSliced`): the state at the applied
 * index is frozen synchronously in O(1) for the keys — the key index is a copy-on-write B+ tree,
 * cloned; each key's records array is shared with the live store but only ever grows with
 * revisions above the frozen one (writes append, a txn's later op on a key replaces or adds
 * records at its own new revision, a failed write's undo removes its own), so the writer keeps a
 * key's records with main revision <= the frozen revision — and the lease table (small, and
 * mutated in place) is encoded at once. The two passes then run in slices of at most `sliceMs`
 * between event-loop turns while the store keeps applying. Compaction is the one operation that
 * edits old records in place (`Mvcc.compact` splices them): a snapshot during which the compact
 * revision changes is abandoned (the caller retries later).
 *
 * Restoring validates the whole buffer (every length, record kind and integer bound, keys in
 * strictly ascending order, nothing after the end) but decodes no records: the key index is
 * bulk-loaded with each key's offset, and records are decoded on first use (mvcc.ts). The store
 * keeps `data` as its backing bytes: the caller must not modify it afterwards.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import {
  asTouched,
  encodedRecordsEnd,
  type KeyRecord,
  latin1String,
  type Mvcc,
  type Records,
  Touched,
} from './mvcc.js';
import {
  encodedRecordBytes,
  kindPut,
  kindTombstone,
  putFieldsBytes,
  putU64,
  recordHeaderBytes,
  recordKindAt,
  storeSnapshotFormat,
  valueLengthAt,
  writeRecord,
} from './snapshot-format.js';
import { Store } from './store.js';

export { storeSnapshotFormat } from './snapshot-format.js';

type KeyIndex = Mvcc['index'];

/** A store's state frozen at one applied index, to be encoded later (see the file comment). */
interface FrozenStore {
  readonly appliedIndex: number;
  readonly revision: number;
  readonly compactRev: number;
  /** A copy-on-write clone of the key index: it never changes after the freeze. */
  readonly index: KeyIndex;
  /** The restored snapshot that undecoded (numeric) entries of `index` point into. */
  readonly source: Buffer | undefined;
  /** The lease section, encoded at the freeze. */
  readonly leases: Buffer;
}

function freeze(store: Store): FrozenStore {
  const leases = store.leases.byId;
  let size = 4;
  for (const l of leases.values()) {
    size += 8 + 8 + 8 + 4;
    for (const k of l.keys) size += 4 + k.length;
  }
  const b = Buffer.allocUnsafe(size);
  b.writeUInt32LE(leases.size, 0);
  let o = 4;
  for (const l of leases.values()) {
    b.writeBigInt64LE(l.id, o);
    b.writeDoubleLE(l.ttlSeconds, o + 8);
    b.writeDoubleLE(l.grantedTtlSeconds, o + 16);
    b.writeUInt32LE(l.keys.size, o + 24);
    o += 28;
    for (const k of l.keys) {
      b.writeUInt32LE(k.length, o);
      // Index keys are latin1 strings, one char per byte.
      b.write(k, o + 4, k.length, 'latin1');
      o += 4 + k.length;
    }
  }
  // The auth section rides after the leases (absent while auth was never changed, so such a
  // snapshot is byte-identical to one written before auth existed), and the alarm section after
  // it (absent while no alarm is raised; the auth section is then written whatever its state).
  const alarms = store.alarms.size > 0 ? store.alarms.encode() : undefined;
  const auth = store.auth.revision > 1 || alarms ? Buffer.from(store.auth.encode()) : undefined;
  const len = Buffer.alloc(auth ? 4 : 0);
  if (auth) len.writeUInt32LE(auth.length, 0);
  return {
    appliedIndex: store.appliedIndex,
    revision: store.mvcc.currentRev,
    compactRev: store.mvcc.compactRev,
    index: store.mvcc.index.clone(),
    source: store.mvcc.source,
    leases: auth ? Buffer.concat(alarms ? [b, len, auth, alarms] : [b, len, auth]) : b,
  };
}

/** How many of `recs` (ascending revisions) are at or below `rev`. */
function recordsUpTo(recs: readonly KeyRecord[], rev: number): number {
  let n = recs.length;
  while (n > 0 && recs[n - 1]!.main > rev) n--;
  return n;
}

const noRecords: readonly KeyRecord[] = [];

/** Keys handled between two checks of the clock. */
const keysPerStep = 64;

/**
 * Encodes a frozen store; yields every `keysPerStep` keys so that a driver can pause between
 * slices. Whatever the store does meanwhile (except compaction: see the file comment) does not
 * change the result.
 */
function* encodeFrozen(f: FrozenStore): Generator<void, Uint8Array, void> {
  const src = f.source;
  const rev = f.revision;
  const pair: [string, Records] = ['', 0];
  // Pass 1: the exact size and the number of keys.
  let size = 1 + 8 * 4;
  let keys = 0;
  let step = 0;
  for (const [k, e] of f.index.entries(undefined, pair)) {
    if (++step === keysPerStep) {
      step = 0;
      yield;
    }
    if (typeof e === 'number') {
      keys++;
      size += 4 + k.length + encodedRecordsEnd(src!, e) - e;
      continue;
    }
    // A touched key: its encoded records as they are (count included), then the decoded ones.
    const entry = Array.isArray(e) ? e : asTouched(e);
    const touched = entry instanceof Touched;
    const recs = touched ? entry.recs : entry;
    const n = recordsUpTo(recs, rev);
    if (n === 0 && !touched) continue; // written after the freeze (not possible for a key in the clone)
    keys++;
    size += 4 + k.length + (touched ? encodedRecordsEnd(src!, entry.off) - entry.off : 4);
    // Record fields, not `kv` (which would make every record's KeyValue).
    for (let i = 0; i < n; i++) size += encodedRecordBytes(recs[i]!);
  }
  size += f.leases.length;
  // Pass 2: the bytes.
  const b = Buffer.allocUnsafeSlow(size);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 0;
  b[o++] = storeSnapshotFormat;
  putU64(b, o, f.appliedIndex);
  putU64(b, o + 8, rev);
  putU64(b, o + 16, f.compactRev);
  putU64(b, o + 24, keys);
  o += 32;
  for (const [k, e] of f.index.entries(undefined, pair)) {
    if (++step === keysPerStep) {
      step = 0;
      yield;
    }
    const entry = typeof e === 'number' || Array.isArray(e) ? e : asTouched(e);
    let n = 0;
    let recs = noRecords;
    if (typeof entry !== 'number') {
      recs = entry instanceof Touched ? entry.recs : entry;
      n = recordsUpTo(recs, rev);
      if (n === 0 && !(entry instanceof Touched)) continue;
    }
    b.writeUInt32LE(k.length, o);
    b.write(k, o + 4, k.length, 'latin1');
    o += 4 + k.length;
    if (typeof entry === 'number') {
      o += src!.copy(b, o, entry, encodedRecordsEnd(src!, entry));
      continue;
    }
    if (entry instanceof Touched) {
      dv.setUint32(o, src!.readUInt32LE(entry.off) + n, true);
      o += 4 + src!.copy(b, o + 4, entry.off + 4, encodedRecordsEnd(src!, entry.off));
    } else {
      dv.setUint32(o, n, true);
      o += 4;
    }
    for (let i = 0; i < n; i++) o = writeRecord(dv, b, o, recs[i]!);
  }
  o += f.leases.copy(b, o);
  if (o !== size) throw new Error(`store snapshot: wrote ${o} bytes, expected ${size}`);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** The store's snapshot, in one synchronous pass (tests, small stores). */
export function snapshotStore(store: Store): Uint8Array {
  const gen = encodeFrozen(freeze(store));
  for (;;) {
    const r = gen.next();
    if (r.done) return r.value;
  }
}

/** Longest stretch of snapshot work between two event-loop turns, by default (ms). */
export const snapshotSliceMsDefault = 4;

export interface SlicedSnapshotOptions {
  /** Work at most about this long before yielding to the event loop (default `snapshotSliceMsDefault`). */
  sliceMs?: number;
  /** Checked before each slice: true gives the snapshot up (the promise resolves undefined). */
  abandoned?: () => boolean;
  /** Waits for the next event-loop turn (default: `setImmediate`). */
  nextTurn?: () => Promise<void>;
}

const setImmediateTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * A snapshot of the store as it is now (its applied index and revision), encoded in slices
 * between event-loop turns while the store keeps changing. The state is frozen synchronously
 * (O(1) for the keys, O(leased keys) for the lease table); the encoding then takes at most about
 * `sliceMs` per turn. Resolves undefined, without a snapshot, when `abandoned()` says so or when
 * the store was compacted meanwhile (compaction edits old records in place; retry later).
 */
export async function snapshotStoreSliced(
  store: Store,
  opts: SlicedSnapshotOptions = {},
): Promise<{ data: Uint8Array; index: number; revision: number } | undefined> {
  const sliceMs = opts.sliceMs ?? snapshotSliceMsDefault;
  const nextTurn = opts.nextTurn ?? setImmediateTurn;
  const f = freeze(store);
  const gen = encodeFrozen(f);
  for (;;) {
    const until = performance.now() + sliceMs;
    for (;;) {
      const r = gen.next();
      if (r.done) return { data: r.value, index: f.appliedIndex, revision: f.revision };
      if (performance.now() >= until) break;
    }
    await nextTurn();
    if (store.mvcc.compactRev !== f.compactRev || opts.abandoned?.()) {
      gen.return(new Uint8Array(0));
      return undefined;
    }
  }
}

class Reader {
  readonly b: Buffer;
  o = 0;
  constructor(data: Uint8Array) {
    this.b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }
  need(n: number): void {
    if (this.o + n > this.b.length) throw new RangeError(`truncated at byte ${this.o}`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.o++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.o);
    this.o += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const hi = this.b.readUInt32LE(this.o + 4);
    if (hi >= 0x20_0000) throw new RangeError(`an integer beyond 2^53 at byte ${this.o}`);
    const v = hi * 0x1_0000_0000 + this.b.readUInt32LE(this.o);
    this.o += 8;
    return v;
  }
  i64(): bigint {
    this.need(8);
    const v = this.b.readBigInt64LE(this.o);
    this.o += 8;
    return v;
  }
  f64(): number {
    this.need(8);
    const v = this.b.readDoubleLE(this.o);
    this.o += 8;
    return v;
  }
  latin1(): string {
    const n = this.u32();
    this.need(n);
    const s = this.b.toString('latin1', this.o, this.o + n);
    this.o += n;
    return s;
  }
  skip(n: number): void {
    this.need(n);
    this.o += n;
  }
}

const truncated = (o: number) => new RangeError(`truncated at byte ${o}`);
/** Whether the u64 LE at `o` is above 2^53 (its high word is). */
const beyondSafe = (b: Buffer, o: number): boolean => b.readUInt32LE(o + 4) >= 0x20_0000;

/**
 * Validates the key section from `o` (the `Reader` checks, inlined: one pass over a million keys
 * is the restore) and fills `names` (latin1 key strings, strictly ascending) and `offsets` (where
 * each key's records start); returns the offset after the section.
 */
function readKeys(b: Buffer, o: number, names: string[], offsets: number[]): number {
  const end = b.length;
  let prev = '';
  for (let i = 0; i < names.length; i++) {
    if (o + 4 > end) throw truncated(o);
    const kl = b.readUInt32LE(o);
    o += 4;
    if (o + kl > end) throw truncated(o);
    const key = latin1String(b, o, o + kl);
    o += kl;
    if (i > 0 && !(key > prev)) throw new RangeError(`keys out of order at byte ${o}`);
    prev = key;
    names[i] = key;
    offsets[i] = o;
    if (o + 4 > end) throw truncated(o);
    const n = b.readUInt32LE(o);
    if (n === 0) throw new RangeError(`a key without records at byte ${o}`);
    o += 4;
    for (let j = 0; j < n; j++) {
      // [main][sub][kind]
      if (o + recordHeaderBytes > end) throw truncated(o);
      if (beyondSafe(b, o) || beyondSafe(b, o + 8))
        throw new RangeError(`an integer beyond 2^53 at byte ${o}`);
      const kind = b[o + recordKindAt]!;
      o += recordHeaderBytes;
      if (kind === kindTombstone) {
        if (j === 0) throw new RangeError(`a key whose first record is a tombstone at byte ${o - 1}`);
        continue;
      }
      if (kind !== kindPut) throw new RangeError(`record kind ${kind} at byte ${o - 1}`);
      // [create][mod][version][lease i64][value: u32 length + bytes]
      if (o + putFieldsBytes > end) throw truncated(o);
      if (beyondSafe(b, o) || beyondSafe(b, o + 8) || beyondSafe(b, o + 16))
        throw new RangeError(`an integer beyond 2^53 at byte ${o}`);
      const vl = b.readUInt32LE(o + valueLengthAt);
      o += putFieldsBytes;
      if (o + vl > end) throw truncated(o);
      o += vl;
    }
  }
  return o;
}

export function restoreStore(data: Uint8Array, opts: { minTtlSeconds: number; nowMs: number }): Store {
  const format = data[0];
  if (format !== storeSnapshotFormat)
    throw new ConclaveError(
      ErrorCode.Corrupt,
      format === 0x7b
        ? `store snapshot: format 1 (JSON), written by an older Conclave; this build reads format ${storeSnapshotFormat} only (pre-1.0 data directories are not upgraded: start the member from an empty directory)`
        : `store snapshot: unknown format version ${String(format)} (this build reads ${storeSnapshotFormat})`,
    );
  try {
    return read(new Reader(data), opts);
  } catch (err) {
    throw new ConclaveError(ErrorCode.Corrupt, `store snapshot: malformed (${(err as Error).message})`, {
      cause: err,
    });
  }
}

function read(r: Reader, opts: { minTtlSeconds: number; nowMs: number }): Store {
  r.o = 1;
  const store = new Store({ minTtlSeconds: opts.minTtlSeconds });
  store.appliedIndex = r.u64();
  store.mvcc.currentRev = r.u64();
  store.mvcc.compactRev = r.u64();
  const keys = r.u64();
  // Bounded by the buffer: every key takes at least 8 bytes.
  if (keys > (r.b.length - r.o) / 8) throw new RangeError(`${keys} keys in ${r.b.length} bytes`);
  const names: string[] = new Array(keys);
  const offsets: number[] = new Array(keys);
  r.o = readKeys(r.b, r.o, names, offsets);
  store.mvcc.load(r.b, names, offsets);
  const leases = r.u32();
  for (let i = 0; i < leases; i++) {
    const id = r.i64();
    const ttl = r.f64();
    const granted = r.f64();
    const n = r.u32();
    const lk = new Set<string>();
    for (let j = 0; j < n; j++) lk.add(r.latin1());
    store.leases.byId.set(id, {
      id,
      ttlSeconds: ttl,
      grantedTtlSeconds: granted,
      keys: lk,
      expiryMs: opts.nowMs + ttl * 1000,
      revoking: false,
    });
  }
  // The auth section (a length and its bytes) when there is room for one; stray bytes fail below.
  if (r.b.length - r.o >= 4) {
    const n = r.u32();
    if (n > r.b.length - r.o) throw new RangeError(`an auth section of ${n} bytes in ${r.b.length - r.o}`);
    store.auth.restore(r.b.subarray(r.o, r.o + n));
    r.o += n;
  }
  if (r.b.length - r.o >= 4) r.o += store.alarms.restore(r.b, r.o);
  if (r.o !== r.b.length) throw new RangeError(`${r.b.length - r.o} bytes after the snapshot`);
  return store;
}
