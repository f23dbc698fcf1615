import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue } from '../../src/types.js';
import { WorkQueueKeys } from './work-queue-keys.js';

/**
 * Resolves at the first put under `prefix` at or after `fromRevision` (a new ready item), or at
 * once when the revisions it needs are gone or not yet applied where it reads (the caller re-reads
 * anyway). Rejects with the reason of `signal`.
 *
 * The watch starts from "now" (etcd serves a watch started in the past from its unsynced group,
 * caught up only every 100 ms); puts between `fromRevision` and its registered revision are found
 * by one count of the ready keys modified since `fromRevision`, read at that revision.
 */
export async function waitReadyPut(
  kv: KV,
  prefix: string,
  fromRevision: number,
  signal: AbortSignal,
): Promise<void> {
  const span = WorkQueueKeys.span(prefix);
  const w = kv.watch(span.key, { end: span.end, filters: ['nodelete'], signal });
  try {
    const registered = await w.ready;
    if (registered >= fromRevision) {
      const r = await kv.range(span.key, {
        end: span.end,
        revision: registered,
        serializable: true,
        minModRevision: fromRevision,
        countOnly: true,
        signal,
      });
      if (r.count > 0) return;
    }
    for await (const b of w) if (b.events.some((e) => e.kv.modRevision >= fromRevision)) return;
    throw abortReason(signal);
  } catch (err) {
    if (signal.aborted) throw abortReason(signal);
    if (
      ConclaveError.is(err, ErrorCode.Compacted) ||
      ConclaveError.is(err, ErrorCode.FutureRevision) ||
      ConclaveError.is(err, ErrorCode.WatchOverflow)
    )
      return;
    throw err;
  } finally {
    await w.close();
  }
}

/** The claimers (workers) of one `process` call. */
export interface ClaimGroup {
  /** Ids whose claim txn a worker is sending now: its siblings skip them. At most `concurrency`. */
  readonly claiming: Set<string>;
  readonly waiter: ReadyWaiter;
}

/** Where a read of ready keys starts (`key` undefined: the prefix's start), and the feed's generation then. */
export interface ReadStart {
  readonly key: string | undefined;
  readonly gen: number;
}

/** How long a ready cursor is used before a full read re-establishes it (bounds any misordering). */
export const readyCursorMsMax = 1000;

export interface ReadyWait {
  readonly fromRevision: number;
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * One watch on `ready/` (puts only) shared by the workers of one `process` call, instead of one
 * watch per idle worker. A worker that found nothing to claim at revision R waits for a put at
 * R + 1 or later. Each put wakes one waiter, the longest-waiting one it concerns: that worker
 * re-reads and claims; waking all of them for one new item would send `concurrency` reads after
 * it, all but one in vain. No item is left behind by this: a worker sleeps only after a read in
 * which every ready item was being claimed by a sibling (which re-reads itself if its claim
 * fails) or none was ready, and every later put wakes a sleeper while there is one; workers that
 * are busy read again before their next claim. A waiter older than the watch's start revision is
 * woken at once (the watch cannot vouch for puts before it), and so is every waiter when the watch
 * breaks for a compaction or an overflow (they re-read); other watch errors reject the waiters.
 * A waiter whose revision the watch has already passed with a put (delivered between the
 * waiter's read and its call here, when it could wake nobody) is woken at once too.
 */
export class ReadyWaiter {
  readonly #kv: KV;
  readonly #prefix: string;
  readonly #stop: AbortSignal;
  /** Bounded by the group's `concurrency`: one entry per waiting worker. */
  readonly #waiters: ReadyWait[] = [];
  #watching = false;
  #startRevision = 0;
  /**
   * The ready cursor: no live ready key sorts before it (as far as the watch has told us). A
   * read from it skips the deleted keys at the front of the queue — claimed items leave their
   * keys behind as deletions until the store compacts, and a range visits them all (etcd counts
   * every key of a range even with a limit) — so without it every claim's read grows with the
   * number of items claimed since the last compaction.
   */
  #cursor: string | undefined;
  #cursorAt = 0;
  /** Bumped by every put the watch delivers: a read during which it changed does not move the cursor. */
  #gen = 0;
  /** The revision of the last put the current watch delivered. */
  #seenRevision = 0;

  constructor(kv: KV, prefix: string, stop: AbortSignal) {
    this.#kv = kv;
    this.#prefix = prefix;
    this.#stop = stop;
  }

  /** Where the next read of ready keys may start: the cursor, unless `full` or it is too old. */
  readFrom(full = false): ReadStart {
    if (this.#cursor !== undefined && performance.now() - this.#cursorAt > readyCursorMsMax)
      this.#cursor = undefined;
    return { key: full ? undefined : this.#cursor, gen: this.#gen };
  }

  /**
   * A read that started at `from` returned `kvs` (its first keys in order) at `revision`. Its
   * first key becomes the cursor when that is safe: the watch covers every revision after the
   * read (a full read starts it if needed), and no put was delivered while the read was out —
   * one delivered later, before the cursor, clears it. Keys before the first one were deleted
   * at `revision` (or, for a cursor read, before the cursor, which no delivered put undercut).
   */
  observe(from: ReadStart, revision: number, kvs: readonly KeyValue[]): void {
    if (!this.#watching) {
      if (from.key !== undefined || this.#stop.aborted) return;
      this.#watch(revision + 1);
    }
    if (from.gen !== this.#gen || revision + 1 < this.#startRevision) return;
    const first = kvs[0];
    if (!first) return;
    if (from.key === undefined) this.#cursorAt = performance.now();
    this.#cursor = toText(first.key);
  }

  wait(fromRevision: number, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    // The watch may have delivered a put after the caller's read before the caller got here
    // (when no waiter it concerned was registered yet: it woke nobody).
    if (this.#watching && (fromRevision < this.#startRevision || fromRevision <= this.#seenRevision))
      return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(abortReason(signal));
      };
      const w: ReadyWait = {
        fromRevision,
        resolve: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(w);
      if (!this.#watching) this.#watch(fromRevision);
    });
  }

  #watch(fromRevision: number): void {
    this.#watching = true;
    this.#startRevision = fromRevision;
    this.#seenRevision = 0;
    const span = WorkQueueKeys.span(this.#prefix);
    void (async () => {
      let failure: unknown;
      const w = this.#kv.watch(span.key, {
        end: span.end,
        startRevision: fromRevision,
        filters: ['nodelete'],
        signal: this.#stop,
      });
      try {
        for await (const b of w)
          for (const e of b.events) {
            this.#gen++;
            this.#seenRevision = Math.max(this.#seenRevision, e.kv.modRevision);
            if (this.#cursor !== undefined && toText(e.kv.key) < this.#cursor) this.#cursor = undefined;
            const i = this.#waiters.findIndex((x) => x.fromRevision <= e.kv.modRevision);
            if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve();
          }
      } catch (err) {
        failure = err;
      } finally {
        await w.close().catch(() => undefined);
      }
      this.#watching = false;
      this.#cursor = undefined;
      this.#gen++;
      const soft =
        failure === undefined ||
        ConclaveError.is(failure, ErrorCode.Compacted) ||
        ConclaveError.is(failure, ErrorCode.WatchOverflow);
      for (const x of this.#waiters.splice(0)) {
        if (soft) x.resolve();
        else x.reject(failure);
      }
    })();
  }
}
