/**
 * WAL record payloads and framing. Every record is framed as
 *
 *   [length u32 LE][crc32c u32 LE][type u8][payload: length bytes][end marker 0xA5]
 *
 * `length` counts the payload only; the CRC covers the type byte and the payload. The end marker
 * is there so that a record whose marker is missing can be told apart: it was not completely
 * written (a torn write), while a complete record with a bad CRC is corruption. Recovery needs
 * that distinction: a torn tail is truncated, corruption stops the node (see wal.ts).
 *
 * Payloads (WAL format 2; `walFormat`):
 * - Metadata: a protobuf message (node id, segment number, format version). It stays protobuf in
 *   every format so that any Conclave can read the version of any segment and refuse a format it
 *   does not know with a clear error instead of misreading the records after it.
 * - Entry: `[term u64 LE][index u64 LE][type u8][data…]` (hand-written: one per log entry, on the
 *   write path; format 1 used protobuf here).
 * - HardState: `[term u64][vote u64][commit u64]`; LogReset: `[index u64][term u64]`.
 * Integers are safe integers (< 2^53) stored as u64 LE.
 */
import protobuf from 'protobufjs';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { Entry, EntryType, HardState } from '../consensus/types.js';
import { crc32c } from './crc32c.js';

const schema = protobuf.parse(`
syntax = "proto3";
message Metadata { uint64 node_id = 1; uint64 segment = 2; uint32 version = 3; }
message SnapshotFile {
  uint64 index = 1; uint64 term = 2; repeated uint64 voters = 3; repeated uint64 learners = 4; bytes data = 5;
}
`).root;

const T = {
  Metadata: schema.lookupType('Metadata'),
  SnapshotFile: schema.lookupType('SnapshotFile'),
};

/** The WAL format this build writes and reads (in every segment's Metadata record). */
export const walFormat = 2;

export const RecordType = { Metadata: 1, HardState: 2, Entry: 3, LogReset: 4 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

/** Bytes of framing around a payload: 4 length + 4 crc + 1 type + 1 end marker. */
export const frameOverheadBytes = 10;
export const headerBytes = 9;
export const endMarker = 0xa5;
/** The largest payload a record may carry (an entry holds at most one request, itself bounded). */
export const recordPayloadBytesMax = 64 * 1024 * 1024;

export type WalRecord =
  | { type: typeof RecordType.Metadata; nodeId: number; segment: number; version?: number }
  | { type: typeof RecordType.HardState; hardState: HardState }
  | { type: typeof RecordType.Entry; entry: Entry }
  | { type: typeof RecordType.LogReset; index: number; term: number };

const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v ?? 0));

const entryHeadBytes = 17;
const hardStateBytes = 24;
const logResetBytes = 16;

function putU64(dv: DataView, o: number, v: number): void {
  dv.setUint32(o, v >>> 0, true);
  dv.setUint32(o + 4, Math.floor(v / 0x1_0000_0000), true);
}

function getU64(dv: DataView, o: number): number {
  const hi = dv.getUint32(o + 4, true);
  if (hi >= 0x20_0000) throw new RangeError(`an integer beyond 2^53 at payload offset ${o}`);
  return hi * 0x1_0000_0000 + dv.getUint32(o, true);
}

const metadataPayload = (r: Extract<WalRecord, { type: 1 }>): Uint8Array =>
  T.Metadata.encode({ nodeId: r.nodeId, segment: r.segment, version: r.version ?? walFormat }).finish();

/** The payload size of a record (Metadata records are small and rare: encoded to measure them). */
function payloadBytes(r: WalRecord): number {
  switch (r.type) {
    case RecordType.Entry:
      return entryHeadBytes + r.entry.data.length;
    case RecordType.HardState:
      return hardStateBytes;
    case RecordType.LogReset:
      return logResetBytes;
    case RecordType.Metadata:
      return metadataPayload(r).length;
  }
}

/** The framed size of a record. */
export function frameBytes(r: WalRecord): number {
  return payloadBytes(r) + frameOverheadBytes;
}

/**
 * Frames `r` into `buf` at `o` (which must have `frameBytes(r)` bytes free) and returns the bytes
 * written. The payload is written in place: no intermediate copy.
 */
