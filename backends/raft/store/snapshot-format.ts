/**
 * The store snapshot's byte format: laid out here, and every record encoded and decoded here
 * (snapshot.ts frames and slices a snapshot; mvcc.ts reads a restored key's records lazily
 * through these functions, never by offset arithmetic of its own).
 *
 * Format 2 (binary; format 1 was JSON with base64 bytes, which took seconds and several times the
 * store's size in transient strings for a million keys). All integers are u64 LE (safe integers)
 * unless noted; `bytes` is a u32 LE length then the bytes.
 *
 *   [format u8 = 2][applied][rev][compact][keys]
 *   keys × ([key: bytes][records u32] records × ([main][sub][kind u8: 0 tombstone, 1 value]
 *            value records: [create][mod][version][lease i64][value: bytes]))
 *   [leases u32] leases × ([id i64][ttl f64][granted f64][keys u32] keys × [key: bytes])
 *   optionally, once auth was ever changed or an alarm is raised: [auth: bytes]
 *            (store/auth-store.ts `encode`, JSON)
 *   optionally, while an alarm is raised: [alarms] (store/alarms.ts `encode`)
 *
 *
 * A record, as the named offsets below give it (from the record's first byte):
 *   [main u64 @0][sub u64 @8][kind u8 @16]                      recordHeaderBytes = 17
 *   put only: [create u64][mod u64][version u64][lease i64][value length u32][value bytes]
 *             @17          @25       @33           @41        @49                @53
 * A key's records are [count u32] then the records, oldest first; the key's bytes come just
 * before the count.
 */
import { KeyRecord, LazyRecord } from './key-record.js';

/** The store snapshot format this build writes and reads. */
export const storeSnapshotFormat = 2;

/** A record's header: main and sub revision (u64 each) and its kind (u8). */
export const recordHeaderBytes = 17;
/** Offset of the kind byte in a record: `kindTombstone` or `kindPut`. */
export const recordKindAt = 16;
export const kindTombstone = 0;
export const kindPut = 1;
/** A put's fields after the header: create, mod, version (u64), lease (i64), value length (u32). */
export const putFieldsBytes = 36;
/** Offsets in a put's fields (after the header). */
const createAt = 0;
const modAt = 8;
const versionAt = 16;
const leaseAt = 24;
export const valueLengthAt = 32;
/** The record count before a key's records. */
export const recordCountBytes = 4;

/** A u64 LE of a safe integer. */
export const u64 = (b: Buffer, o: number): number =>
  b.readUInt32LE(o + 4) * 0x1_0000_0000 + b.readUInt32LE(o);

export function putU64(b: Buffer, o: number, v: number): void {
  b.writeUInt32LE(v >>> 0, o);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), o + 4);
}

/** A u64 LE of a safe integer (DataView accessors are inlined by the JIT; Buffer's are not). */
export function setU64(dv: DataView, o: number, v: number): void {
  dv.setUint32(o, v >>> 0, true);
  dv.setUint32(o + 4, Math.floor(v / 0x1_0000_0000), true);
}

/** Bytes of one encoded record at `o`. */
const recordBytes = (b: Buffer, o: number): number =>
  b[o + recordKindAt] === kindTombstone
    ? recordHeaderBytes
    : recordHeaderBytes + putFieldsBytes + b.readUInt32LE(o + recordHeaderBytes + valueLengthAt);

/** Bytes `r` takes encoded (the size pass of the writer reads fields only, never `kv`). */
export const encodedRecordBytes = (r: KeyRecord): number =>
  recordHeaderBytes + (r.isPut ? putFieldsBytes + r.valueLength : 0);

