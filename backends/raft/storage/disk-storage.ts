/**
 * Durable storage for one Raft member: the WAL and snapshot files in a data directory, with the
 * log since the last snapshot mirrored in memory (it is what the core reads). Layout:
 *
 *   <dataDir>/LOCK      one member per directory (lock.ts)
 *   <dataDir>/wal/      segments (wal.ts)
 *   <dataDir>/snap/     snapshot files (snapshots.ts)
 *
 * Contract with the node loop: `save(ready)` resolves once the Ready's snapshot, entries and hard
 * state are durable; nothing of that Ready is sent or applied before. `snapshotAt()` records a
 * state-machine snapshot taken at an applied index, compacts the in-memory log and releases WAL
 * segments that the older kept snapshot covers (so a damaged newest snapshot can fall back to
 * the previous one and replay the WAL from there).
 */
import { join } from 'node:path';
import { assert } from '../consensus/assert.js';
import { MemoryStorage, type NodeStorage, type ReadyToSave } from '../consensus/memory-storage.js';
import type { ConfState, NodeId, Snapshot } from '../consensus/types.js';
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

  private constructor(
    o: DiskStorageOptions,
    wal: Wal,
    snaps: Snapshotter,
    lock: DirLock,
    recovery: DiskRecovery,
  ) {
    super({ voters: [...o.voters], learners: [] });
    this.dataDir = o.dataDir;
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
      const s = new DiskStorage(o, wal, snaps, lock, {
        ...(loaded ? { snapshotFile: loaded.file } : {}),
        skippedSnapshots: loaded?.skipped ?? [],
        wal: recovery,
        phasesMs: { snapshot: snapshotMs, wal: walMs, total: performance.now() - t0 },
      });
      if (loaded) s.snap = loaded.snapshot;
      s.ents = recovery.entries;
      const hs = recovery.hardState;
      s.hardState = { term: hs.term, vote: hs.vote, commit: Math.max(hs.commit, after) };
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
    await this.#lock.release();
  }
}
