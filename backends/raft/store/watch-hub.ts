/**
 * The watch hub: serves watches from the applied state. A watcher with a start revision in the
 * past replays history from the MVCC records, then follows new revisions as they are applied. The
 * events of one revision are delivered in one batch. Each watcher's buffer is bounded
 * (`bufferBatchesMax`); a live consumer that falls further behind ends with `watch-overflow`.
 *
 * Cost model (etcd's watchableStore, mvcc/watchable_store.go and watcher_group.go): watchers live
 * in groups that share their next revision. Each group indexes its watchers by what they watch —
 * single keys in a map by key, ranges (prefix, [key, end), fromKey) in an interval index — so an
 * applied revision is matched to its watchers in O(E·log W + matches) for E events, whatever the
 * number of watchers on other keys, and nothing proportional to W is copied or allocated per
 * revision. Registration and cancellation are O(log W).
 *
 * - The synced group follows the applied revisions (`notify`).
 * - Catching-up groups ("unsynced" in etcd): watchers whose next revision is in the past, one
 *   group per next revision. They replay the history on their own turns, at most
 *   `catchUpScanMax` revisions per turn, never on the apply path; a group that reaches the
 *   current revision joins the synced one. A watcher that starts in the past replays its first
 *   `catchUpScanMax` revisions at registration (a short replay is complete when `watch` returns).
 *   A catching-up watcher whose buffer is full waits for its consumer (it is parked, not failed);
 *   one whose next revision is compacted meanwhile ends with `compacted`, as in etcd.
 * - Future groups: watchers whose start revision is ahead of the store (a member behind its
 *   cluster), one group per start revision, joining the synced group when it is reached.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { resolveRange } from '../../../src/keys.js';
import { limits } from '../../../src/limits.js';
import type { Bytes, Watch, WatchBatch, WatchEvent, WatchOptions } from '../../../src/types.js';
import { IntervalIndex, unboundedHi } from './interval-index.js';
import { keyString, type Mvcc, type MvccEvent } from './mvcc.js';

/**
 * Watchers per store (each holds a buffer); beyond it new watches fail `too-many-requests`. An idle
 * watcher's state costs ~0.3–0.7 KiB (docs/architecture.md, Watchers), so the bound caps it near 70 MiB.
 */
export const watchersMax = 100_000;

/**
 * Revisions of events kept for replay at most (a bound on the memory of the history while a
 * watcher catches up from far behind; beyond it the oldest are read from the MVCC records).
 */
export const historyRevisionsMax = 1_000_000;

/**
 * The most recent revisions kept in memory whoever watches, so that a watch starting just behind
 * the store (the usual "read at R, watch from R + 1" of a recipe or a list-then-watch client)
 * replays from memory rather than from a pass over the records. Older revisions are kept only as
 * far back as a catching-up or parked watcher still needs them: every revision kept is an object
 * that outlives the young generation, and a history kept for every watcher (up to
 * `historyRevisionsMax`) doubled the CPU of a put through garbage collection alone. etcd keeps
 * no history in memory: an unsynced watcher reads its revisions from the backend
 * (mvcc/watchable_store.go syncWatchers).
 */
export const historyRecentMax = 256;

/**
 * History revisions replayed to catching-up watchers per turn of the event loop (and at a watch's
 * registration), so a long replay never holds the loop for long (a heartbeat is 10 ms embedded).
 */
export const catchUpScanMax = 2048;

/**
 * Watchers ended per turn of the event loop when many end at once (the store closing, a client
 * closing its watches): ending one costs ~1 µs, so a slice stays well under half a heartbeat
 * (5 ms embedded) where 100,000 at once held the loop for over a second.
 */
export const watchCloseSliceMax = 1000;

/** One revision's events in {main, sub} order in the history: a lone event is held bare (no array). */
type RevEvents = MvccEvent | readonly MvccEvent[];

const isList = (e: RevEvents): e is readonly MvccEvent[] => Array.isArray(e);
/** A revision's events as the history holds them (the array only for two or more). */
const one = (events: readonly MvccEvent[]): RevEvents | undefined =>
  events.length === 1 ? events[0] : events.length === 0 ? undefined : events;

/** The watchers of one group sharing one key or one interval: a lone watcher is held bare. */
type Members = HubWatch | Set<HubWatch>;

const eachMember = (m: Members, fn: (w: HubWatch) => void): void => {
  if (m instanceof HubWatch) fn(m);
  else for (const w of m) fn(w);
};

/**
 * Watchers sharing a next revision, indexed by what they watch. `nextRev` is the next revision
 * every member is owed; the synced group's is the store's revision + 1.
 */
