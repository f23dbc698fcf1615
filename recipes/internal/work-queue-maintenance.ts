/**
 * The background duties every consuming WorkQueue participant shares (any one of them suffices;
 * several race safely, because every write is a txn guarded so that exactly one wins):
 *
 * - Reaper: when a claim's lease key (`inflight/lease/<id>`) disappears without its record
 *   (`inflight/rec/<id>`) being deleted at the same revision, the claim's lease expired or was
 *   revoked (etcd deletes a lease's keys at one revision when it expires); the item goes back to
 *   ready (or to dead letters once it used up its attempts). A sweep at start, and after any watch
 *   gap (compaction, overflow, reconnect), finds records whose lease key is gone.
 * - Promoter: delayed items become ready when due, by the client clock. One timer on the earliest
 *   due key; the watch on `delayed/` re-arms it when an earlier key appears.
 *
 * Both are watch-driven; a broken watch is re-established after a fresh read, with bounded
 * consecutive attempts and back-off.
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { WatchBatch, WatchFilter } from '../../src/types.js';
import { backoffMs, pause } from './timing.js';
import {
  clipError,
  decodeRecord,
  encodeRecord,
  idOf,
  type StateRecord,
  WorkQueueKeys,
} from './work-queue-keys.js';

/** Item ids waiting to be checked by the reaper; past it the queue is cleared and one sweep replaces it. */
export const workQueueReapPendingMax = 10_000;
/** Keys read per page by sweeps and promotion rounds. */
export const workQueuePageKeysMax = 500;
/** Most in-flight keys one sweep reads; a larger backlog is swept again once this part is done. */
export const workQueueSweepKeysMax = 200_000;
/** Consecutive failed attempts of a background duty (watch + read) before the queue fails. */
export const workQueueRestartAttemptsMax = 20;
/** Longest back-off (ms) between two attempts of a background duty. */
export const workQueueBackoffMsMax = 2000;
/** A watch that ran this long (ms) before breaking counts as healthy: the failure count starts over. */
export const workQueueWatchHealthyMs = 10_000;
/** Longest single timer (ms) of the promoter; it re-checks the clock when it fires. */
export const workQueueTimerMsMax = 60_000;

export interface MaintenanceDeps {
  readonly kv: KV;
  readonly keys: WorkQueueKeys;
  /** Called once when a duty failed for good; the queue then fails its calls with `err`. */
  readonly onFailure: (err: unknown) => void;
}

/** The destination of an item leaving a claim: ready again, or dead once out of attempts. */
export function requeueKey(keys: WorkQueueKeys, id: string, r: StateRecord): { key: string; dead: boolean } {
  return r.a >= r.m ? { key: keys.dead(id), dead: true } : { key: keys.ready(r.p, id), dead: false };
}

export class WorkQueueMaintenance {
  readonly #d: MaintenanceDeps;
  readonly #stop = new AbortController();
  readonly #running: Promise<void>[] = [];
  readonly #reapIds = new Set<string>();
  #sweepWanted = false;
  #reaping: Promise<void> | undefined;
  #armed: { dueMs: number; timer: ReturnType<typeof setTimeout> } | undefined;
  #promoting: Promise<void> | undefined;
  #promoteAgain = false;
  #failures = 0;

  constructor(deps: MaintenanceDeps) {
    this.#d = deps;
  }

