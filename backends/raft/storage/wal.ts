/**
 * The segmented write-ahead log of one Raft member.
 *
 * Files: `<dir>/<seq:16 hex>-<firstIndex:16 hex>.wal`, each preallocated to `segmentBytes` with
 * zeros (so an fdatasync does not also have to update the file size) and starting with a Metadata
 * record and the latest HardState, so older segments can be released without losing it. Records
 * are framed as in records.ts.
 *
 * Durability: `save()` writes every record of one Ready in one write that returns once it is
 * durable (group commit: the node hands it everything that accumulated during the previous flush).
 * The segment being written is opened with O_DSYNC, which makes each write complete as a write
 * followed by an fdatasync would, in one call: one thread-pool round trip per Ready instead of
 * two (about 15% of the CPU per put of a 3-member durable cluster, 2026-11-29). Where the
 * platform has no O_DSYNC, each write is followed by an fdatasync. A segment is durable before
 * the next one is written, so only the last segment can end in an unsynced (possibly torn) write,
 * and that tail is at most `unsyncedBytesMax` plus one record long.
 *
 * Recovery reads every segment in order. Where a record fails to parse:
 * - the rest of the segment is zeros → the clean end of the log;
 * - the record is incomplete (its end marker or its bytes never reached the disk), it is in the
 *   last segment, and it lies within the last unsynced window → a torn tail: erased (zeroed),
 *   synced and logged; the log continues from there;
 * - anything else (a complete record with a bad checksum, a damaged non-last segment, damage
 *   followed by more data than one unsynced window) → corruption: `ConclaveError('corrupt')`
 *   naming the file and offset. The node refuses to start; it never serves a damaged log.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { assert } from '../consensus/assert.js';
import type { Entry, HardState } from '../consensus/types.js';
import { crc32c } from './crc32c.js';
import { hex16, syncDir, writeZeros } from './fs-util.js';
import {
  decodePayload,
  type EntryData,
  endMarker,
  frame,
  frameBytes,
  frameInto,
  frameOverheadBytes,
  headerBytes,
  RecordType,
  recordPayloadBytesMax,
  type WalRecord,
} from './records.js';
import {
  finishReplay,
  newReplayState,
  type ReplayBase,
  type ReplayResult,
  replayRecords,
  walCorrupt,
} from './replay.js';

/** Default segment size (etcd's is 64 MB as well). */
export const segmentBytesDefault = 64 * 1024 * 1024;
/** The writer makes its writes durable at least every this many bytes, which bounds a torn tail on recovery. */
export const unsyncedBytesMax = 8 * 1024 * 1024;
/** Segments one WAL may hold (a bound on directory listings and on recovery work). */
export const segmentsMax = 10_000;

/** O_DSYNC where the platform has it (see the file comment), else undefined. */
const oDsync: number | undefined = fsConstants.O_DSYNC;
/** How the segment being written is opened. */
const segmentWriteFlags: number | string = oDsync !== undefined ? fsConstants.O_RDWR | oDsync : 'r+';

export interface WalOptions {
  readonly dir: string;
  readonly nodeId: number;
  readonly segmentBytes?: number;
  /** Where recovery reports what it repaired (a truncated torn tail). */
  readonly log?: (message: string) => void;
}

export interface WalRecovery {
  readonly hardState: HardState;
  /** Entries after `afterIndex`, contiguous from afterIndex + 1. */
  readonly entries: Entry[];
  /** A torn tail that was truncated: file and offset. */
  readonly truncated?: { file: string; offset: number; bytes: number };
}

interface Segment {
  seq: number;
  firstIndex: number;
  name: string;
}

const segName = (seq: number, firstIndex: number) => `${hex16(seq)}-${hex16(firstIndex)}.wal`;

function parseSegName(name: string): Segment | undefined {
  const m = /^([0-9a-f]{16})-([0-9a-f]{16})\.wal$/.exec(name);
  if (!m) return undefined;
  return { seq: Number.parseInt(m[1]!, 16), firstIndex: Number.parseInt(m[2]!, 16), name };
}

const zeroBlock = new Uint8Array(64 * 1024);