class WatcherGroup {
  size = 0;
  readonly #singles = new Map<string, Members>();
  readonly #ranges = new IntervalIndex<Members>();

  constructor(public nextRev: number) {}

  add(w: HubWatch): void {
    w.group = this;
    this.size++;
    if (w.hi === '') {
      const m = this.#singles.get(w.start);
      if (m === undefined) this.#singles.set(w.start, w);
      else if (m instanceof HubWatch) this.#singles.set(w.start, new Set([m, w]));
      else m.add(w);
      return;
    }
    const m = this.#ranges.get(w.start, w.hi);
    if (m === undefined) this.#ranges.set(w.start, w.hi, w);
    else if (m instanceof HubWatch) this.#ranges.set(w.start, w.hi, new Set([m, w]));
    else m.add(w);
  }

  delete(w: HubWatch): void {
    if (w.group !== this) return;
    w.group = undefined;
    this.size--;
    const m = w.hi === '' ? this.#singles.get(w.start) : this.#ranges.get(w.start, w.hi);
    if (m === undefined) return;
    if (m === w) {
      if (w.hi === '') this.#singles.delete(w.start);
      else this.#ranges.delete(w.start, w.hi);
    } else if (m instanceof Set) {
      m.delete(w);
      // Back to a bare watcher when one is left: a key or interval held by one watcher costs no Set.
      if (m.size === 1) {
        const [last] = m as Set<HubWatch>;
        if (w.hi === '') this.#singles.set(w.start, last!);
        else this.#ranges.set(w.start, w.hi, last!);
      }
    }
  }

