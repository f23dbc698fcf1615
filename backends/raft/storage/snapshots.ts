/**
 * Snapshot files of one member: `<dir>/<term:16 hex>-<index:16 hex>.snap`, each
 * `"CSNP"` + crc32c (u32 LE) of the rest + the SnapshotFile protobuf (its data field last, so the
 * data is written and checksummed in pieces straight from the snapshot's buffer). Written to a temporary file,
 * fsynced, renamed, and the directory fsynced, so a crash leaves either the whole file or none (a
 * leftover `.tmp` is removed on open). Loading tries the newest file first and falls back to older
 * ones when a file fails its checksum; the caller checks the WAL still covers the one chosen.
 */
import { constants as bufferConstants } from 'node:buffer';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { Snapshot } from '../consensus/types.js';
import { crc32c } from './crc32c.js';
import { hex16, syncDir } from './fs-util.js';
import { decodeSnapshotFile, encodeSnapshotFile } from './records.js';

/** Snapshot files kept (the newest ones); older ones are deleted after a new one is saved. */
export const snapshotsKeptDefault = 2;
const MAGIC = [0x43, 0x53, 0x4e, 0x50]; // "CSNP"

/** Bytes of snapshot data per file write. */
export const snapshotWriteChunkBytes = 4 * 1024 * 1024;
/** Bytes checksummed between two event-loop turns (about 1–2 ms of CRC-32C in JavaScript). */
export const snapshotCrcSliceBytes = 512 * 1024;

/** Bytes per read of a snapshot file (recovery). */
export const snapshotReadChunkBytes = 8 * 1024 * 1024;
/** Reads of one snapshot file in flight at once (libuv's pool runs four; the WAL reads alongside). */
export const snapshotReadsInFlightMax = 3;
/** The largest snapshot file read (a typed array's bound; the size field is outside input). */
export const snapshotFileBytesMax = bufferConstants.MAX_LENGTH;

/** Reads `buf[from, to)` from the same range of the file; a file shorter than that is damaged. */
async function readRange(
  fh: FileHandle,
  file: string,
  buf: Uint8Array,
  from: number,
  to: number,
): Promise<void> {
  for (let off = from; off < to; ) {
    const { bytesRead } = await fh.read(buf, off, to - off, off);
    if (bytesRead === 0)
      throw new ConclaveError(
        ErrorCode.Corrupt,
        `snapshot ${file}: the file ended at ${off} bytes while it was read`,
        {
          details: { file },
        },
      );
    off += bytesRead;
  }
}

const setImmediateTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

async function writeAll(fh: FileHandle, b: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < b.length; ) {
    const { bytesWritten } = await fh.write(b, off, b.length - off, position + off);
    off += bytesWritten;
  }
}

/**
 * The file's bytes before the data: magic, a zero CRC (filled in once the data is summed), and
 * the SnapshotFile protobuf up to and including the data field's tag and length. Followed by the
 * data, the whole is exactly `magic + crc + encodeSnapshotFile(s)`, which `read` decodes.
 */
export function snapshotFileHead(s: Snapshot, dataLength: number): Uint8Array {
  const meta = encodeSnapshotFile({
    index: s.meta.index,
    term: s.meta.term,
    voters: [...s.meta.confState.voters],
    learners: [...s.meta.confState.learners],
    data: new Uint8Array(0),
  });
  // protobufjs writes the empty bytes field as its tag (field 5, length-delimited) and length 0.
  const n = meta.length;
  if (meta[n - 2] !== 0x2a || meta[n - 1] !== 0)
    throw new Error('snapshot file: unexpected SnapshotFile encoding (no empty data field at the end)');
  const len: number[] = [];
  for (let v = dataLength; ; v = Math.floor(v / 128)) {
    if (v < 128) {
      len.push(v);
      break;
    }
    len.push((v % 128) | 0x80);
  }
  const head = new Uint8Array(8 + n - 1 + len.length);
  head.set(MAGIC, 0);
  head.set(meta.subarray(0, n - 1), 8);
  head.set(len, 8 + n - 1);
  return head;
}

const snapName = (term: number, index: number) => `${hex16(term)}-${hex16(index)}.snap`;

function parseSnapName(n: string): { term: number; index: number; name: string } | undefined {
  const m = /^([0-9a-f]{16})-([0-9a-f]{16})\.snap$/.exec(n);
  if (!m) return undefined;
  return { term: Number.parseInt(m[1]!, 16), index: Number.parseInt(m[2]!, 16), name: n };
}

export interface LoadedSnapshot {
  snapshot: Snapshot;
  file: string;
  /** Newer files that failed their checksum and were skipped. */
  skipped: string[];
}

export class Snapshotter {
  readonly dir: string;
  readonly #kept: number;
  readonly #log: ((m: string) => void) | undefined;