/**
 * Index of the last non-zero byte of `buf` at or after `from`, or -1. Compares whole blocks with
 * a zero block (memcmp) and scans bytes only inside a block that differs: recovery checks that
 * the preallocated rest of a segment (tens of MiB) is zeros, which byte by byte took ~1 s.
 */
export function lastNonZero(buf: Uint8Array, from = 0): number {
  let end = buf.length;
  while (end > from) {
    const start = Math.max(from, end - zeroBlock.length);
    if (Buffer.compare(buf.subarray(start, end), zeroBlock.subarray(0, end - start)) !== 0)
      for (let i = end - 1; i >= start; i--) if (buf[i] !== 0) return i;
    end = start;
  }
  return -1;
}

interface ScanResult {
  records: Array<{ rec: WalRecord; offset: number }>;
  /** Where the valid data ends (the next write position). */
  end: number;
  /** A failure at `end` classified as torn: bytes to erase. */
  tornBytes: number;
}

/**
 * Parses one segment. `last`: whether this is the newest segment (the only one that may have a
 * torn tail). `entryData`: as in `decodePayload` (`view`: entries share `buf`, and the caller
 * copies those it keeps before it reuses or modifies `buf`).
 */
export function scanSegment(
  buf: Uint8Array,
  file: string,
  last: boolean,
  entryData: EntryData = 'copy',
): ScanResult {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const records: ScanResult['records'] = [];
  let o = 0;
  while (o < buf.length) {
    const fail = () => classify(buf, o, file, last, records);
    if (o + headerBytes > buf.length) {
      if (lastNonZero(buf, o) < 0) return { records, end: o, tornBytes: 0 };
      return fail();
    }
    const len = dv.getUint32(o, true);
    const crc = dv.getUint32(o + 4, true);
    const type = buf[o + 8]!;
    if (len === 0 && crc === 0 && type === 0) {
      if (lastNonZero(buf, o) < 0) return { records, end: o, tornBytes: 0 };
      return fail();
    }
    const recEnd = o + headerBytes + len + 1;
    if (
      len > recordPayloadBytesMax ||
      recEnd > buf.length ||
      buf[recEnd - 1] !== endMarker ||
      crc32c(buf, 0, o + 8, recEnd - 1) !== crc
    )
      return fail();
    let rec: WalRecord;
    try {
      rec = decodePayload(type, buf.subarray(o + headerBytes, recEnd - 1), entryData);
    } catch (err) {
      // A segment of another WAL format: not damage, and its own message says what to do.
      if (ConclaveError.is(err))
        throw new ConclaveError(err.code, `${err.message} [${file}]`, {
          details: { ...err.details, file },
          cause: err,
        });
      throw walCorrupt(file, o, `an undecodable record (${(err as Error).message})`);
    }
    records.push({ rec, offset: o });
    o = recEnd;
  }
  return { records, end: o, tornBytes: 0 };
}

function classify(
  buf: Uint8Array,
  o: number,
  file: string,
  last: boolean,
  records: ScanResult['records'],
): ScanResult {
  if (!last) throw walCorrupt(file, o, 'a damaged record in a sealed segment');
  const z = lastNonZero(buf, o);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const stored = o + 8 <= buf.length ? dv.getUint32(o + 4, true) : -1;
  const len = o + 4 <= buf.length ? dv.getUint32(o, true) : 0;
  const payloadEnd = o + headerBytes + len;
  if (len <= recordPayloadBytesMax && payloadEnd < buf.length && o + headerBytes <= buf.length) {
    const crcOk = crc32c(buf, 0, o + 8, payloadEnd) === stored;
    // The payload is intact but the end marker is neither written (0) nor right: damage.
    if (crcOk && buf[payloadEnd] !== 0) throw walCorrupt(file, o, 'a damaged end marker');
    // The whole record reached the disk (its marker is there) yet the checksum fails: damage.
    if (!crcOk && buf[payloadEnd] === endMarker && payloadEnd <= z)
      throw walCorrupt(file, o, 'a checksum mismatch');
  }
  // A damaged length field: the data ends in a marker and the checksum matches the bytes up to it.
  if (o + headerBytes < z && buf[z] === endMarker && crc32c(buf, 0, o + 8, z) === stored)
    throw walCorrupt(file, o, 'a damaged length field');
  if (z + 1 - o > unsyncedBytesMax + recordPayloadBytesMax + frameOverheadBytes)
    throw walCorrupt(file, o, 'a damaged record followed by more data than one unsynced write');
  // A torn write leaves nothing complete after it; an intact record after the damage means the
  // damage hit data that had been synced.
  if (validRecordAfter(buf, o + 1, z)) throw walCorrupt(file, o, 'a damaged record followed by intact ones');
  return { records, end: o, tornBytes: z + 1 - o };
}