  start(): void {
    const signal = this.#stop.signal;
    const { keys } = this.#d;
    this.#running.push(
      this.#loop(
        keys.inflightPrefix,
        ['noput'],
        signal,
        (s) => this.#sweep(s),
        (b) => this.#onInflight(b),
      ),
      this.#loop(
        keys.delayedPrefix,
        ['nodelete'],
        signal,
        (s) => this.#promoteDue(s),
        (b) => this.#onDelayed(b),
      ),
    );
  }

  async close(): Promise<void> {
    this.#stop.abort(new ConclaveError(ErrorCode.Closed, 'work queue closed'));
    clearTimeout(this.#armed?.timer);
    this.#armed = undefined;
    await Promise.allSettled([...this.#running, this.#reaping, this.#promoting]);
  }

  #fail(err: unknown): void {
    if (this.#stop.signal.aborted) return;
    this.#stop.abort(err);
    clearTimeout(this.#armed?.timer);
    this.#d.onFailure(err);
  }

  /**
   * Reads the present (`resync`, which returns the revision it read at), then watches from the
   * next revision; on any watch failure starts over. Gives up after `workQueueRestartAttemptsMax`
   * consecutive failures without a delivered batch (or a healthy stretch of watching).
   */
  async #loop(
    prefix: string,
    filters: WatchFilter[],
    signal: AbortSignal,
    resync: (signal: AbortSignal) => Promise<number>,
    onBatch: (b: WatchBatch) => void,
  ): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      try {
        const rev = await resync(signal);
        if (signal.aborted) return;
        const span = WorkQueueKeys.span(prefix);
        const w = this.#d.kv.watch(span.key, { end: span.end, startRevision: rev + 1, filters, signal });
        const openedAt = performance.now();
        try {
          for await (const b of w) {
            failures = 0;
            onBatch(b);
          }
        } catch (err) {
          // A watch that ran quietly for a while was healthy: an occasional break starts the count over.
          if (performance.now() - openedAt >= workQueueWatchHealthyMs) failures = 0;
          throw err;
        } finally {
          await w.close();
        }
        if (signal.aborted) return;
        if (performance.now() - openedAt >= workQueueWatchHealthyMs) failures = 0;
        throw new ConclaveError(ErrorCode.Unavailable, `work queue: the watch on ${prefix} ended`);
      } catch (err) {
        if (signal.aborted) return;
        if (++failures >= workQueueRestartAttemptsMax) {
          this.#fail(
            new ConclaveError(
              ErrorCode.Unavailable,
              `work queue: watching ${prefix} failed ${failures} times in a row; close the queue and create it again once the store is reachable`,
              { cause: err },
            ),
          );
          return;
        }
        await pause(backoffMs(failures, workQueueBackoffMsMax), signal);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reaper

  /** Lease keys deleted at a revision that did not also delete their record: expired claims. */
  #onInflight(b: WatchBatch): void {
    const { keys } = this.#d;
    const byRev = new Map<number, { leases: string[]; recs: Set<string> }>();
    for (const e of b.events) {
      if (e.type !== 'delete') continue;
      let g = byRev.get(e.kv.modRevision);
      if (!g) byRev.set(e.kv.modRevision, (g = { leases: [], recs: new Set() }));
      const k = toText(e.kv.key);
      if (k.startsWith(keys.leasePrefix)) g.leases.push(idOf(e.kv.key));
      else if (k.startsWith(keys.recPrefix)) g.recs.add(idOf(e.kv.key));
    }
    for (const g of byRev.values()) for (const id of g.leases) if (!g.recs.has(id)) this.#queueReap(id);
  }

  #queueReap(id: string): void {
    if (this.#reapIds.size >= workQueueReapPendingMax) {
      // Too many to track one by one: a sweep finds them all.
      this.#reapIds.clear();
      this.#sweepWanted = true;
    } else {
      this.#reapIds.add(id);
    }
    // The drain clears `#reaping` itself, in the same synchronous stretch as its last check of
    // the queue: a `.finally()` here would run some microtasks after the drain saw the queue empty,
    // and an id queued in between would find `#reaping` still set and wait for nobody.
    if (this.#reaping === undefined && !this.#stop.signal.aborted) this.#reaping = this.#drainReaps();
  }

  async #drainReaps(): Promise<void> {
    const signal = this.#stop.signal;
    try {
      // The first check runs after `#queueReap` has stored this drain as `#reaping`.
      await Promise.resolve();
      // Terminates: each turn removes an id or the sweep flag; new ones only come from watch events.
      while (!signal.aborted && (this.#reapIds.size > 0 || this.#sweepWanted)) {
        try {
          if (this.#sweepWanted) {
            this.#sweepWanted = false;
            await this.#sweep(signal);
            continue;
          }
          const id = this.#reapIds.values().next().value as string;
          this.#reapIds.delete(id);
          await this.reap(id, signal);
          this.#failures = 0;
        } catch (err) {
          if (signal.aborted) return;
          // A failed check is retried by a sweep (it re-reads everything), boundedly often.
          this.#sweepWanted = true;
          if (++this.#failures >= workQueueRestartAttemptsMax) {
            this.#fail(err);
            return;
          }
          await pause(backoffMs(this.#failures, workQueueBackoffMsMax), signal);
        }
      }
    } finally {
      // No await between the loop's last check and here (see `#queueReap`).
      this.#reaping = undefined;
    }
  }

  /**
   * Returns the item of an expired claim to the queue: if its record exists and its lease key
   * does not, one txn guarded by the record's mod revision and the lease key's absence deletes the
   * record and puts the item back (or into dead letters). Idempotent; safe to race.
   */
  async reap(id: string, signal: AbortSignal): Promise<boolean> {
    const { kv, keys } = this.#d;
    const read = await kv.txn(
      {
        compare: [],
        success: [
          { type: 'get', key: keys.rec(id) },
          { type: 'get', key: keys.lease(id), options: { keysOnly: true } },
        ],
        failure: [],
      },
      { signal },
    );
    const rec = read.responses[0]?.type === 'get' ? read.responses[0].kvs[0] : undefined;
    const held = read.responses[1]?.type === 'get' ? read.responses[1].kvs.length > 0 : true;
    if (!rec || held) return false;
    const r = decodeRecord(rec.key, rec.value);
    const error = clipError(
      `the claim by consumer ${r.c ?? '?'} expired (visibility timeout passed or its lease was revoked) before ack or nack`,
    );
    const next: StateRecord = { p: r.p, a: r.a, m: r.m, e: error, ...(r.c ? { c: r.c } : {}), t: Date.now() };
    const dest = requeueKey(keys, id, r);
    const t = await kv.txn(
      {
        compare: [
          { key: keys.rec(id), target: 'mod', result: '=', value: rec.modRevision },
          { key: keys.lease(id), target: 'create', result: '=', value: 0 },
        ],
        success: [
          { type: 'delete', key: keys.rec(id) },
          { type: 'put', key: dest.key, value: encodeRecord(next) },
        ],
        failure: [],
      },
      { signal },
    );
    return t.succeeded;
  }

  /**
   * Finds every claim record whose lease key is gone, at one pinned revision, and reaps it.
   * Returns that revision (the watch continues after it).
   */
  async #sweep(signal: AbortSignal): Promise<number> {
    const { kv, keys } = this.#d;
    const leases = new Set<string>();
    const orphans: string[] = [];
    let revision = 0;
    let read = 0;
    // Lease keys sort before record keys ("lease/" < "rec/"): collect the live ones first.
    for (const [prefix, visit] of [
      [keys.leasePrefix, (id: string) => leases.add(id)],
      [keys.recPrefix, (id: string) => !leases.has(id) && orphans.push(id)],
    ] as const) {
      const span = WorkQueueKeys.span(prefix);
      let from = span.key;
      // Terminates: each page starts after the previous page's last key; bounded by the key count.
      while (read < workQueueSweepKeysMax) {
        const r = await kv.range(from, {
          end: span.end,
          limit: workQueuePageKeysMax,
          keysOnly: true,
          ...(revision > 0 ? { revision } : {}),
          signal,
        });
        if (revision === 0) revision = r.revision;
        read += r.kvs.length;
        for (const k of r.kvs) visit(idOf(k.key));
        const last = r.kvs[r.kvs.length - 1];
        if (!r.more || !last) break;
        from = new Uint8Array([...last.key, 0]);
      }
    }
    // Past the bound, the records beyond it are checked by a later sweep (or by their lease's
    // delete event); sweeping again at once could spin on a backlog that is simply in flight.
    for (const id of orphans) {
      signal.throwIfAborted();
      await this.reap(id, signal);
    }
    return revision;
  }

  // -------------------------------------------------------------------------------------------
  // Promoter

  #onDelayed(b: WatchBatch): void {
    for (const e of b.events) {
      if (e.type !== 'put') continue;
      const due = this.#d.keys.dueOf(e.kv.key);
      if (due !== undefined) this.#arm(due);
    }
  }

  /** Fires a promotion at `dueMs` (client clock), unless one is armed for an earlier time. */
  #arm(dueMs: number): void {
    if (this.#stop.signal.aborted) return;
    if (this.#armed && this.#armed.dueMs <= dueMs) return;
    clearTimeout(this.#armed?.timer);
    const ms = Math.max(0, Math.min(workQueueTimerMsMax, dueMs - Date.now()));
    const timer = setTimeout(() => {
      this.#armed = undefined;
      this.#requestPromote();
    }, ms);
    timer.unref?.();
    this.#armed = { dueMs, timer };
  }

  #requestPromote(): void {
    if (this.#promoting) {
      this.#promoteAgain = true;
      return;
    }
    const signal = this.#stop.signal;
    this.#promoting = (async () => {
      try {
        do {
          this.#promoteAgain = false;
          await this.#promoteDue(signal);
        } while (this.#promoteAgain && !signal.aborted);
        this.#failures = 0;
      } catch (err) {
        if (signal.aborted) return;
        if (++this.#failures >= workQueueRestartAttemptsMax) {
          this.#fail(err);
          return;
        }
        // Try again after a back-off: arming for "now + back-off" retries through the timer.
        this.#arm(Date.now() + backoffMs(this.#failures, workQueueBackoffMsMax));
      } finally {
        this.#promoting = undefined;
      }
    })();
  }

  /**
   * Moves every due delayed item to ready (one guarded txn each), then arms the timer for the
   * earliest remaining one. Returns the revision of its last read.
   */
  async #promoteDue(signal: AbortSignal): Promise<number> {
    const { kv, keys } = this.#d;
    const span = WorkQueueKeys.span(keys.delayedPrefix);
    // Terminates: every round promotes (or sees promoted by someone else) the keys it read.
    while (true) {
      const now = Date.now();
      const r = await kv.range(span.key, { end: keys.delayedEnd(now), limit: workQueuePageKeysMax, signal });
      for (const k of r.kvs) {
        signal.throwIfAborted();
        const id = idOf(k.key);
        const rec = decodeRecord(k.key, k.value);
        await kv.txn(
          {
            compare: [{ key: k.key, target: 'mod', result: '=', value: k.modRevision }],
            success: [
              { type: 'delete', key: k.key },
              { type: 'put', key: keys.ready(rec.p, id), value: encodeRecord({ ...rec, t: Date.now() }) },
            ],
            failure: [],
          },
          { signal },
        );
      }
      if (r.more) continue;
      const next = await kv.range(span.key, { end: span.end, limit: 1, keysOnly: true, signal });
      const first = next.kvs[0];
      const due = first ? keys.dueOf(first.key) : undefined;
      if (due !== undefined) this.#arm(due);
      return next.revision;
    }
  }
}