  constructor(dir: string, opts: { kept?: number; log?: (m: string) => void } = {}) {
    this.dir = dir;
    this.#kept = opts.kept ?? snapshotsKeptDefault;
    this.#log = opts.log;
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true });
    for (const n of await fsp.readdir(this.dir))
      if (n.endsWith('.tmp')) await fsp.rm(join(this.dir, n), { force: true });
  }

  /** Snapshot files by index, newest first. */
  async list(): Promise<Array<{ term: number; index: number; name: string }>> {
    const all = (await fsp.readdir(this.dir)).map(parseSnapName).filter((s) => s !== undefined);
    return all.sort((a, b) => b.index - a.index || b.term - a.term);
  }

  /**
   * Writes `s` durably: a `.tmp` file, fsynced, renamed, the directory fsynced; then deletes the
   * files beyond the newest `kept`. The data is neither copied nor checksummed in one go: it is
   * written in `snapshotWriteChunkBytes` pieces straight from `s.data`, and the CRC-32C is
   * computed in `snapshotCrcSliceBytes` steps that yield to the event loop (a checksum of a large
   * snapshot in JavaScript takes about a second), then written into the header before the fsync.
   * The file is the same as a one-buffer write (see `snapshotFileHead`).
   */
  async save(s: Snapshot, opts: { nextTurn?: () => Promise<void> } = {}): Promise<void> {
    const nextTurn = opts.nextTurn ?? setImmediateTurn;
    const data = s.data;
    const head = snapshotFileHead(s, data.length);
    const name = snapName(s.meta.term, s.meta.index);
    const tmp = join(this.dir, `${name}.tmp`);
    const fh = await fsp.open(tmp, 'w');
    try {
      let crc = crc32c(head, 0, 8);
      await writeAll(fh, head, 0);
      let pos = head.length;
      for (let off = 0; off < data.length; off += snapshotWriteChunkBytes) {
        const chunk = data.subarray(off, Math.min(data.length, off + snapshotWriteChunkBytes));
        // The write runs on libuv's pool while the checksum of the same bytes runs here in slices.
        const written = writeAll(fh, chunk, pos);
        written.catch(() => undefined);
        for (let c = 0; c < chunk.length; c += snapshotCrcSliceBytes) {
          crc = crc32c(chunk, crc, c, Math.min(chunk.length, c + snapshotCrcSliceBytes));
          await nextTurn();
        }
        await written;
        pos += chunk.length;
      }
      const crcBytes = new Uint8Array(4);
      new DataView(crcBytes.buffer).setUint32(0, crc, true);
      await writeAll(fh, crcBytes, 4);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, join(this.dir, name));
    await syncDir(this.dir);
    const files = await this.list();
    for (const f of files.slice(this.#kept)) await fsp.rm(join(this.dir, f.name), { force: true });
  }

  /**
   * Reads one file; throws `corrupt` when it is damaged. The file is read in
   * `snapshotReadChunkBytes` pieces with up to `snapshotReadsInFlightMax` reads in flight on
   * libuv's pool, and each piece is checksummed here as soon as it and those before it have
   * arrived: the checksum (whose cost at recovery is mostly the first touch of freshly read
   * memory) runs while the next pieces are read, instead of after the whole file (one
   * `readFile` of a 184 MB snapshot left this thread idle ~0.7 s, then checksummed ~0.6 s).
   */
  async read(name: string): Promise<Snapshot> {
    const file = join(this.dir, name);
    const bad = (why: string) =>
      new ConclaveError(ErrorCode.Corrupt, `snapshot ${file}: ${why}`, { details: { file } });
    const fh = await fsp.open(file, 'r');
    let buf: Uint8Array;
    let stored: number;
    let crc = 0;
    try {
      const size = (await fh.stat()).size;
      if (size < 8) throw bad('not a snapshot file');
      if (size > snapshotFileBytesMax) throw bad(`${size} bytes, more than ${snapshotFileBytesMax}`);
      // The store keeps views into the data (never copied), so this buffer is its memory.
      buf = new Uint8Array(size);
      const pieces = Math.ceil(size / snapshotReadChunkBytes);
      const reads: Array<Promise<void>> = [];
      const issue = (upTo: number) => {
        while (reads.length < Math.min(pieces, upTo)) {
          const i = reads.length;
          const p = readRange(
            fh,
            file,
            buf,
            i * snapshotReadChunkBytes,
            Math.min(size, (i + 1) * snapshotReadChunkBytes),
          );
          // Awaited in order below; a failure of a later read must not go unhandled meanwhile.
          p.catch(() => undefined);
          reads.push(p);
        }
      };
      issue(snapshotReadsInFlightMax);
      for (let i = 0; i < pieces; i++) {
        try {
          await reads[i];
        } catch (err) {
          // The other reads still write into `buf`: let them finish before the file is closed.
          await Promise.allSettled(reads);
          throw err;
        }
        issue(i + 1 + snapshotReadsInFlightMax);
        const from = i * snapshotReadChunkBytes;
        if (i === 0 && MAGIC.some((b, j) => buf[j] !== b)) {
          await Promise.allSettled(reads);
          throw bad('not a snapshot file');
        }
        crc = crc32c(buf, crc, i === 0 ? 8 : from, Math.min(size, from + snapshotReadChunkBytes));
      }
      stored = new DataView(buf.buffer).getUint32(4, true);
    } finally {
      await fh.close();
    }
    if (stored !== crc) throw bad('checksum mismatch');
    const f = decodeSnapshotFile(buf.subarray(8));
    const meta = parseSnapName(name);
    if (!meta || meta.index !== f.index || meta.term !== f.term) throw bad('name and contents disagree');
    return {
      meta: { index: f.index, term: f.term, confState: { voters: f.voters, learners: f.learners } },
      data: f.data,
    };
  }

  /** The newest readable snapshot at or below `maxIndex`, skipping damaged files (logged). */
  async loadNewest(): Promise<LoadedSnapshot | undefined> {
    const skipped: string[] = [];
    for (const f of await this.list()) {
      try {
        const snapshot = await this.read(f.name);
        return { snapshot, file: join(this.dir, f.name), skipped };
      } catch (err) {
        if (!ConclaveError.is(err, ErrorCode.Corrupt)) throw err;
        skipped.push(f.name);
        this.#log?.(`${(err as Error).message}; trying an older snapshot`);
      }
    }
    return undefined;
  }
}
