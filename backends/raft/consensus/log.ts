/**
 * The Raft log as the core sees it: a snapshot point (index, term) and the entries after it, kept
 * in memory. `stabled` is the highest index already handed to the driver for persistence;
 * entries after it are "unstable" and appear in the next Ready.
 *
 * Invariants: snapIndex <= applied <= committed <= lastIndex; stabled <= lastIndex.
 */
import { assert } from './assert.js';
import type { Entry } from './types.js';

export class RaftLog {
  snapIndex: number;
  snapTerm: number;
  /** entries[i] has index snapIndex + 1 + i. */
  entries: Entry[];
  committed: number;
  applied: number;
  stabled: number;

  constructor(snapIndex: number, snapTerm: number, entries: Entry[], committed: number, applied: number) {
    this.snapIndex = snapIndex;
    this.snapTerm = snapTerm;
    this.entries = entries;
    for (let i = 0; i < entries.length; i++)
      assert(entries[i]!.index === snapIndex + 1 + i, 'log entries are contiguous');
    this.committed = Math.max(committed, snapIndex);
    this.applied = Math.max(applied, snapIndex);
    this.stabled = this.lastIndex;
    this.checkInvariants();
  }

  checkInvariants(): void {
    assert(this.snapIndex <= this.applied, `snapIndex ${this.snapIndex} <= applied ${this.applied}`);
    assert(this.applied <= this.committed, `applied ${this.applied} <= committed ${this.committed}`);
    assert(this.committed <= this.lastIndex, `committed ${this.committed} <= lastIndex ${this.lastIndex}`);
  }

  get firstIndex(): number {
    return this.snapIndex + 1;
  }

  get lastIndex(): number {
    return this.snapIndex + this.entries.length;
  }

  get lastTerm(): number {
    return this.term(this.lastIndex)!;
  }

  /** The term of the entry at `index`; undefined if compacted away or beyond the log. */
  term(index: number): number | undefined {
    if (index === this.snapIndex) return this.snapTerm;
    if (index < this.snapIndex || index > this.lastIndex) return undefined;
    return this.entries[index - this.snapIndex - 1]!.term;
  }

  entry(index: number): Entry | undefined {
    if (index <= this.snapIndex || index > this.lastIndex) return undefined;
    return this.entries[index - this.snapIndex - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** §5.4.1: a candidate's log is at least as up-to-date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    return lastTerm > this.lastTerm || (lastTerm === this.lastTerm && lastIndex >= this.lastIndex);
  }

  /** Entries in [lo, hi) up to `maxBytes` of data (at least one entry). */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    assert(lo > this.snapIndex, `slice lo ${lo} > snapIndex ${this.snapIndex}`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.entries[i - this.snapIndex - 1]!;
      bytes += e.data.length;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  /** Appends (the leader's own entries); returns the new last index. */
  append(ents: Entry[]): number {
    if (ents.length === 0) return this.lastIndex;
    assert(ents[0]!.index === this.lastIndex + 1, 'append continues the log');
    for (const e of ents) this.entries.push(e);
    return this.lastIndex;
  }

  /**
   * A follower's append (§5.3): if our entry at `prevIndex` has `prevTerm`, drop any conflicting
   * suffix, append the new entries, advance commit. Returns the index of the last new entry, or
   * undefined when the consistency check fails.
   */
  maybeAppend(
    prevIndex: number,
    prevTerm: number,
    committed: number,
    ents: readonly Entry[],
  ): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNew = prevIndex + ents.length;
    for (const e of ents) {
      if (e.index <= this.snapIndex) continue;
      const t = this.term(e.index);
      if (t === e.term) continue;
      if (t !== undefined) {
        // Conflict: never truncate committed entries (that would be a safety violation).
        assert(e.index > this.committed, `conflicting entry ${e.index} at or below commit ${this.committed}`);
        this.entries.length = e.index - this.snapIndex - 1;
        this.stabled = Math.min(this.stabled, e.index - 1);
      }
      this.entries.push(e);
    }
    this.commitTo(Math.min(committed, lastNew));
    return lastNew;
  }

  /**
   * Fast back-off hint (§5.3, "the follower can include the term of the conflicting entry and the
   * first index it stores for that term"): the largest index <= `index` whose term is <= `term`.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let i = Math.min(index, this.lastIndex);
    while (i > this.snapIndex) {
      const t = this.term(i)!;
      if (t <= term) return { index: i, term: t };
      i--;
    }
    return { index: this.snapIndex, term: this.snapTerm };
  }

  commitTo(index: number): void {
    if (index > this.committed) {
      assert(index <= this.lastIndex, `commit ${index} beyond last index ${this.lastIndex}`);
      this.committed = index;
    }
  }

  appliedTo(index: number): void {
    assert(
      index >= this.applied && index <= this.committed,
      `applied ${index} within [${this.applied}, ${this.committed}]`,
    );
    this.applied = index;
  }

  unstable(): Entry[] {
    return this.entries.slice(this.stabled - this.snapIndex);
  }

  committedToApply(): Entry[] {
    return this.entries.slice(this.applied - this.snapIndex, this.committed - this.snapIndex);
  }

  /** Installs a snapshot: the log restarts after it. */
  restore(index: number, term: number): void {
    this.snapIndex = index;
    this.snapTerm = term;
    this.entries = [];
    this.committed = index;
    this.applied = index;
    this.stabled = index;
  }

  /** Drops entries up to `index` (already applied and covered by a snapshot). */
  compact(index: number): void {
    if (index <= this.snapIndex) return;
    assert(index <= this.applied, `compact ${index} beyond applied ${this.applied}`);
    const term = this.term(index)!;
    this.entries = this.entries.slice(index - this.snapIndex);
    this.snapIndex = index;
    this.snapTerm = term;
  }
}