  /** Calls `visit` for every member watching `key` (it must not change this group). */
  match(key: string, visit: (m: Members) => void): void {
    const m = this.#singles.get(key);
    if (m !== undefined) visit(m);
    if (this.#ranges.size > 0) this.#ranges.stab(key, visit);
  }

  /**
   * Every member, lazily, each taken out of the group as it is yielded (its `group` cleared, so
   * ending it leaves the group's indexes alone, which the iteration walks). For a group being
   * dropped whole: `close` ends its members a slice per turn without first copying them all.
   */
  *drain(): Generator<HubWatch> {
    for (const m of this.#singles.values()) {
      if (m instanceof HubWatch) {
        m.group = undefined;
        yield m;
      } else
        for (const w of m) {
          w.group = undefined;
          yield w;
        }
    }
    for (const m of this.#ranges.values()) {
      if (m instanceof HubWatch) {
        m.group = undefined;
        yield m;
      } else
        for (const w of m) {
          w.group = undefined;
          yield w;
        }
    }
  }

  /** Every member, in an array (for the rare whole-group operations: merge, fail, close). */
  members(): HubWatch[] {
    const out: HubWatch[] = [];
    const push = (m: Members) => eachMember(m, (w) => out.push(w));
    for (const m of this.#singles.values()) push(m);
    this.#ranges.forEach(push);
    return out;
  }
}

const doneResult: IteratorReturnResult<undefined> = { done: true, value: undefined };

export class HubWatch implements Watch {
  /** The revision at registration, or the error that ended the watch first (what `ready` settles with). */
  #readyOutcome: number | Error | undefined;
  #ready: Promise<number> | undefined;
  #settleReady: ((outcome: number | Error) => void) | undefined;
  readonly #hub: WatchHub;
  /** The watched key, or the interval's start (latin1 key strings). */
  readonly start: string;
  /** '' for a single key; else the interval's exclusive end (`unboundedHi`: to the end of the keys). */
  readonly hi: string;
  /** The group holding this watcher (the synced one, or a catching-up or future one); none when parked or done. */
  group: WatcherGroup | undefined;
  /** Set while registered (counted in the hub's `watchersMax`). */
  live = false;
  /** A catching-up watcher whose buffer filled: it waits for its consumer with `parkedRev` as its next revision. */
  parked = false;
  parkedRev = 0;
  readonly prevKv: boolean;
  readonly noPut: boolean;
  readonly noDelete: boolean;
  /** Revisions of replayed history per batch at most (`WatchOptions.replayBatchRevisionsMax`). */
  readonly replayRevsMax: number;
  /** The replay batch being filled in this catch-up pass (grouped replay only), its revisions and last one. */
  replay: WatchEvent[] | undefined;
  replayRevs = 0;
  replayLast = 0;
  readonly #max: number;
  readonly #buffer: WatchBatch[] = [];
  /** The revision being matched, and its events for this watcher so far (scratch of the hub's match pass). */
  batchRev = 0;
  batch: WatchEvent[] | undefined;
  /** Called once (and cleared) when a batch is buffered or the watch ends: the waiting consumer. */
  #wake: (() => void) | undefined;
  #error: unknown;
  done = false;
  readonly #signal: AbortSignal | undefined;
  /** Made only for a watch with a signal (an idle watcher's state is kept small). */
  readonly #onAbort: (() => void) | undefined;

  constructor(hub: WatchHub, key: Bytes, o: WatchOptions) {
    this.#hub = hub;
    const r = resolveRange(key, o);
    this.start = keyString(r.key);
    const end = keyString(r.end);
    this.hi = end === '\u0000' ? unboundedHi : end;
    this.prevKv = !!o.prevKv;
    this.noPut = (o.filters ?? []).includes('noput');
    this.noDelete = (o.filters ?? []).includes('nodelete');
    this.#max = o.bufferBatchesMax ?? limits.watchBufferBatchesMax;
    this.replayRevsMax = Math.max(1, Math.floor(o.replayBatchRevisionsMax ?? 1));
    this.#signal = o.signal;
    if (o.signal?.aborted) queueMicrotask(() => void this.close());
    else if (o.signal) {
      this.#onAbort = () => void this.close();
      o.signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /**
   * The store revision at registration (see `Watch.ready`); rejects if the watch failed or was
   * closed first. Made on first use: the hub settles a watch as it creates it, so most watchers
   * never need a promise of their own.
   */
  get ready(): Promise<number> {
    if (this.#ready) return this.#ready;
    const outcome = this.#readyOutcome;
    if (outcome === undefined) {
      this.#ready = new Promise<number>((resolve, reject) => {
        this.#settleReady = (r) => (typeof r === 'number' ? resolve(r) : reject(r));
      });
    } else this.#ready = typeof outcome === 'number' ? Promise.resolve(outcome) : Promise.reject(outcome);
    this.#ready.catch(() => undefined);
    return this.#ready;
  }

  #settle(outcome: number | Error): void {
    if (this.#readyOutcome !== undefined) return;
    this.#readyOutcome = outcome;
    this.#settleReady?.(outcome);
    this.#settleReady = undefined;
  }

  /** Whether this watcher's key or range holds `k` (filters aside). */
  matches(k: string): boolean {
    if (this.hi === '') return k === this.start;
    return k >= this.start && k < this.hi;
  }

  /** Whether the buffer has room for one more batch. */
  get hasRoom(): boolean {
    return this.#buffer.length < this.#max;
  }

  /**
   * Whether the buffer has room for one more replay batch: buffered batches count as
   * `replayRevsMax` revisions each, so the revisions buffered stay near `bufferBatchesMax`
   * (plus one batch) whether replay is grouped or not.
   */
  get hasReplayRoom(): boolean {
    return this.#buffer.length * this.replayRevsMax < this.#max;
  }

  /** Delivers one revision's batch; a live watcher with a full buffer ends with `watch-overflow`. */
  push(rev: number, events: WatchEvent[]): void {
    if (this.done) return;
    if (this.#buffer.length >= this.#max) {
      this.fail(
        new ConclaveError(
          ErrorCode.WatchOverflow,
          `watch: the consumer fell ${this.#max} batches behind; resume from revision ${this.#buffer[0]?.revision ?? rev} with a new watch`,
        ),
      );
      return;
    }
    this.#buffer.push({ events, revision: rev });
    this.#rouse();
  }

  /** Registered in the hub at `revision`: resolves `ready`. */
  registered(revision: number): void {
    this.#settle(revision);
  }

  fail(err: unknown): void {
    if (this.done) return;
    this.#error = err;
    this.#finish();
  }

  #finish(): void {
    this.done = true;
    // Made only when `ready` is still unsettled (rare): an error's stack trace costs more than the
    // rest of a close, which closing 100,000 watchers pays 100,000 times.
    if (this.#readyOutcome === undefined)
      this.#settle(
        this.#error instanceof Error
          ? this.#error
          : new ConclaveError(ErrorCode.Closed, 'watch closed before it was created'),
      );
    if (this.#onAbort) this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#hub.remove(this);
    this.#rouse();
  }

  async close(): Promise<void> {
    if (this.done) return;
    this.#buffer.length = 0;
    this.#finish();
  }

  /**
   * The next buffered batch, taken out of the buffer (what the iterator hands over next), or
   * undefined when none is buffered. For the embedded client's failover wrapper, which reads its
   * member's watch this way rather than through a second iterator per batch.
   */
  take(): WatchBatch | undefined {
    const b = this.#buffer.shift();
    // A parked catch-up resumes once half the buffer is free (not after every batch).
    if (b && this.parked && this.#buffer.length <= this.#max >> 1) this.#hub.unpark(this);
    return b;
  }

  /** What ended the watch (undefined: closed by its owner, or not ended: see `done`). */
  get error(): unknown {
    return this.#error;
  }

  #rouse(): void {
    const wake = this.#wake;
    if (wake === undefined) return;
    this.#wake = undefined;
    wake();
  }

  /**
   * Calls `fn` once, when a batch is buffered or the watch ends (one waiter at a time: a later
   * call replaces it). The consumer's own promise is settled from there, with no promise between.
   */
  onArrival(fn: () => void): void {
    this.#wake = fn;
  }

  /** Resolves when a batch is buffered or the watch ends (one waiter at a time). */
  arrival(): Promise<void> {
    return new Promise<void>((r) => this.onArrival(r));
  }

  /**
   * The iterator's step. Hand-written rather than an async generator: a generator's yield costs
   * several promises and microtask turns per batch, which a prefix watched by 10,000 watchers
   * pays 10,000 times per event; a buffered batch here costs one resolved promise.
   */
  #next(): Promise<IteratorResult<WatchBatch>> {
    const b = this.take();
    if (b) return Promise.resolve({ value: b, done: false });
    if (this.done)
      return this.#error !== undefined ? Promise.reject(this.#error) : Promise.resolve(doneResult);
    return new Promise((resolve, reject) =>
      this.onArrival(() => {
        const b = this.take();
        if (b) resolve({ value: b, done: false });
        else this.#next().then(resolve, reject);
      }),
    );
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    return {
      next: () => this.#next(),
      // A consumer that leaves its loop early (break, throw) closes the watch.
      return: async () => {
        await this.close();
        return doneResult;
      },
    };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export class WatchHub {
  readonly #mvcc: Mvcc;
  /** Watchers registered (every group, and parked), bounded by `watchersMax`. */
  #count = 0;
  #synced: WatcherGroup;
  /** Catching-up groups by next revision (each at or below the store's revision). */
  readonly #catching = new Map<number, WatcherGroup>();
  /** Groups by start revision, ahead of the store's revision + 1. */
  readonly #future = new Map<number, WatcherGroup>();
  /** Catching-up watchers waiting for their consumer to make room. */
  readonly #parked = new Set<HubWatch>();
  #catchUpTimer: ReturnType<typeof setImmediate> | undefined;
  #closed = false;
  /**
   * Events by revision, for history replay: a cache of what the MVCC records hold, complete for
   * every revision in [#historyFrom, #historyTo]; revision r is at `#history[#head + r -
   * #historyFrom]` (undefined: a revision without events). It holds the last `recentRevisions`
   * revisions and, older than those, only what a catching-up or parked watcher still needs
   * (`#trim`). It is not built when a store is restored or replaced (a million restored keys
   * would mean a million events nobody may ask for); a watch that starts before #historyFrom
   * fills it from the records first (`#cover`).
   */
  #history: Array<RevEvents | undefined> = [];
  /** Index in #history of revision #historyFrom (the slots before it were dropped). */
  #head = 0;
  #historyFrom: number;
  #historyTo: number;
  /**
   * The oldest revision a catching-up or parked watcher still needs (Infinity: none), recomputed
   * by #trim when `#floorStale` (set whenever the catching-up groups or the parked set change).
   */
  #floor = Number.POSITIVE_INFINITY;
  #floorStale = false;
  /** Recent revisions kept whoever watches (`historyRecentMax`; settable for tests). */
  recentRevisions = historyRecentMax;
  /**
   * Watchers the match passes have looked at so far (one per watcher and event it matched by key
   * or interval, filters aside): what matching costs beyond the lookups, counted for tests. A
   * write no watcher watches adds 0, however many watch other keys.
   */
  visited = 0;

  // Scratch of one match pass (reused: nothing per watcher is allocated per revision).
  /** Watchers with events in the revision being matched. */
  readonly #touched: HubWatch[] = [];
  /** Watchers with a replay batch open in the current catch-up pass (grouped replay). */
  readonly #replaying: HubWatch[] = [];
  #curRev = 0;
  #curEvent: MvccEvent | undefined;
  /**
   * The current event as delivered, made once per event when a watcher matches it and shared by
   * every watcher it matches: without prevKv, and with it (the same object when it has none).
   */
  #curPlain: WatchEvent | undefined;
  #curWithPrev: WatchEvent | undefined;
  readonly #visit = (m: Members): void => {
    if (m instanceof HubWatch) this.#collect(m);
    else for (const w of m) this.#collect(w);
  };

  constructor(mvcc: Mvcc) {
    this.#mvcc = mvcc;
    this.#historyFrom = mvcc.currentRev + 1;
    this.#historyTo = mvcc.currentRev;
    this.#synced = new WatcherGroup(mvcc.currentRev + 1);
  }

  /** Watchers registered now (every group). */
  get size(): number {
    return this.#count;
  }

  /** Revisions the replay history holds in memory now (for tests and diagnostics). */
  get historyRevisions(): number {
    return this.#historyTo - this.#historyFrom + 1;
  }

  /** Watchers in each group kind (for tests and diagnostics). */
  groups(): { synced: number; catchingUp: number; future: number; parked: number } {
    let catchingUp = 0;
    let future = 0;
    for (const g of this.#catching.values()) catchingUp += g.size;
    for (const g of this.#future.values()) future += g.size;
    return { synced: this.#synced.size, catchingUp, future, parked: this.#parked.size };
  }

  watch(key: Bytes, o: WatchOptions): HubWatch {
    const w = new HubWatch(this, key, o);
    if (this.#count >= watchersMax) {
      w.fail(
        new ConclaveError(
          ErrorCode.TooManyRequests,
          `too many watches on this member (watchersMax ${watchersMax}); close watches that are no longer needed`,
        ),
      );
      return w;
    }
    if (this.#closed) {
      w.fail(new ConclaveError(ErrorCode.Closed, 'the store was closed'));
      return w;
    }
    // The state was replaced under the hub without a resync (a restored store): resync first.
    if (this.#historyTo !== this.#mvcc.currentRev) this.resync();
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
    w.live = true;
    this.#count++;
    w.registered(current);
    const next = startRev > 0 ? startRev : current + 1;
    if (next === current + 1) this.#synced.add(w);
    else if (next > current) this.#groupAt(this.#future, next).add(w);
    else {
      const g = this.#groupAt(this.#catching, next);
      g.add(w);
      // A short replay completes here, as the watch is created; a long one goes on later turns.
      this.#catchUp(g, catchUpScanMax);
      this.#scheduleCatchUp();
    }
    return w;
  }

  #groupAt(groups: Map<number, WatcherGroup>, rev: number): WatcherGroup {
    let g = groups.get(rev);
    if (!g) groups.set(rev, (g = new WatcherGroup(rev)));
    return g;
  }

  remove(w: HubWatch): void {
    if (!w.live) return;
    w.live = false;
    this.#count--;
    const g = w.group;
    if (g && this.#closed) {
      // The hub is closing: its groups were dropped and are being walked by `close` (which must
      // not see them change under it); this watcher is simply no longer in one.
      w.group = undefined;
    } else if (g) {
      g.delete(w);
      if (g.size === 0 && g !== this.#synced) {
        if (this.#catching.get(g.nextRev) === g) {
          this.#catching.delete(g.nextRev);
          this.#floorStale = true;
        }
        if (this.#future.get(g.nextRev) === g) this.#future.delete(g.nextRev);
      }
    }
    if (w.parked) {
      w.parked = false;
      this.#parked.delete(w);
      this.#floorStale = true;
    }
  }

  /** A parked watcher's consumer made room: it catches up again from where it stopped. */
  unpark(w: HubWatch): void {
    // A closing hub ends its parked watchers where they are.
    if (!w.parked || !w.live || this.#closed) return;
    w.parked = false;
    this.#parked.delete(w);
    this.#floorStale = true;
    this.#place(w, w.parkedRev);
    this.#scheduleCatchUp();
  }

  /** Puts a watcher owed revision `rev` in the group it belongs to now. */
  #place(w: HubWatch, rev: number): void {
    const current = this.#historyTo;
    if (rev === current + 1) this.#synced.add(w);
    else if (rev > current) this.#groupAt(this.#future, rev).add(w);
    else this.#groupAt(this.#catching, rev).add(w);
  }

  /** Forgets the history: it starts after revision `to` (older ones are filled on demand). */
  #reset(to: number): void {
    this.#history = [];
    this.#head = 0;
    this.#historyFrom = to + 1;
    this.#historyTo = to;
  }

  /** The events of revision `rev`, in [#historyFrom, #historyTo] (undefined: none). */
  #at(rev: number): RevEvents | undefined {
    return this.#history[this.#head + rev - this.#historyFrom];
  }

  /**
   * Makes the history complete from `rev` (at or after the compaction revision) to the current
   * revision, reading what it lacks from the MVCC records (one pass over the index). When the
   * history would pass `historyRevisionsMax`, only the revisions nearest the present are filled
   * (none when it is full already): the caller reads the older ones from the records directly.
   */
  #cover(rev: number): void {
    const from = Math.max(rev, this.#historyTo + 1 - historyRevisionsMax);
    if (from >= this.#historyFrom) return;
    const filled: Array<RevEvents | undefined> = new Array(this.#historyFrom - from);
    for (const h of this.#mvcc.eventsSince(from, this.#historyFrom)) filled[h.rev - from] = one(h.events);
    this.#history = filled.concat(this.#history.slice(this.#head));
    this.#head = 0;
    this.#historyFrom = from;
  }

  /**
   * Drops the revisions nobody may need from the front of the history: older than the last
   * `recentRevisions` and than what every catching-up and parked watcher still needs, or past
   * `historyRevisionsMax`. O(1) amortized per revision (the array is compacted when half empty).
   */
  #trim(): void {
    if (this.#floorStale) {
      this.#floorStale = false;
      let floor = Number.POSITIVE_INFINITY;
      for (const r of this.#catching.keys()) if (r < floor) floor = r;
      for (const w of this.#parked) if (w.parkedRev < floor) floor = w.parkedRev;
      this.#floor = floor;
    }
    const to = this.#historyTo;
    const from = Math.max(Math.min(to + 1 - this.recentRevisions, this.#floor), to + 1 - historyRevisionsMax);
    if (from <= this.#historyFrom) return;
    const drop = Math.min(from, to + 1) - this.#historyFrom;
    const h = this.#history;
    for (let i = this.#head, end = this.#head + drop; i < end; i++) h[i] = undefined;
    this.#head += drop;
    this.#historyFrom += drop;
    if (this.#head >= 64 && this.#head * 2 >= h.length) {
      h.copyWithin(0, this.#head);
      h.length -= this.#head;
      this.#head = 0;
    }
  }

  notify(rev: number, events: readonly MvccEvent[]): void {
    // The state changed under the hub (a store restored without resync): resync as of `rev - 1`.
    if (this.#historyTo !== rev - 1) this.#rebase(rev - 1);
    this.#historyTo = rev;
    // The store's array for the revision is dropped when it holds one event (the usual put).
    this.#history.push(one(events));
    this.#trim();
    // Watchers that start at this revision join the synced group first.
    const f = this.#future.size > 0 ? this.#future.get(rev) : undefined;
    if (f) {
      this.#future.delete(rev);
      this.#merge(f, this.#synced);
    }
    const synced = this.#synced;
    if (synced.size > 0) {
      this.#match(synced, rev, events);
      this.#deliver(rev);
    }
    synced.nextRev = rev + 1;
  }

  /** Hands every watcher collected by #match its batch of `rev`. */
  #deliver(rev: number): void {
    for (const w of this.#touched) {
      const batch = w.batch!;
      w.batch = undefined;
      w.push(rev, batch);
    }
    this.#touched.length = 0;
  }

  /** Collects, into #touched, every watcher of `g` with events in `rev` (each with its batch). */
  #match(g: WatcherGroup, rev: number, events: RevEvents): void {
    this.#curRev = rev;
    if (isList(events)) for (let i = 0; i < events.length; i++) this.#matchOne(g, events[i]!);
    else this.#matchOne(g, events);
    this.#curEvent = undefined;
    this.#curPlain = undefined;
    this.#curWithPrev = undefined;
  }

  #matchOne(g: WatcherGroup, e: MvccEvent): void {
    this.#curEvent = e;
    this.#curPlain = undefined;
    this.#curWithPrev = undefined;
    // A put's event carries its key string: an event no watcher matches never makes its kv.
    g.match(e.latin1Key ?? keyString(e.kv.key), this.#visit);
  }

  #collect(w: HubWatch): void {
    this.visited++;
    const e = this.#curEvent!;
    if (e.type === 'put' ? w.noPut : w.noDelete) return;
    // Plain objects (a store event may be a lazy class instance), made once per event.
    let ev: WatchEvent | undefined = w.prevKv ? this.#curWithPrev : this.#curPlain;
    if (ev === undefined) {
      this.#curPlain ??= { type: e.type, kv: e.kv };
      if (w.prevKv) {
        const prevKv = e.prevKv;
        ev = this.#curWithPrev = prevKv ? { type: e.type, kv: e.kv, prevKv } : this.#curPlain;
      } else ev = this.#curPlain;
    }
    if (w.batchRev !== this.#curRev || w.batch === undefined) {
      w.batchRev = this.#curRev;
      w.batch = [ev];
      this.#touched.push(w);
    } else w.batch.push(ev);
  }

  /** Moves every member of `from` into `into` (the larger group is kept, the smaller one emptied). */
  #merge(from: WatcherGroup, into: WatcherGroup): void {
    if (from.size > into.size) {
      // Keep the larger group's index: it takes the smaller one's members and `into`'s role.
      from.nextRev = into.nextRev;
      if (into === this.#synced) this.#synced = from;
      else if (this.#catching.get(into.nextRev) === into) this.#catching.set(into.nextRev, from);
      else if (this.#future.get(into.nextRev) === into) this.#future.set(into.nextRev, from);
      [from, into] = [into, from];
    }
    for (const w of from.members()) {
      from.delete(w);
      into.add(w);
    }
  }

  #scheduleCatchUp(): void {
    if (this.#catchUpTimer !== undefined || this.#catching.size === 0 || this.#closed) return;
    this.#catchUpTimer = setImmediate(() => {
      this.#catchUpTimer = undefined;
      let budget = catchUpScanMax;
      // Oldest groups first (their history is the likeliest to be compacted or evicted).
      const groups = [...this.#catching.values()].sort((a, b) => a.nextRev - b.nextRev);
      for (const g of groups) {
        if (budget <= 0) break;
        if (g.size > 0 && this.#catching.get(g.nextRev) === g) budget = this.#catchUp(g, budget);
      }
      this.#scheduleCatchUp();
    });
  }

  /**
   * Replays history to the catching-up group `g` from its next revision, at most `budget`
   * revisions; returns the budget left. A member whose buffer is full is parked at the revision it
   * did not get; the group joins the synced one when it reaches the store's revision, or another
   * catching-up group it reaches.
   */
  #catchUp(g: WatcherGroup, budget: number): number {
    this.#catching.delete(g.nextRev);
    this.#floorStale = true;
    const compactRev = this.#mvcc.compactRev;
    if (g.nextRev < compactRev) {
      this.#failCompacted(g.members(), compactRev);
      return budget;
    }
    this.#cover(g.nextRev);
    let rev = g.nextRev;
    if (rev < this.#historyFrom) {
      // The history is full and starts later: read this stretch straight from the records.
      const upTo = Math.min(this.#historyFrom, rev + budget);
      for (const h of this.#mvcc.eventsSince(rev, upTo)) {
        if (g.size === 0) break;
        const events = one(h.events);
        if (events !== undefined) this.#replay(g, h.rev, events);
      }
      budget -= upTo - rev;
      rev = upTo;
    } else {
      const upTo = Math.min(this.#historyTo + 1, rev + budget);
      budget -= upTo - rev;
      for (; rev < upTo && g.size > 0; rev++) {
        const events = this.#at(rev);
        if (events !== undefined) this.#replay(g, rev, events);
      }
    }
    g.nextRev = rev;
    // Grouped replay: each batch still open ends here, covering everything up to `rev - 1`.
    for (const w of this.#replaying) if (w.replay !== undefined) this.#flushReplay(w, rev - 1);
    this.#replaying.length = 0;
    if (g.size === 0) return budget;
    if (g.nextRev === this.#historyTo + 1) this.#merge(g, this.#synced);
    else {
      const other = this.#catching.get(g.nextRev);
      if (other) this.#merge(g, other);
      else this.#catching.set(g.nextRev, g);
    }
    return budget;
  }

  /**
   * Replays one revision to a catching-up group: a member with a full buffer is parked there. A
   * member with grouped replay (`replayRevsMax` > 1) adds the revision's events to the batch it
   * fills in this pass, as etcd's syncWatchers sends one response of up to watchBatchMaxRevs
   * revisions per unsynced watcher (mvcc/watchable_store.go, watcher_group.go newWatcherBatch).
   */
  #replay(g: WatcherGroup, rev: number, events: RevEvents): void {
    this.#match(g, rev, events);
    for (const w of this.#touched) {
      const batch = w.batch!;
      w.batch = undefined;
      if (w.replayRevsMax === 1) {
        if (w.hasRoom) w.push(rev, batch);
        else this.#park(w, rev);
        continue;
      }
      if (w.replay !== undefined && w.replayRevs < w.replayRevsMax) {
        for (let i = 0; i < batch.length; i++) w.replay.push(batch[i]!);
        w.replayRevs++;
        w.replayLast = rev;
        continue;
      }
      if (w.replay !== undefined) this.#flushReplay(w, w.replayLast);
      if (w.hasReplayRoom) {
        w.replay = batch;
        w.replayRevs = 1;
        w.replayLast = rev;
        this.#replaying.push(w);
      } else this.#park(w, rev);
    }
    this.#touched.length = 0;
  }

  /** Delivers a grouped replay batch as covering everything up to `revision`. */
  #flushReplay(w: HubWatch, revision: number): void {
    const events = w.replay!;
    w.replay = undefined;
    w.replayRevs = 0;
    w.push(revision, events);
  }

  #park(w: HubWatch, rev: number): void {
    w.group?.delete(w);
    w.parked = true;
    w.parkedRev = rev;
    this.#parked.add(w);
    this.#floorStale = true;
  }

  #failCompacted(ws: readonly HubWatch[], compactRev: number): void {
    const e = new ConclaveError(
      ErrorCode.Compacted,
      `watch: the revisions this watch still had to replay were compacted; the oldest available revision is ${compactRev}`,
      { compactRevision: compactRev },
    );
    for (const w of ws) w.fail(e);
  }

  compacted(rev: number): void {
    if (this.#historyFrom < rev) {
      const drop = Math.min(rev, this.#historyTo + 1) - this.#historyFrom;
      this.#history = this.#history.slice(this.#head + drop);
      this.#head = 0;
      this.#historyFrom += drop;
    }
    // Catching-up watchers still owed a compacted revision end with `compacted` (etcd does the same
    // to an unsynced watcher whose minRev fell below the compaction: watchable_store.go chooseAll).
    for (const g of [...this.#catching.values()]) if (g.nextRev < rev) this.#failCompacted(g.members(), rev);
    const parked = [...this.#parked].filter((w) => w.parkedRev < rev);
    if (parked.length > 0) this.#failCompacted(parked, rev);
  }

  /**
   * After the store's state was replaced (a Raft snapshot installed, or restored at startup):
   * forgets the replay history (it is filled from the new records on demand), ends watchers whose
   * next revision is now compacted, and catches the others up from the new state (etcd moves its
   * synced watchers to the unsynced group after a snapshot restore the same way).
   */
  resync(): void {
    this.#rebase(this.#mvcc.currentRev);
  }

  #rebase(current: number): void {
    const groups = [this.#synced, ...this.#catching.values(), ...this.#future.values()];
    this.#synced = new WatcherGroup(current + 1);
    this.#catching.clear();
    this.#future.clear();
    this.#floorStale = true;
    this.#reset(current);
    const compactRev = this.#mvcc.compactRev;
    for (const g of groups) {
      if (g.size === 0) continue;
      if (g.nextRev < compactRev) this.#failCompactedBySnapshot(g.members(), compactRev);
      else if (g.nextRev === current + 1) this.#merge(g, this.#synced);
      else {
        const groupsAt = g.nextRev > current ? this.#future : this.#catching;
        const other = groupsAt.get(g.nextRev);
        if (other) this.#merge(g, other);
        else groupsAt.set(g.nextRev, g);
      }
    }
    const lost = [...this.#parked].filter((w) => w.parkedRev < compactRev);
    if (lost.length > 0) this.#failCompactedBySnapshot(lost, compactRev);
    // As at registration: a short replay is done now, a long one on later turns.
    let budget = catchUpScanMax;
    for (const g of [...this.#catching.values()].sort((a, b) => a.nextRev - b.nextRev)) {
      if (budget <= 0) break;
      if (this.#catching.get(g.nextRev) === g) budget = this.#catchUp(g, budget);
    }
    this.#scheduleCatchUp();
  }

  #failCompactedBySnapshot(ws: readonly HubWatch[], compactRev: number): void {
    const e = new ConclaveError(
      ErrorCode.Compacted,
      `watch: the member installed a snapshot past this watch's revision; the oldest available revision is ${compactRev}`,
      { compactRevision: compactRev },
    );
    for (const w of ws) w.fail(e);
  }

  /**
   * Closes the hub: new watches fail `closed` at once, and every registered watcher ends with
   * `closed`, `watchCloseSliceMax` of them per turn of the event loop (so a member stopping with
   * 100,000 watchers does not hold the loop; nothing is applied to a closed store meanwhile).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#catchUpTimer !== undefined) clearImmediate(this.#catchUpTimer);
    this.#catchUpTimer = undefined;
    const e = new ConclaveError(ErrorCode.Closed, 'the store was closed');
    // The groups are dropped whole (nothing is applied to a closed store), their members ended
    // from a lazy walk: no O(W) copy or stretch up front.
    const groups = [this.#synced, ...this.#catching.values(), ...this.#future.values()];
    this.#synced = new WatcherGroup(this.#historyTo + 1);
    this.#catching.clear();
    this.#future.clear();
    const parked = this.#parked;
    const pending = (function* () {
      for (const g of groups) yield* g.drain();
      yield* parked;
    })();
    const slice = () => {
      for (let i = 0; i < watchCloseSliceMax; i++) {
        const r = pending.next();
        if (r.done) return;
        r.value.fail(e);
      }
      setImmediate(slice);
    };
    slice();
  }
}