export function frameInto(r: WalRecord, buf: Uint8Array, o: number): number {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const p = o + headerBytes;
  let len: number;
  switch (r.type) {
    case RecordType.Entry: {
      const e = r.entry;
      putU64(dv, p, e.term);
      putU64(dv, p + 8, e.index);
      buf[p + 16] = e.type;
      buf.set(e.data, p + entryHeadBytes);
      len = entryHeadBytes + e.data.length;
      break;
    }
    case RecordType.HardState:
      putU64(dv, p, r.hardState.term);
      putU64(dv, p + 8, r.hardState.vote);
      putU64(dv, p + 16, r.hardState.commit);
      len = hardStateBytes;
      break;
    case RecordType.LogReset:
      putU64(dv, p, r.index);
      putU64(dv, p + 8, r.term);
      len = logResetBytes;
      break;
    case RecordType.Metadata: {
      const m = metadataPayload(r);
      buf.set(m, p);
      len = m.length;
      break;
    }
  }
  buf[o + 8] = r.type;
  dv.setUint32(o, len, true);
  dv.setUint32(o + 4, crc32c(buf, 0, o + 8, p + len), true);
  buf[p + len] = endMarker;
  return len + frameOverheadBytes;
}

/** One framed record in a buffer of its own. */
export function frame(r: WalRecord): Uint8Array {
  const buf = new Uint8Array(frameBytes(r));
  frameInto(r, buf, 0);
  return buf;
}

/** The payload of `r` alone (tests and tools). */
export function encodePayload(r: WalRecord): Uint8Array {
  return frame(r).subarray(headerBytes, -1);
}

function fixedSize(type: number, payload: Uint8Array, n: number): void {
  if (payload.length !== n)
    throw new RangeError(`record type ${type}: ${payload.length} bytes, expected ${n}`);
}

/**
 * How an Entry record's data is decoded: `copy` (the default) gives each entry bytes of its own;
 * `view` returns a plain `Uint8Array` view into `payload`'s buffer, for a caller that copies the
 * entries it keeps before that buffer is reused or modified (the WAL's recovery: most entries it
 * reads are covered by the snapshot and dropped, and their copies were a third of reading a WAL).
 */
export type EntryData = 'copy' | 'view';

/**
 * Decodes a payload whose CRC already matched; throws on a malformed one. A Metadata record of
 * another WAL format fails `corrupt` with a message that names both formats: the records after it
 * cannot be read by this build.
 */
export function decodePayload(type: number, payload: Uint8Array, entryData: EntryData = 'copy'): WalRecord {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  switch (type) {
    case RecordType.Metadata: {
      const m = T.Metadata.decode(payload) as unknown as Record<string, unknown>;
      const version = num(m.version);
      if (version !== walFormat)
        throw new ConclaveError(
          ErrorCode.Corrupt,
          `wal: this data directory was written in WAL format ${version}; this Conclave reads format ${walFormat} only (pre-1.0 formats are not upgraded: start the member from an empty directory and let it catch up from the cluster)`,
          { details: { walFormat: version, supported: walFormat } },
        );
      return { type, nodeId: num(m.nodeId), segment: num(m.segment), version };
    }
    case RecordType.HardState:
      fixedSize(type, payload, hardStateBytes);
      return { type, hardState: { term: getU64(dv, 0), vote: getU64(dv, 8), commit: getU64(dv, 16) } };
    case RecordType.Entry: {
      if (payload.length < entryHeadBytes)
        throw new RangeError(`entry record: ${payload.length} bytes, expected at least ${entryHeadBytes}`);
      return {
        type,
        entry: {
          term: getU64(dv, 0),
          index: getU64(dv, 8),
          type: payload[16] as EntryType,
          // A copy unless asked otherwise: the log and the values the store keeps from it (views
          // into the entry, see node/commands.ts) must not pin the whole segment buffer.
          data:
            entryData === 'view'
              ? new Uint8Array(
                  payload.buffer,
                  payload.byteOffset + entryHeadBytes,
                  payload.length - entryHeadBytes,
                )
              : new Uint8Array(payload.subarray(entryHeadBytes)),
        },
      };
    }
    case RecordType.LogReset:
      fixedSize(type, payload, logResetBytes);
      return { type, index: getU64(dv, 0), term: getU64(dv, 8) };
    default:
      throw new Error(`unknown record type ${type}`);
  }
}

export interface SnapshotFileContents {
  index: number;
  term: number;
  voters: number[];
  learners: number[];
  data: Uint8Array;
}

export function encodeSnapshotFile(s: SnapshotFileContents): Uint8Array {
  return T.SnapshotFile.encode(s).finish();
}

export function decodeSnapshotFile(b: Uint8Array): SnapshotFileContents {
  const m = T.SnapshotFile.decode(b) as unknown as Record<string, unknown>;
  return {
    index: num(m.index),
    term: num(m.term),
    voters: ((m.voters as unknown[]) ?? []).map(num),
    learners: ((m.learners as unknown[]) ?? []).map(num),
    // A view into the file's bytes (protobufjs decodes bytes as subarrays); never copied, since a
    // restored store keeps views into it.
    data: m.data instanceof Uint8Array ? m.data : new Uint8Array(0),
  };
}