/** Writes `r` at `o` (the buffer is sized by `encodedRecordBytes`); returns the offset after it. */
export function writeRecord(dv: DataView, b: Buffer, o: number, r: KeyRecord): number {
  setU64(dv, o, r.main);
  setU64(dv, o + 8, r.sub);
  o += recordKindAt;
  if (!r.isPut) {
    b[o++] = kindTombstone;
    return o;
  }
  b[o++] = kindPut;
  setU64(dv, o + createAt, r.create);
  setU64(dv, o + modAt, r.mod);
  setU64(dv, o + versionAt, r.version);
  // Most keys have no lease: no BigInt arithmetic (and garbage) for 0.
  if (r.lease === 0n) setU64(dv, o + leaseAt, 0);
  else dv.setBigInt64(o + leaseAt, r.lease, true);
  dv.setUint32(o + valueLengthAt, r.valueLength, true);
  b.set(r.value(), o + putFieldsBytes);
  return o + putFieldsBytes + r.valueLength;
}

/** The end offset of the encoded records at `off` (already validated by the restore). */
export function encodedRecordsEnd(b: Buffer, off: number): number {
  const n = b.readUInt32LE(off);
  let o = off + recordCountBytes;
  for (let j = 0; j < n; j++) o += recordBytes(b, o);
  return o;
}

/** The encoded record at `o` of the key whose records start at `off`; its bytes stay in `b`. */
function decodeRecord(b: Buffer, o: number, off: number, keyLength: number): KeyRecord {
  const main = u64(b, o);
  const sub = u64(b, o + 8);
  if (b[o + recordKindAt] === kindTombstone) return KeyRecord.tombstone(main, sub);
  o += recordHeaderBytes;
  const lo = b.readUInt32LE(o + leaseAt);
  const hi = b.readInt32LE(o + leaseAt + 4);
  return new LazyRecord(
    main,
    sub,
    b.readUInt32LE(o + valueLengthAt),
    b.buffer,
    b.byteOffset + o + putFieldsBytes,
    b.buffer,
    b.byteOffset + off - keyLength,
    keyLength,
    u64(b, o + createAt),
    u64(b, o + modAt),
    u64(b, o + versionAt),
    // Most keys have no lease: skip the BigInt allocation for 0.
    lo === 0 && hi === 0 ? 0n : b.readBigInt64LE(o + leaseAt),
    -1,
  );
}

/** Decodes a key's records (their key and value bytes stay in `b`). */
export function decodeRecords(b: Buffer, off: number, keyLength: number): KeyRecord[] {
  const n = b.readUInt32LE(off);
  const recs: KeyRecord[] = new Array(n);
  let o = off + recordCountBytes;
  for (let j = 0; j < n; j++) {
    recs[j] = decodeRecord(b, o, off, keyLength);
    o += recordBytes(b, o);
  }
  return recs;
}

/** The offset of the last encoded record of the records at `off`. */
function lastEncoded(b: Buffer, off: number): number {
  const n = b.readUInt32LE(off);
  let o = off + recordCountBytes;
  for (let j = 0; j < n - 1; j++) o += recordBytes(b, o);
  return o;
}

/**
 * The last encoded record of the records at `off` if it is a put, else undefined. Not kept by the
 * index: a put reads its predecessor this way.
 */
export function lastEncodedPut(b: Buffer, off: number, keyLength: number): KeyRecord | undefined {
  const o = lastEncoded(b, off);
  return b[o + recordKindAt] === kindTombstone ? undefined : decodeRecord(b, o, off, keyLength);
}

/** Whether the last encoded record of the records at `off` is a put (the key is live). */
export const lastEncodedIsPut = (b: Buffer, off: number): boolean =>
  b[lastEncoded(b, off) + recordKindAt] === kindPut;

/** The main revision of the last encoded record of the records at `off`. */
export const lastEncodedMain = (b: Buffer, off: number): number => u64(b, lastEncoded(b, off));

/** Whether the records at `off` are a single put (compaction keeps such a key as it is). */
export const isSingleEncodedPut = (b: Buffer, off: number): boolean =>
  b.readUInt32LE(off) === 1 && b[off + recordCountBytes + recordKindAt] === kindPut;
