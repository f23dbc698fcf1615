/**
 * Snapshot files of one member (DESIGN.md §5): `<dir>/<term:16 hex>-<index:16 hex>.snap`, each
 * `"CSNP"` + crc32c (u32 LE) of the rest + the SnapshotFile protobuf. Written to a temporary file,
 * fsynced, renamed, and the directory fsynced, so a crash leaves either the whole file or none (a
 * leftover `.tmp` is removed on open). Loading tries the newest file first and falls back to older
 * ones when a file fails its checksum; the caller checks the WAL still covers the one chosen.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { Snapshot } from '../consensus/types.js';
import { crc32c } from './crc32c.js';
import { hex16, syncDir } from './fs-util.js';
import { decodeSnapshotFile, encodeSnapshotFile } from './records.js';

/** Snapshot files kept (the newest ones); older ones are deleted after a new one is saved. */
export const snapshotsKeptDefault = 2;
const MAGIC = [0x43, 0x53, 0x4e, 0x50]; // "CSNP"

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

  async save(s: Snapshot): Promise<void> {
    const body = encodeSnapshotFile({
      index: s.meta.index,
      term: s.meta.term,
      voters: [...s.meta.confState.voters],
      learners: [...s.meta.confState.learners],
      data: s.data,
    });
    const buf = new Uint8Array(8 + body.length);
    buf.set(MAGIC, 0);
    buf.set(body, 8);
    new DataView(buf.buffer).setUint32(4, crc32c(buf, 0, 8), true);
    const name = snapName(s.meta.term, s.meta.index);
    const tmp = join(this.dir, `${name}.tmp`);
    const fh = await fsp.open(tmp, 'w');
    try {
      await fh.writeFile(buf);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, join(this.dir, name));
    await syncDir(this.dir);
    const files = await this.list();
    for (const f of files.slice(this.#kept)) await fsp.rm(join(this.dir, f.name), { force: true });
  }

  /** Reads one file; throws `corrupt` when it is damaged. */
  async read(name: string): Promise<Snapshot> {
    const file = join(this.dir, name);
    // A view of the file's buffer, not a copy: the store keeps views into the snapshot data.
    const raw = await fsp.readFile(file);
    const buf = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    const bad = (why: string) =>
      new ConclaveError(ErrorCode.Corrupt, `snapshot ${file}: ${why}`, { details: { file } });
    if (buf.length < 8 || MAGIC.some((b, i) => buf[i] !== b)) throw bad('not a snapshot file');
    if (new DataView(buf.buffer, buf.byteOffset).getUint32(4, true) !== crc32c(buf, 0, 8))
      throw bad('checksum mismatch');
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
