/**
 * The watch hub: serves watches from the applied state. A watcher with a start revision in the
 * past replays history from the MVCC records, then follows new revisions as they are applied. The
 * events of one revision are delivered in one batch. Each watcher's buffer is bounded
 * (`bufferBatchesMax`); a consumer that falls further behind ends with `watch-overflow`.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { resolveRange } from '../../../src/keys.js';
import { limits } from '../../../src/limits.js';
import type { Bytes, Watch, WatchBatch, WatchEvent, WatchOptions } from '../../../src/types.js';
import { keyString, type Mvcc, type MvccEvent } from './mvcc.js';

/** Watchers per store (each holds a buffer); beyond it new watches fail `too-many-requests`. */
export const watchersMax = 100_000;

/** Revisions of events kept for replay (since compaction), as a bound on memory for history. */
export const historyRevisionsMax = 1_000_000;

class HubWatch implements Watch {
  /** The store revision at registration (see `Watch.ready`); rejects if it failed or closed first. */
  readonly ready: Promise<number>;
  #settleReady: ((revision: number | Error) => void) | undefined;
  readonly #hub: WatchHub;
  readonly start: string;
  readonly end: string;
  nextRev = 0;
  readonly #prevKv: boolean;
  readonly #noPut: boolean;
  readonly #noDelete: boolean;
  readonly #max: number;
  readonly #buffer: WatchBatch[] = [];
  #wake: (() => void) | undefined;
  #error: unknown;
  done = false;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => void this.close();