function validRecordAfter(buf: Uint8Array, from: number, z: number): boolean {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let p = from; p + frameOverheadBytes - 1 <= z; p++) {
    const len = dv.getUint32(p, true);
    const payloadEnd = p + headerBytes + len;
    if (len > recordPayloadBytesMax || payloadEnd > z || buf[payloadEnd] !== endMarker) continue;
    if (crc32c(buf, 0, p + 8, payloadEnd) === dv.getUint32(p + 4, true)) return true;
  }
  return false;
}

/**
 * Reads a whole file into `reuse` when it is large enough (else into a new buffer): the bytes
 * read, as a view of the buffer used.
 */
async function readWhole(file: string, reuse: Uint8Array | undefined): Promise<Uint8Array> {
  const fh = await fsp.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = reuse !== undefined && reuse.length >= size ? reuse : new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const { bytesRead } = await fh.read(buf, got, size - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/** The largest piece the last segment is read in (it is read up to its first all-zero piece). */
export const walReadPieceBytesMax = 4 * 1024 * 1024;

/** Reads `buf[from, to)` from the same range of the file; returns the bytes read (less at its end). */
async function readInto(fh: fsp.FileHandle, buf: Uint8Array, from: number, to: number): Promise<number> {
  let got = from;
  while (got < to) {
    const { bytesRead } = await fh.read(buf, got, to - got, got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got - from;
}

/**
 * Reads the last segment, whose preallocated rest is normally zeros, without bringing that rest
 * into memory: pieces are read into `reuse` (or a new buffer) up to and including the first
 * all-zero piece, and the pieces after it through that piece's place in the buffer, each checked
 * to be all zeros (a freshly allocated buffer is not touched beyond the data: fresh memory is
 * what reading costs most). If one is not, the rest of the file is read into place after all.
 * Returns `prefix` (the file from 0; shorter than `size` only when every byte after it is zero),
 * the file's `size` as read, the whole buffer, and how much memory the buffer holds.
 */
async function readLastSegment(
  file: string,
  reuse: Uint8Array | undefined,
): Promise<{ prefix: Uint8Array; size: number; buf: Uint8Array; residentBytes: number }> {
  const fh = await fsp.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const fresh = !(reuse !== undefined && reuse.length >= size);
    const buf = fresh ? new Uint8Array(size) : reuse;
    // The memory this buffer holds: a new one only where it was written (the rest is never touched).
    const done = (prefixBytes: number, fileBytes: number, touched: number) => ({
      prefix: buf.subarray(0, prefixBytes),
      size: fileBytes,
      buf,
      residentBytes: fresh ? touched : buf.buffer.byteLength,
    });
    // Pieces of at most walReadPieceBytesMax, at least 4 KiB, about 1/16 of the segment.
    const piece = Math.max(4096, Math.min(walReadPieceBytesMax, Math.ceil(size / 16 / 4096) * 4096));
    let off = 0;
    let zeroAt = -1;
    while (off < size) {
      const n = await readInto(fh, buf, off, Math.min(size, off + piece));
      if (n === 0) return done(off, off, off);
      off += n;
      if (lastNonZero(buf.subarray(off - n, off)) < 0) {
        zeroAt = off - n;
        break;
      }
    }
    if (zeroAt < 0 || off >= size) return done(off, off, off);
    const prefixEnd = off;
    const scratch = buf.subarray(zeroAt, prefixEnd);
    for (let at = prefixEnd; at < size; ) {
      const n = await readAt(fh, scratch, at);
      if (n === 0) return done(prefixEnd, at, prefixEnd);
      if (lastNonZero(scratch.subarray(0, n)) >= 0) {
        // Not zeros (damage, or data after a gap): read the rest in place, as a whole file. The
        // pieces checked so far were zeros: so is their place (a reused buffer holds old bytes).
        scratch.fill(0);
        if (!fresh) buf.fill(0, prefixEnd, at);
        const rest = at + (await readInto(fh, buf, at, size));
        return done(rest, rest, rest);
      }
      at += n;
    }
    return done(prefixEnd, size, prefixEnd);
  } finally {
    await fh.close();
  }
}

/** Reads up to `into.length` bytes of the file at `position` into `into`; returns how many. */
async function readAt(fh: fsp.FileHandle, into: Uint8Array, position: number): Promise<number> {
  let got = 0;
  while (got < into.length) {
    const { bytesRead } = await fh.read(into, got, into.length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/**
 * Gives the entries of `ents` whose data is a view into `buf` bytes of their own. They are a
 * suffix of `ents` (replay appends a segment's entries after those of earlier segments, which
 * were already copied, and truncates only suffixes).
 */
function ownEntriesFrom(ents: Entry[], buf: Uint8Array): void {
  for (let i = ents.length - 1; i >= 0; i--) {
    const e = ents[i]!;
    if (e.data.buffer !== buf.buffer) break;
    ents[i] = { term: e.term, index: e.index, type: e.type, data: e.data.slice() };
  }
}

/** Bytes of entry data in `ents` that are views into `buf` (a suffix, as in `ownEntriesFrom`). */
function viewBytesInto(ents: readonly Entry[], buf: Uint8Array): number {
  let n = 0;
  for (let i = ents.length - 1; i >= 0 && ents[i]!.data.buffer === buf.buffer; i--) n += ents[i]!.data.length;
  return n;
}

/** The segments in `dir` in order (leftover `.tmp` files removed); a gap in the sequence is corruption. */
async function listSegments(dir: string): Promise<Segment[]> {
  const names = await fsp.readdir(dir);
  for (const n of names) if (n.endsWith('.tmp')) await fsp.rm(join(dir, n), { force: true });
  const segs = names.map(parseSegName).filter((s): s is Segment => s !== undefined);
  if (segs.length > segmentsMax)
    throw new ConclaveError(ErrorCode.Corrupt, `wal: ${segs.length} segments in ${dir} (max ${segmentsMax})`);
  segs.sort((a, b) => a.seq - b.seq);
  for (let i = 1; i < segs.length; i++) {
    if (segs[i]!.seq !== segs[i - 1]!.seq + 1)
      throw new ConclaveError(
        ErrorCode.Corrupt,
        `wal: segment ${segs[i - 1]!.name} is followed by ${segs[i]!.name}; a segment is missing`,
      );
  }
  return segs;
}

/** What reading a WAL found: the first step of opening it (`Wal.read`, then `Wal.open`). */
export interface WalRead {
  readonly dir: string;
  /** The snapshot the log was replayed after. */
  readonly base: ReplayBase;
  readonly segments: readonly Segment[];
  /** Where the valid data of the last segment ends (the next write position). */
  readonly end: number;
  readonly replay: ReplayResult;
  /** A torn tail that was truncated: file and offset. */
  readonly truncated?: { file: string; offset: number; bytes: number };
}

export class Wal {
  readonly dir: string;
  readonly #o: Required<Omit<WalOptions, 'log'>> & Pick<WalOptions, 'log'>;
  #segments: Segment[] = [];
  #fh: fsp.FileHandle | undefined;
  #offset = 0;
  #lastIndex = 0;
  #hardState: HardState = { term: 0, vote: 0, commit: 0 };
  #busy = false;
  #closed = false;
  /** Statistics: durable writes (fsyncs) done and entries written (for benchmarks). */
  readonly stats = { syncs: 0, entries: 0, bytes: 0 };

  private constructor(o: WalOptions) {
    this.dir = o.dir;
    this.#o = { segmentBytes: segmentBytesDefault, ...o };
    assert(this.#o.segmentBytes >= 4096, 'wal: segmentBytes must be at least 4096');
  }

  /**
   * Opens (recovering) the WAL after the restored snapshot at `afterIndex`, whose term is
   * `afterTerm` (pass it when there is a snapshot: entries that do not continue it are discarded,
   * see replay.ts). `read`: what `Wal.read` found after that same snapshot (else it is read now).
   */
  static async open(
    o: WalOptions,
    afterIndex: number,
    afterTerm?: number,
    read?: WalRead,
  ): Promise<{ wal: Wal; recovery: WalRecovery }> {
    const base: ReplayBase = { index: afterIndex, term: afterTerm };
    const r = read ?? (await Wal.read(o, base));
    assert(
      r.dir === o.dir && r.base.index === afterIndex && r.base.term === afterTerm,
      'wal: opened after another snapshot than it was read after',
    );
    const wal = new Wal(o);
    const recovery = await wal.#finishRecovery(r);
    return { wal, recovery };
  }

  /**
   * Reads every segment and replays its records after the snapshot `base` (replay.ts), without
   * opening the WAL for writing: the first step of `open`, which a caller may run while it still
   * reads that snapshot (the reading does not depend on it). Its only write repairs a torn tail
   * (zeros where the torn record was: the same whichever snapshot the log is replayed after).
   * Throws `corrupt` as `open` does.
   */
  static async read(o: WalOptions, base: ReplayBase): Promise<WalRead> {
    await fsp.mkdir(o.dir, { recursive: true });
    const segments = await listSegments(o.dir);
    const state = newReplayState();
    if (segments.length === 0)
      return { dir: o.dir, base, segments, end: 0, replay: { hardState: state.hardState, ents: state.ents } };
    let truncated: WalRead['truncated'];
    let end = 0;
    // Every segment is read into the same buffer (fresh memory is what reading costs most), and
    // parsed with entries as views into it; the entries the log keeps are copied out before the
    // next segment overwrites it. The last segment's are left as views when they are most of the
    // buffer (the usual case: the tail since the snapshot): nothing overwrites it any more, and
    // the copy would cost as much fresh memory again (60 MiB and ~0.3 s for the 1M-key bench).
    let readBuf: Uint8Array | undefined;
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      const file = join(o.dir, seg.name);
      const last = i === segments.length - 1;
      let buf: Uint8Array;
      let scan: ScanResult;
      // The memory the read buffer holds (what kept views into it would pin).
      let residentBytes: number;
      if (!last) {
        buf = await readWhole(file, readBuf);
        residentBytes = buf.buffer.byteLength;
        scan = scanSegment(buf, file, last, 'view');
      } else {
        // The last segment is read up to the first all-zero piece after its data, the rest
        // only checked to be zeros (see readLastSegment). A scan of that prefix that ends
        // cleanly ends where a scan of the whole file would (everything after it is zeros);
        // any other outcome (a torn tail, damage) is decided on the whole file, zeros included.
        const r = await readLastSegment(file, readBuf);
        buf = r.prefix;
        residentBytes = r.residentBytes;
        let clean: ScanResult | undefined;
        if (r.prefix.length < r.size) {
          try {
            const s = scanSegment(r.prefix, file, last, 'view');
            if (s.tornBytes === 0) clean = s;
          } catch {
            // Decided on the whole file below.
          }
        }
        if (clean) scan = clean;
        else {
          buf = r.buf.subarray(0, r.size);
          buf.fill(0, r.prefix.length);
          residentBytes = Math.max(residentBytes, r.size);
          scan = scanSegment(buf, file, last, 'view');
        }
      }
      if (readBuf === undefined || buf.buffer !== readBuf.buffer) readBuf = buf;
      const first = scan.records[0]?.rec;
      if (!first || first.type !== RecordType.Metadata) {
        if (last && scan.records.length === 0 && scan.tornBytes === 0 && i > 0) {
          // A segment created but never written (crash right after rotation): reuse it.
        } else throw walCorrupt(file, 0, 'a segment without its metadata record');
      } else if (first.nodeId !== o.nodeId || first.segment !== seg.seq)
        throw walCorrupt(file, 0, `metadata of member ${first.nodeId} segment ${first.segment}`);
      replayRecords(scan.records, base, file, state);
      if (!last || viewBytesInto(state.ents, buf) * 2 < residentBytes) ownEntriesFrom(state.ents, buf);
      if (last) {
        end = scan.end;
        if (scan.tornBytes > 0) {
          truncated = { file, offset: scan.end, bytes: scan.tornBytes };
          const fh = await fsp.open(file, 'r+');
          try {
            await writeZeros(fh, scan.end, scan.tornBytes);
            await fh.datasync();
          } finally {
            await fh.close();
          }
          o.log?.(`wal: truncated a torn tail of ${scan.tornBytes} bytes in ${file} at offset ${scan.end}`);
        }
      }
    }
    const replay = finishReplay(state, base, o.dir);
    return { dir: o.dir, base, segments, end, replay, ...(truncated ? { truncated } : {}) };
  }

  /** The second step of opening: state from what was read, the last segment opened for writing. */
  async #finishRecovery(r: WalRead): Promise<WalRecovery> {
    const base = r.base;
    this.#segments = [...r.segments];
    if (this.#segments.length === 0) {
      await this.#createSegment(0, base.index + 1);
      return { hardState: r.replay.hardState, entries: r.replay.ents };
    }
    this.#offset = r.end;
    const { hardState, ents, discarded } = r.replay;
    if (discarded)
      this.#o.log?.(
        `wal: ${discarded.count} entries after snapshot ${base.index} (term ${base.term}) in ${this.dir} do not continue it (the log had term ${discarded.termAtBase} at that index: a snapshot received from the leader was saved, and the member stopped before its log reset was written); they were discarded`,
      );
    this.#hardState = hardState;
    this.#lastIndex = ents.length > 0 ? ents[ents.length - 1]!.index : base.index;
    const lastSeg = this.#segments[this.#segments.length - 1]!;
    this.#fh = await fsp.open(join(this.dir, lastSeg.name), segmentWriteFlags);
    if (this.#offset === 0) await this.#writeRaw(this.#segmentHeader(lastSeg.seq));
    // Make the discard durable: without the reset, the next recovery would again find the old
    // term at the snapshot's index and would discard the entries written after this start too.
    if (discarded) await this.save([{ type: RecordType.LogReset, index: base.index, term: base.term! }]);
    return { hardState, entries: ents, ...(r.truncated ? { truncated: r.truncated } : {}) };
  }

  #segmentHeader(seq: number): Uint8Array {
    return Buffer.concat([
      frame({ type: RecordType.Metadata, nodeId: this.#o.nodeId, segment: seq }),
      frame({ type: RecordType.HardState, hardState: this.#hardState }),
    ]);
  }

  /**
   * Makes a preallocated segment current: takes the spare file prepared in the background (or
   * prepares one now), writes the segment header, syncs, renames it into place and syncs the
   * directory; then starts preparing the next spare, so rotation does not wait for zero-filling.
   */
  async #createSegment(seq: number, firstIndex: number): Promise<void> {
    const name = segName(seq, firstIndex);
    const spare = await (this.#spare ?? this.#prepareSpare());
    this.#spare = undefined;
    const header = this.#segmentHeader(seq);
    await spare.fh.write(header, 0, header.length, 0);
    await spare.fh.datasync();
    await fsp.rename(spare.path, join(this.dir, name));
    await syncDir(this.dir);
    await this.#fh?.close();
    this.#fh = undefined;
    if (oDsync === undefined) this.#fh = spare.fh;
    else {
      // The spare was zero-filled without O_DSYNC (one sync at the end); writes now need it.
      await spare.fh.close();
      this.#fh = await fsp.open(join(this.dir, name), segmentWriteFlags);
    }
    this.#offset = header.length;
    this.stats.bytes += header.length;
    this.#segments.push({ seq, firstIndex, name });
    this.#spare = this.#prepareSpare();
    // A failed preparation is retried at the next rotation.
    this.#spare.catch(() => {
      this.#spare = undefined;
    });
  }

  #spare: Promise<{ fh: fsp.FileHandle; path: string }> | undefined;

  async #prepareSpare(): Promise<{ fh: fsp.FileHandle; path: string }> {
    const path = join(this.dir, `spare-${this.#spareSeq++}.tmp`);
    const fh = await fsp.open(path, 'w+');
    try {
      await writeZeros(fh, 0, this.#o.segmentBytes);
      await fh.sync();
    } catch (err) {
      await fh.close();
      throw err;
    }
    return { fh, path };
  }

  #spareSeq = 0;

  async #writeRaw(b: Uint8Array): Promise<void> {
    let done = 0;
    while (done < b.length) {
      const { bytesWritten } = await this.#fh!.write(b, done, b.length - done, this.#offset + done);
      done += bytesWritten;
    }
    this.#offset += b.length;
    this.stats.bytes += b.length;
  }

  get lastIndex(): number {
    return this.#lastIndex;
  }

  get segmentCount(): number {
    return this.#segments.length;
  }

  /**
   * Appends records and makes them durable (one durable write per `unsyncedBytesMax`, normally one).
   * Entries replace any suffix they overwrite on replay. Only one save runs at a time.
   */
  async save(records: readonly WalRecord[]): Promise<void> {
    assert(!this.#closed, 'wal: save after close');
    assert(!this.#busy, 'wal: concurrent save');
    if (records.length === 0) return;
    this.#busy = true;
    try {
      // Records are framed in place into one buffer per write (no per-record allocation or
      // concatenation); a write ends where a segment rotation or an intermediate sync is due.
      let from = 0;
      let chunkBytes = 0;
      const flush = async (to: number) => {
        if (chunkBytes === 0) return;
        const buf = Buffer.allocUnsafeSlow(chunkBytes);
        let o = 0;
        for (let i = from; i < to; i++) o += frameInto(records[i]!, buf, o);
        assert(o === chunkBytes, 'wal: framed size mismatch');
        await this.#writeRaw(buf);
        from = to;
        chunkBytes = 0;
      };
      for (let i = 0; i < records.length; i++) {
        const r = records[i]!;
        const size = frameBytes(r);
        if (this.#offset + chunkBytes + size > this.#o.segmentBytes && this.#offset > 0) {
          await flush(i);
          await this.#durable();
          await this.#createSegment(this.#segments[this.#segments.length - 1]!.seq + 1, this.#lastIndex + 1);
        }
        if (chunkBytes + size > unsyncedBytesMax && chunkBytes > 0) {
          await flush(i);
          await this.#durable();
        }
        chunkBytes += size;
        if (r.type === RecordType.Entry) {
          this.#lastIndex = r.entry.index;
          this.stats.entries++;
        } else if (r.type === RecordType.HardState) this.#hardState = r.hardState;
        else if (r.type === RecordType.LogReset) this.#lastIndex = r.index;
      }
      await flush(records.length);
      await this.#durable();
    } finally {
      this.#busy = false;
    }
  }

  /** Makes what was written durable: nothing left to do with O_DSYNC, else an fdatasync. */
  async #durable(): Promise<void> {
    if (oDsync === undefined) await this.#fh!.datasync();
    this.stats.syncs++;
  }

  /** Deletes segments all of whose entries are at or below `index` (covered by a snapshot). */
  async releaseTo(index: number): Promise<number> {
    let n = 0;
    while (this.#segments.length > 1 && this.#segments[1]!.firstIndex - 1 <= index) {
      const s = this.#segments.shift()!;
      await fsp.rm(join(this.dir, s.name), { force: true });
      n++;
    }
    if (n > 0) await syncDir(this.dir);
    return n;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#fh?.close();
    this.#fh = undefined;
    const spare = await this.#spare?.catch(() => undefined);
    if (spare) {
      await spare.fh.close();
      await fsp.rm(spare.path, { force: true });
    }
  }
}
