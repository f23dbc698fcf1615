/**
 * Durable storage for one Raft member: the WAL and snapshot files in a data directory, with the
 * log since the last snapshot mirrored in memory (it is what the core reads). Layout:
 *
 *   <dataDir>/LOCK      one member per directory (lock.ts)
 *   <dataDir>/wal/      segments (wal.ts)
 *   <dataDir>/snap/     snapshot files (snapshots.ts)
 *   <dataDir>/COMMIT    the last known commit index, written without fsync (see `save`)
 *
 * Contract with the node loop: `save(ready)` resolves once the Ready's snapshot, entries and hard
 * state are durable; nothing of that Ready is sent or applied before. `snapshotAt()` records a
 * state-machine snapshot taken at an applied index, compacts the in-memory log and releases WAL
 * segments that the older kept snapshot covers (so a damaged newest snapshot can fall back to
 * the previous one and replay the WAL from there).
 */
import { closeSync, constants as fsConstants, promises as fsp, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { assert } from '../consensus/assert.js';
import { MemoryStorage } from '../consensus/memory-storage.js';
import type { NodeStorage, ReadyToSave } from '../consensus/node-storage.js';
import type { ConfState, NodeId, Snapshot } from '../consensus/types.js';
import { crc32c } from './crc32c.js';
import { type DirLock, lockDir } from './lock.js';
import { RecordType, type WalRecord } from './records.js';
import type { ReplayBase } from './replay.js';
import { type LoadedSnapshot, Snapshotter } from './snapshots.js';
import { Wal, type WalRecovery } from './wal.js';

export interface DiskStorageOptions {
  dataDir: string;
  nodeId: NodeId;
  /** The bootstrap configuration when the directory is new. */
  voters: readonly NodeId[];
  /** Learners of the bootstrap configuration (a member joining a running cluster as a learner). */
  learners?: readonly NodeId[];
  segmentBytes?: number;
  snapshotsKept?: number;
  log?: (message: string) => void;
}

export interface DiskRecovery {
  snapshotFile?: string;
  skippedSnapshots: string[];
  wal: WalRecovery;
  /**
   * When each part of the recovery was done, in ms since `open` began (for benchmarks): the
   * snapshot read and checked, the WAL read and replayed (the two overlap), and the whole.
   */
  phasesMs: { snapshot: number; wal: number; total: number };
}

export class DiskStorage extends MemoryStorage implements NodeStorage {
  readonly dataDir: string;
  readonly recovery: DiskRecovery;
  readonly #wal: Wal;
  readonly #snaps: Snapshotter;
  readonly #lock: DirLock;
  #chain: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** The COMMIT file, open for in-place writes (no O_DSYNC); see `save`. */
  readonly #commitFd: number;
  readonly #commitBuf = Buffer.alloc(commitFileBytes);

  private constructor(
    o: DiskStorageOptions,
    wal: Wal,
    snaps: Snapshotter,
    lock: DirLock,
    recovery: DiskRecovery,
    commitFd: number,
  ) {
    super({ voters: [...o.voters], learners: [...(o.learners ?? [])] });
    this.dataDir = o.dataDir;
    this.#commitFd = commitFd;
    this.#wal = wal;
    this.#snaps = snaps;
    this.#lock = lock;
    this.recovery = recovery;
  }

  static async open(o: DiskStorageOptions): Promise<DiskStorage> {
    const t0 = performance.now();
    const lock = await lockDir(o.dataDir);
    try {
      const snaps = new Snapshotter(join(o.dataDir, 'snap'), {
        ...(o.snapshotsKept !== undefined ? { kept: o.snapshotsKept } : {}),
        ...(o.log ? { log: o.log } : {}),
      });
      await snaps.init();
      const walOptions = {
        dir: join(o.dataDir, 'wal'),
        nodeId: o.nodeId,
        ...(o.segmentBytes !== undefined ? { segmentBytes: o.segmentBytes } : {}),
        ...(o.log ? { log: o.log } : {}),
      };
      // The WAL is read while the newest snapshot file is read and checked: both mostly wait on
      // the disk and on fresh memory (libuv's pool), and reading the WAL does not depend on the
      // snapshot, only its replay does. The replay assumes the newest file (named by its index
      // and term) is good, and runs again after the snapshot used if it is not.
      const newest = (await snaps.list())[0];
      const assumed: ReplayBase = { index: newest?.index ?? 0, term: newest?.term };
      let walMs = 0;
      const reading = Wal.read(walOptions, assumed).finally(() => {
        walMs = performance.now() - t0;
      });
      reading.catch(() => undefined);
      let loaded: LoadedSnapshot | undefined;
      try {
        loaded = await snaps.loadNewest();
      } catch (err) {
        await reading.catch(() => undefined);
        throw err;
      }
      const snapshotMs = performance.now() - t0;
      const after = loaded?.snapshot.meta.index ?? 0;
      const afterTerm = loaded?.snapshot.meta.term;
      const read =
        after === assumed.index && afterTerm === assumed.term
          ? await reading
          : await reading.then(
              // A torn tail the first pass repaired is reported, though this pass finds it gone.
              async (first) => {
                const again = await Wal.read(walOptions, { index: after, term: afterTerm });
                return first.truncated && !again.truncated ? { ...again, truncated: first.truncated } : again;
              },
              () => Wal.read(walOptions, { index: after, term: afterTerm }),
            );
      const { wal, recovery } = await Wal.open(walOptions, after, afterTerm, read);
      const commitPath = join(o.dataDir, commitFileName);
      const knownCommit = await readCommitFile(commitPath);
      const s = new DiskStorage(
        o,
        wal,
        snaps,
        lock,
        {
          ...(loaded ? { snapshotFile: loaded.file } : {}),
          skippedSnapshots: loaded?.skipped ?? [],
          wal: recovery,
          phasesMs: { snapshot: snapshotMs, wal: walMs, total: performance.now() - t0 },
        },
        openSync(commitPath, fsConstants.O_RDWR | fsConstants.O_CREAT),
      );
      if (loaded) s.snap = loaded.snapshot;
      s.ents = recovery.entries;
      const hs = recovery.hardState;
      // The COMMIT file may know a later commit index than the WAL's last HardState (it is
      // written where the WAL's record waits for the next synced write). It is used only up to
      // the last entry the log holds: every entry at or below a commit index this member learned
      // was durable before it learned it (a commit-only Ready follows the synced Ready of its
      // entries), and a committed entry is never overwritten (Raft §5.4, Leader Completeness).
      const lastIndex =
        recovery.entries.length > 0 ? recovery.entries[recovery.entries.length - 1]!.index : after;
      const commit = Math.max(hs.commit, after, Math.min(knownCommit, lastIndex));
      s.hardState = { term: hs.term, vote: hs.vote, commit };
      return s;
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  get walStats(): Readonly<Wal['stats']> {
    return this.#wal.stats;
  }

  /** Serializes disk operations (a save and a snapshot never interleave). */
  #serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(f, f);
    this.#chain = p.catch(() => undefined);
    return p;
  }

  /**
   * Durable unless nothing needs to be: a Ready whose only change is a higher commit index (no
   * entries, no snapshot, same term and vote) returns synchronously — the commit index is volatile
   * in Raft (a restarted member learns it again from the leader, or commits its own log anew as
   * leader), so its record rides along with the next synced write instead of costing an fsync.
   * It is also written at once, without fsync, to the COMMIT file (one in-place write to the page
   * cache): a member killed (SIGKILL) before its next synced write then restarts applying every
   * entry it knew committed, as etcd does by writing such a HardState to its WAL unsynced
   * (wal.Save syncs only when raft.MustSync says so). A restarted member otherwise served
   * serializable reads behind what it served before the kill until a leader told it the commit
   * index again. Lost in a power failure, it costs no more than before (the WAL's value is used).
   */
  override save(rd: ReadyToSave): void | Promise<void> {
    assert(!this.#closed, 'disk storage: save after close');
    const prev = this.hardState;
    const commitOnly =
      rd.entries.length === 0 &&
      !rd.snapshot &&
      rd.hardState !== undefined &&
      rd.hardState.term === prev.term &&
      rd.hardState.vote === prev.vote;
    const records: WalRecord[] = this.#deferred;
    this.#deferred = [];
    const snap = rd.snapshot;
    for (const e of rd.entries) records.push({ type: RecordType.Entry, entry: e });
    if (rd.hardState) records.push({ type: RecordType.HardState, hardState: rd.hardState });
    // Mirror in memory first (the core reads it only after advance, which waits for this).
    super.save(rd);
    if (!snap && rd.entries.length === 0 && !rd.hardState) {
      this.#deferred = records;
      return;
    }
    if (commitOnly) {
      this.#deferred = records.filter((r) => r.type !== RecordType.HardState);
      this.#deferred.push({ type: RecordType.HardState, hardState: rd.hardState! });
      this.#writeCommit(rd.hardState!.commit);
      return;
    }
    return this.#serial(async () => {
      if (snap) {
        await this.#snaps.save(snap);
        await this.#wal.save([{ type: RecordType.LogReset, index: snap.meta.index, term: snap.meta.term }]);
      }
      await this.#wal.save(records);
    });
  }

  /**
   * Overwrites the COMMIT file in place: [commit: u64 LE][crc32c of those 8 bytes: u32 LE]. A
   * synchronous write of 12 bytes to the page cache (microseconds; an asynchronous one would cost a
   * thread-pool round trip per commit advance). A torn or failed write is harmless: recovery
   * ignores a file whose checksum does not match, and a failed write is not retried.
   */
  #writeCommit(commit: number): void {
    const b = this.#commitBuf;
    b.writeBigUInt64LE(BigInt(commit), 0);
    b.writeUInt32LE(crc32c(b, 0, 0, 8), 8);
    try {
      writeSync(this.#commitFd, b, 0, commitFileBytes, 0);
    } catch {
      // Best effort (see above).
    }
  }

  /** Records that need no fsync of their own; written with the next synced batch. */
  #deferred: WalRecord[] = [];

  /**
   * Writes the snapshot file without holding up WAL saves (they touch different files; the file is
   * written and checksummed in pieces between event-loop turns, see `Snapshotter.save`). Only
   * once it is durable is the snapshot recorded (the in-memory log compacted to the previous one)
   * and are WAL segments released, in the save chain (a release must not interleave with a
   * rotation). A snapshot older than one installed or recorded meanwhile is ignored.
   */
  override snapshotAt(index: number, data: Uint8Array, confState: ConfState): Promise<void> {
    if (index <= this.snap.meta.index || (this.latestSnapshot?.meta.index ?? 0) >= index)
      return Promise.resolve();
    const snap: Snapshot = { meta: { index, term: this.term(index), confState }, data };
    const done = this.#snapWrite.then(async () => {
      await this.#snaps.save(snap);
      this.recordSnapshot(snap);
      await this.#serial(async () => {
        const kept = await this.#snaps.list();
        const oldest = kept[kept.length - 1];
        if (oldest) await this.#wal.releaseTo(oldest.index);
      });
    });
    this.#snapWrite = done.catch(() => undefined);
    return done;
  }

  #snapWrite: Promise<unknown> = Promise.resolve();

  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#snapWrite;
    await this.#chain;
    await this.#wal.close();
    closeSync(this.#commitFd);
    await this.#lock.release();
  }
}

const commitFileName = 'COMMIT';
const commitFileBytes = 12;

/** The commit index in the COMMIT file, or 0 if there is none or it does not check (see `#writeCommit`). */
async function readCommitFile(path: string): Promise<number> {
  let b: Buffer;
  try {
    b = await fsp.readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  if (b.length < commitFileBytes || b.readUInt32LE(8) !== crc32c(b, 0, 0, 8)) return 0;
  return Number(b.readBigUInt64LE(0));
}
