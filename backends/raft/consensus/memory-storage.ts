/**
 * An in-memory LogStorage (hashicorp-style double that ships with the code): used by tests, the
 * simulator and memory-only nodes. It holds exactly what a driver persisted: hard state, the
 * entries after the snapshot, and the snapshot.
 */
import { assert } from './assert.js';
import type { NodeStorage, ReadyToSave } from './node-storage.js';
import type { ConfState, Entry, HardState, Snapshot } from './types.js';

export class MemoryStorage implements NodeStorage {
  hardState: HardState = { term: 0, vote: 0, commit: 0 };
  snap: Snapshot;
  /** ents[i] has index snap.meta.index + 1 + i. */
  ents: Entry[] = [];

  constructor(confState: ConfState = { voters: [], learners: [] }) {
    this.snap = { meta: { index: 0, term: 0, confState }, data: new Uint8Array(0) };
  }

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: this.hardState, confState: this.snap.meta.confState };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    assert(lo > this.snap.meta.index, `entries lo ${lo} was compacted`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi && i <= this.lastIndex(); i++) {
      const e = this.ents[i - this.snap.meta.index - 1]!;
      bytes += e.data.length;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  term(index: number): number {
    if (index === this.snap.meta.index) return this.snap.meta.term;
    const e = this.ents[index - this.snap.meta.index - 1];
    assert(e !== undefined, `term of unavailable index ${index}`);
    return e.term;
  }

  firstIndex(): number {
    return this.snap.meta.index + 1;
  }

  lastIndex(): number {
    return this.snap.meta.index + this.ents.length;
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  setHardState(hs: HardState): void {
    assert(hs.term >= this.hardState.term, 'persisted term never decreases');
    this.hardState = hs;
  }

  /** Appends, replacing any suffix that the new entries overwrite. */
  append(ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const first = ents[0]!.index;
    assert(first > this.snap.meta.index, 'append below the snapshot');
    assert(first <= this.lastIndex() + 1, `append leaves a gap (${first} after ${this.lastIndex()})`);
    this.ents.length = first - this.snap.meta.index - 1;
    for (const e of ents) this.ents.push(e);
  }

  applySnapshot(s: Snapshot): void {
    this.snap = s;
    this.ents = [];
  }

  /** Drops entries up to `index`, recording a snapshot there. */
  compact(index: number, data: Uint8Array, confState: ConfState): void {
    if (index <= this.snap.meta.index) return;
    const term = this.term(index);
    this.ents = this.ents.slice(index - this.snap.meta.index);
    this.snap = { meta: { index, term, confState }, data };
  }

  save(rd: ReadyToSave): void | Promise<void> {
    if (rd.snapshot) this.applySnapshot(rd.snapshot);
    this.append(rd.entries);
    if (rd.hardState) this.setHardState(rd.hardState);
  }

  /**
   * Records a snapshot at `index`, but compacts the log only to the previous snapshot: the
   * entries between the two stay, so a follower slightly behind catches up from the log instead of
   * needing a whole snapshot (etcd keeps a catch-up tail after its snapshot index too). A snapshot
   * at or below one already recorded or installed is ignored (the node takes snapshots
   * asynchronously: a snapshot from the leader may have been installed meanwhile).
   */
  snapshotAt(index: number, data: Uint8Array, confState: ConfState): void | Promise<void> {
    if (this.#superseded(index)) return;
    this.recordSnapshot({ meta: { index, term: this.term(index), confState }, data });
  }

  #superseded(index: number): boolean {
    return index <= this.snap.meta.index || (this.latestSnapshot?.meta.index ?? 0) >= index;
  }

  /** `snapshotAt` once the snapshot is in hand (and, for durable storage, on disk). */
  protected recordSnapshot(s: Snapshot): void {
    if (this.#superseded(s.meta.index)) return;
    const prev = this.latestSnapshot;
    this.latestSnapshot = s;
    if (prev && prev.meta.index > this.snap.meta.index)
      this.compact(prev.meta.index, prev.data, prev.meta.confState);
  }

  /** The newest snapshot taken (the log is compacted only up to the one before it). */
  latestSnapshot: Snapshot | undefined;

  close(): void | Promise<void> {}

  clone(): MemoryStorage {
    const c = new MemoryStorage(this.snap.meta.confState);
    c.hardState = this.hardState;
    c.snap = this.snap;
    c.ents = [...this.ents];
    return c;
  }
}
