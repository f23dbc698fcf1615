/**
 * The storage a node loop drives: the Raft core's LogStorage (read side, types.ts) plus
 * persistence. Two implementations: MemoryStorage (memory-storage.ts: tests, the simulator,
 * memory-only nodes) and DiskStorage (storage/disk-storage.ts: the WAL and snapshot files).
 */
import type { ConfState, Entry, HardState, LogStorage, Snapshot } from './types.js';

/** What a node loop persists from one Ready. */
export interface ReadyToSave {
  readonly hardState?: HardState | undefined;
  readonly entries: readonly Entry[];
  readonly snapshot?: Snapshot | undefined;
}

/**
 * Storage as the node loop sees it: the core's LogStorage plus persistence. `save` and
 * `snapshotAt` return a promise when the write is asynchronous (durable storage); the loop sends
 * and applies nothing of a Ready before its save has settled.
 */
export interface NodeStorage extends LogStorage {
  save(rd: ReadyToSave): void | Promise<void>;
  /** Records a state-machine snapshot at applied `index` and drops the log up to it. */
  snapshotAt(index: number, data: Uint8Array, confState: ConfState): void | Promise<void>;
  /** The newest snapshot recorded by `snapshotAt` (the log is compacted only to the one before). */
  readonly latestSnapshot?: Snapshot | undefined;
  close(): void | Promise<void>;
}
