/**
 * The leader's view of one follower (Raft §5.3, etcd's Progress): `match` is the highest index
 * known replicated, `next` the next index to send. In `probe` state the leader sends one append at
 * a time until it finds where logs agree; in `replicate` it streams optimistically within an
 * in-flight window bounded by count and bytes; in `snapshot` it waits for a snapshot to land.
 */
import { assert } from './assert.js';

export const ProgressState = { Probe: 'probe', Replicate: 'replicate', Snapshot: 'snapshot' } as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];

/** A FIFO of in-flight appends (last index, bytes), bounded in count and bytes. */
export class Inflights {
  readonly #items: Array<{ index: number; bytes: number }> = [];
  #bytes = 0;
  constructor(
    readonly countMax: number,
    readonly bytesMax: number,
  ) {
    assert(countMax > 0, 'inflights countMax > 0');
  }
  get full(): boolean {
    return this.#items.length >= this.countMax || (this.bytesMax > 0 && this.#bytes >= this.bytesMax);
  }
  get count(): number {
    return this.#items.length;
  }
  add(index: number, bytes: number): void {
    assert(!this.full, 'inflights add while full');
    const last = this.#items[this.#items.length - 1];
    assert(!last || last.index < index, 'inflights indexes increase');
    this.#items.push({ index, bytes });
    this.#bytes += bytes;
  }
  /** Frees every in-flight append up to and including `index`. */
  freeLE(index: number): void {
    while (this.#items.length > 0 && this.#items[0]!.index <= index)
      this.#bytes -= this.#items.shift()!.bytes;
  }
  /** Frees the oldest in-flight append (a heartbeat answer proves the follower is alive). */
  freeFirstOne(): void {
    const first = this.#items.shift();
    if (first) this.#bytes -= first.bytes;
  }
  reset(): void {
    this.#items.length = 0;
    this.#bytes = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** In probe state: an append was sent and we wait for its answer (or a heartbeat response). */
  probeSent = false;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  pendingSnapshot = 0;
  readonly inflights: Inflights;
  isLearner: boolean;

  constructor(next: number, inflightCountMax: number, inflightBytesMax: number, isLearner: boolean) {
    this.next = next;
    this.inflights = new Inflights(inflightCountMax, inflightBytesMax);
    this.isLearner = isLearner;
  }

  becomeProbe(): void {
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.#reset(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.#reset(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.#reset(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(index: number): void {
    this.#reset(ProgressState.Snapshot);
    this.pendingSnapshot = index;
  }

  #reset(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.state = state;
    this.inflights.reset();
  }

  /** An acknowledgement of `index`; returns whether match advanced. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.match < index) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /**
   * A rejection of an append at `rejected`; `hint` is the follower's suggested next probe point.
   * Returns false when the rejection is stale (ignored).
   */
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  /** Whether the leader must hold back appends to this follower. */
  get paused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full;
      default:
        return true;
    }
  }
}