  constructor(hub: WatchHub, key: Bytes, o: WatchOptions) {
    this.#hub = hub;
    const r = resolveRange(key, o);
    this.start = keyString(r.key);
    this.end = keyString(r.end);
    this.#prevKv = !!o.prevKv;
    this.#noPut = (o.filters ?? []).includes('noput');
    this.#noDelete = (o.filters ?? []).includes('nodelete');
    this.#max = o.bufferBatchesMax ?? limits.watchBufferBatchesMax;
    this.#signal = o.signal;
    this.ready = new Promise<number>((resolve, reject) => {
      this.#settleReady = (r) => (typeof r === 'number' ? resolve(r) : reject(r));
    });
    this.ready.catch(() => undefined);
    if (o.signal?.aborted) queueMicrotask(() => void this.close());
    else o.signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  matches(k: string): boolean {
    if (this.end === '') return k === this.start;
    return k >= this.start && (this.end === '\u0000' || k < this.end);
  }

  /** Offers the events of revision `rev`; returns false when the watcher had to end. */
  offer(rev: number, events: readonly MvccEvent[]): void {
    if (this.done || rev < this.nextRev) return;
    this.nextRev = rev + 1;
    const out: WatchEvent[] = [];
    for (const e of events) {
      if ((e.type === 'put' && this.#noPut) || (e.type === 'delete' && this.#noDelete)) continue;
      if (!this.matches(keyString(e.kv.key))) continue;
      out.push(
        this.#prevKv && e.prevKv ? { type: e.type, kv: e.kv, prevKv: e.prevKv } : { type: e.type, kv: e.kv },
      );
    }
    if (out.length === 0) return;
    if (this.#buffer.length >= this.#max) {
      this.fail(
        new ConclaveError(
          ErrorCode.WatchOverflow,
          `watch: the consumer fell ${this.#max} batches behind; resume from revision ${this.#buffer[0]?.revision ?? rev} with a new watch`,
        ),
      );
      return;
    }
    this.#buffer.push({ events: out, revision: rev });
    this.#wake?.();
  }

  /** Registered in the hub at `revision`: resolves `ready`. */
  registered(revision: number): void {
    this.#settleReady?.(revision);
    this.#settleReady = undefined;
  }

  fail(err: unknown): void {
    if (this.done) return;
    this.#error = err;
    this.#finish();
  }

  #finish(): void {
    this.done = true;
    this.#settleReady?.(
      this.#error instanceof Error
        ? this.#error
        : new ConclaveError(ErrorCode.Closed, 'watch closed before it was created'),
    );
    this.#settleReady = undefined;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#hub.remove(this);
    this.#wake?.();
  }

  async close(): Promise<void> {
    if (this.done) return;
    this.#buffer.length = 0;
    this.#finish();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    try {
      while (true) {
        const b = this.#buffer.shift();
        if (b) {
          yield b;
          continue;
        }
        if (this.done) {
          if (this.#error !== undefined) throw this.#error;
          return;
        }
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
      }
    } finally {
      if (!this.done) await this.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export class WatchHub {
  readonly #mvcc: Mvcc;
  readonly #watchers = new Set<HubWatch>();
  /**
   * Events by revision, for history replay: a cache of what the MVCC records hold, complete for
   * every revision in [#historyFrom, #historyTo] (a revision without events has no entry). It is
   * not built when a store is restored or replaced (a million restored keys would mean a million
   * events nobody may ask for), nor kept while it is empty and nobody watches; a watch that starts
   * before #historyFrom fills it from the records first (`#cover`).
   */
  #history: Array<{ rev: number; events: readonly MvccEvent[] }> = [];
  #historyFrom: number;
  #historyTo: number;
  /** Fills so far since the last reset: the second one goes back to the compaction revision. */
  #fills = 0;

  constructor(mvcc: Mvcc) {
    this.#mvcc = mvcc;
    this.#historyFrom = mvcc.currentRev + 1;
    this.#historyTo = mvcc.currentRev;
  }

  watch(key: Bytes, o: WatchOptions): Watch {
    const w = new HubWatch(this, key, o);
    if (this.#watchers.size >= watchersMax) {
      w.fail(new ConclaveError(ErrorCode.TooManyRequests, `too many watches (max ${watchersMax})`));
      return w;
    }
    const startRev = o.startRevision ?? 0;
    const current = this.#mvcc.currentRev;
    if (startRev > 0 && startRev < this.#mvcc.compactRev) {
      const compactRevision = this.#mvcc.compactRev;
      w.fail(
        new ConclaveError(
          ErrorCode.Compacted,
          `watch: the start revision was compacted; the oldest available revision is ${compactRevision}`,
          { compactRevision },
        ),
      );
      return w;
    }
    w.nextRev = startRev > 0 ? startRev : current + 1;
    this.#watchers.add(w);
    w.registered(current);
    if (w.nextRev <= current) {
      this.#cover(w.nextRev);
      for (const h of this.#history) if (h.rev >= w.nextRev) w.offer(h.rev, h.events);
      w.nextRev = Math.max(w.nextRev, current + 1);
    }
    return w;
  }

  remove(w: HubWatch): void {
    this.#watchers.delete(w);
  }

  /** Forgets the history: it starts after revision `to` (older ones are filled on demand). */
  #reset(to = this.#mvcc.currentRev): void {
    this.#history = [];
    this.#historyFrom = to + 1;
    this.#historyTo = to;
    this.#fills = 0;
  }

  /**
   * Makes the history complete from `rev` (at or after the compaction revision) to the current
   * revision, reading what it lacks from the MVCC records (one pass over the index). The first
   * fill reads only from `rev` (watches usually start at a recent revision); a later one reads
   * from the compaction revision, so a run of watches at ever older revisions costs two passes.
   */
  #cover(rev: number): void {
    if (this.#historyTo !== this.#mvcc.currentRev) this.#reset();
    if (rev >= this.#historyFrom || this.#history.length >= historyRevisionsMax) return;
    const from = this.#fills++ === 0 ? rev : Math.min(rev, Math.max(this.#mvcc.compactRev, 1));
    const older = this.#mvcc.eventsSince(from, this.#historyFrom);
    if (older.length > 0) this.#history = [...older, ...this.#history];
    this.#historyFrom = from;
    if (this.#history.length > historyRevisionsMax) {
      this.#history = this.#history.slice(-historyRevisionsMax);
      this.#historyFrom = this.#history[0]!.rev;
    }
  }

  notify(rev: number, events: readonly MvccEvent[]): void {
    // The state changed under the hub (a store restored without resync): start over at `rev`.
    if (this.#historyTo !== rev - 1) this.#reset(rev - 1);
    this.#historyTo = rev;
    if (this.#history.length === 0 && this.#watchers.size === 0) {
      // Nobody can see this revision now; a later watch from it fills it from the records.
      this.#historyFrom = rev + 1;
      return;
    }
    this.#history.push({ rev, events });
    if (this.#history.length > historyRevisionsMax) {
      this.#history.shift();
      this.#historyFrom = this.#history[0]!.rev;
    }
    for (const w of [...this.#watchers]) w.offer(rev, events);
  }

  compacted(rev: number): void {
    let i = 0;
    while (i < this.#history.length && this.#history[i]!.rev < rev) i++;
    if (i > 0) this.#history = this.#history.slice(i);
    if (this.#historyFrom < rev) this.#historyFrom = Math.min(rev, this.#historyTo + 1);
  }

  /**
   * After the store's state was replaced (a Raft snapshot installed, or restored at startup):
   * forgets the replay history (it is filled from the new records on demand), ends watchers whose
   * next revision is now compacted, and catches the others up from the new state (etcd resyncs
   * its watchers the same way after a snapshot restore).
   */
  resync(): void {
    this.#reset();
    const compactRev = this.#mvcc.compactRev;
    const current = this.#mvcc.currentRev;
    for (const w of [...this.#watchers]) {
      if (w.nextRev < compactRev) {
        w.fail(
          new ConclaveError(
            ErrorCode.Compacted,
            `watch: the member installed a snapshot past this watch's revision; the oldest available revision is ${compactRev}`,
            { compactRevision: compactRev },
          ),
        );
        continue;
      }
      if (w.nextRev <= current) {
        this.#cover(w.nextRev);
        for (const h of this.#history) if (h.rev >= w.nextRev) w.offer(h.rev, h.events);
      }
      w.nextRev = Math.max(w.nextRev, current + 1);
    }
  }

  close(): void {
    const e = new ConclaveError(ErrorCode.Closed, 'the store was closed');
    for (const w of [...this.#watchers]) w.fail(e);
  }
}
