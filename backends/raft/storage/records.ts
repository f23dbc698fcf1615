/**
 * WAL record payloads and framing (DESIGN.md §5). Payloads are protobuf messages (protobufjs,
 * schema below); every record is framed as
 *
 *   [length u32 LE][crc32c u32 LE][type u8][payload: length bytes][end marker 0xA5]
 *
 * `length` counts the payload only; the CRC covers the type byte and the payload. The end marker
 * is one byte beyond DESIGN.md's frame: a record whose marker is missing was not completely
 * written (a torn write), while a complete record with a bad CRC is corruption. Recovery needs
 * that distinction: a torn tail is truncated, corruption stops the node (see wal.ts).
 */
import protobuf from 'protobufjs';
import type { Entry, EntryType, HardState } from '../consensus/types.js';
import { crc32c } from './crc32c.js';

const schema = protobuf.parse(`
syntax = "proto3";
message Metadata { uint64 node_id = 1; uint64 segment = 2; uint32 version = 3; }
message HardStateRec { uint64 term = 1; uint64 vote = 2; uint64 commit = 3; }
message EntryRec { uint64 term = 1; uint64 index = 2; uint32 type = 3; bytes data = 4; }
message LogResetRec { uint64 index = 1; uint64 term = 2; }
message SnapshotFile {
  uint64 index = 1; uint64 term = 2; repeated uint64 voters = 3; repeated uint64 learners = 4; bytes data = 5;
}
`).root;

const T = {
  Metadata: schema.lookupType('Metadata'),
  HardState: schema.lookupType('HardStateRec'),
  Entry: schema.lookupType('EntryRec'),
  LogReset: schema.lookupType('LogResetRec'),
  SnapshotFile: schema.lookupType('SnapshotFile'),
};

export const RecordType = { Metadata: 1, HardState: 2, Entry: 3, LogReset: 4 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

/** Bytes of framing around a payload: 4 length + 4 crc + 1 type + 1 end marker. */
export const frameOverheadBytes = 10;
export const headerBytes = 9;
export const endMarker = 0xa5;
/** The largest payload a record may carry (an entry holds at most one request, itself bounded). */
export const recordPayloadBytesMax = 64 * 1024 * 1024;

export type WalRecord =
  | { type: typeof RecordType.Metadata; nodeId: number; segment: number }
  | { type: typeof RecordType.HardState; hardState: HardState }
  | { type: typeof RecordType.Entry; entry: Entry }
  | { type: typeof RecordType.LogReset; index: number; term: number };

const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v ?? 0));

export function encodePayload(r: WalRecord): Uint8Array {
  switch (r.type) {
    case RecordType.Metadata:
      return T.Metadata.encode({ nodeId: r.nodeId, segment: r.segment, version: 1 }).finish();
    case RecordType.HardState:
      return T.HardState.encode(r.hardState).finish();
    case RecordType.Entry:
      return T.Entry.encode(r.entry).finish();
    case RecordType.LogReset:
      return T.LogReset.encode({ index: r.index, term: r.term }).finish();
  }
}

/** Decodes a payload whose CRC already matched; throws on a malformed message. */
export function decodePayload(type: number, payload: Uint8Array): WalRecord {
  switch (type) {
    case RecordType.Metadata: {
      const m = T.Metadata.decode(payload) as unknown as Record<string, unknown>;
      return { type, nodeId: num(m.nodeId), segment: num(m.segment) };
    }
    case RecordType.HardState: {
      const m = T.HardState.decode(payload) as unknown as Record<string, unknown>;
      return { type, hardState: { term: num(m.term), vote: num(m.vote), commit: num(m.commit) } };
    }
    case RecordType.Entry: {
      const m = T.Entry.decode(payload) as unknown as Record<string, unknown>;
      const data = m.data instanceof Uint8Array ? new Uint8Array(m.data) : new Uint8Array(0);
      return {
        type,
        entry: { term: num(m.term), index: num(m.index), type: num(m.type) as EntryType, data },
      };
    }
    case RecordType.LogReset: {
      const m = T.LogReset.decode(payload) as unknown as Record<string, unknown>;
      return { type, index: num(m.index), term: num(m.term) };
    }
    default:
      throw new Error(`unknown record type ${type}`);
  }
}

/** Appends framed records to `out` (a list of chunks); returns the bytes added. */
export function frame(r: WalRecord): Uint8Array {
  const payload = encodePayload(r);
  const buf = new Uint8Array(payload.length + frameOverheadBytes);
  const dv = new DataView(buf.buffer);
  buf[8] = r.type;
  buf.set(payload, headerBytes);
  dv.setUint32(0, payload.length, true);
  dv.setUint32(4, crc32c(buf, 0, 8, headerBytes + payload.length), true);
  buf[headerBytes + payload.length] = endMarker;
  return buf;
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
    data: m.data instanceof Uint8Array ? new Uint8Array(m.data) : new Uint8Array(0),
  };
}
