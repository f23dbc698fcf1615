/**
 * PrefixCache: a live, local copy of every key under a prefix (Apache Curator's CuratorCache,
 * etcd's Go `mirror.Syncer`), with `get`/`list`/`size` answered locally, a bounded async iterator
 * of changes, `ready(revision)` for read-your-writes, and resyncs after compaction, a broken watch
 * or overflow.
 *
 * How it stays exact: `start()` reads the prefix at one revision R, then watches it from R + 1
 * (etcd's watch history makes that gap-free: every change after R is delivered, in revision
 * order). When that history is compacted, the watch breaks, or the watch falls too far behind, it
 * re-reads the prefix at a new revision and emits the difference as one `resync` change, then
 * watches again from there (as Go's Syncer does after a compaction). Memory is bounded: at most
 * `keysMax` keys and `bytesMax` bytes of keys plus values; a prefix that outgrows either stops the
 * cache with a `too-many-requests` error naming the bound (a partial copy would answer wrongly).
 */
import { abortReason, ConclaveError, ErrorCode, invalidArgument } from '../src/errors.js';
import { prefixEnd, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Bytes, CallOptions, KeyValue, WatchBatch } from '../src/types.js';
import { ChangeFeed } from './internal/change-feed.js';
import { entryBytes, readPrefix } from './internal/prefix-read.js';
import type { ResyncReason } from './internal/resync.js';
import { backoffMs, pause } from './internal/timing.js';

/** Default most keys a cache holds (`keysMax`). */
export const prefixCacheKeysMax = 100_000;
/** Default most bytes (keys + values) a cache holds (`bytesMax`): 64 MiB. */
export const prefixCacheBytesMax = 64 * 1024 * 1024;
/** Default changes buffered per iterator (`changesBufferedMax`); past it the backlog becomes one reset. */
export const prefixCacheChangesBufferedMax = 1024;
/** Consecutive failed attempts to re-read and re-watch before the cache fails. */
export const prefixCacheResyncAttemptsMax = 20;
/** Longest back-off (ms) between two resync attempts. */
export const prefixCacheBackoffMsMax = 2000;
/** A watch that lived this long (ms) before failing counts as healthy: the failure count starts over. */
const watchHealthyMs = 10_000;

/** Why a cache re-read its prefix: history compacted, the watch broke, or it fell behind. */
export type PrefixCacheResync = ResyncReason;

/** One key's change. `prevKv`: the cached entry before it (absent when the key was new). */
export type PrefixCacheEvent =
  | { readonly type: 'put'; readonly key: Uint8Array; readonly kv: KeyValue; readonly prevKv?: KeyValue }
  | { readonly type: 'delete'; readonly key: Uint8Array; readonly prevKv: KeyValue };

/**
 * Changes that took the cache to `revision`. Applying `events` in order to a view that matched the
 * cache before (or, with `reset`, to an empty view) makes it match the cache at `revision`.
 * `resync` is set when the change comes from a re-read of the prefix (the events are then the
 * difference, not the store's history); `reset` when the events are the whole content: this
 * iterator fell more than `changesBufferedMax` changes behind and its backlog was replaced by it
 * (`resync: 'overflow'`), or the iterator asked for the content first (`withContent`, no
 * `resync`).
 */
export interface PrefixCacheChange {
  readonly revision: number;
  readonly events: readonly PrefixCacheEvent[];
  readonly resync?: PrefixCacheResync;
  readonly reset?: boolean;
}

export interface PrefixCacheOptions extends CallOptions {
  /** Most keys held (default `limits.prefixCache.keysMax`). */
  readonly keysMax?: number;
  /** Most bytes of keys plus values held (default `limits.prefixCache.bytesMax`). */
  readonly bytesMax?: number;
  /** Changes buffered per iterator (default `limits.prefixCache.changesBufferedMax`). */
  readonly changesBufferedMax?: number;
}

/** Options of `PrefixCache.changes()`. */
export interface PrefixCacheChangesOptions extends CallOptions {
  /**
   * Start with the whole content as one reset change (no `resync`): the content now, or, for an
   * iterator taken before `start()`, the first read. Then every change after it, as usual.
   */
  readonly withContent?: boolean;
}

/** The feed tag of iterators taken before `start()` that want its first read. */
const withContentTag = 'with-content';

/** A byte string as a Map key: one char per byte, so distinct keys never collide and order is byte order. */
const mapKey = (b: Uint8Array): string => {
  let s = '';
  for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
  return s;
};
/**
 * A live, local copy of every key under a prefix (see the module comment): start one with
 * `PrefixCache.start(kv, prefix)`, read it with `get`/`list`/`size`, follow it with `changes()`,
 * and close it (or `await using`) to stop its watch.
 */
export class PrefixCache implements AsyncDisposable, AsyncIterable<PrefixCacheChange> {
  readonly kv: KV;
  /** The cached prefix. */
  readonly prefix: Uint8Array;
  readonly keysMax: number;
  readonly bytesMax: number;
  readonly #feed: ChangeFeed<PrefixCacheChange>;
  readonly #signal: AbortSignal | undefined;
  readonly #stop = new AbortController();
  #entries = new Map<string, KeyValue>();
  #sorted: KeyValue[] | undefined;
  #bytes = 0;
  #revision = 0;
  #started = false;
  #running: Promise<void> | undefined;
  #closed: Promise<void> | undefined;
  #error: unknown;
  /** Woken after every applied change (ready() waits on them). */
  readonly #appliedWaiters = new Set<() => void>();
  #onAbort = () => void this.close();

  constructor(kv: KV, prefix: Bytes, opts: PrefixCacheOptions = {}) {
    const int = (name: string, v: number) => {
      if (!Number.isSafeInteger(v) || v < 1)
        invalidArgument(name, `PrefixCache: must be an integer >= 1, got ${v}`);
      return v;
    };
    this.kv = kv;
    this.prefix = toBytes(prefix).slice();
    if (this.prefix.length === 0)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'PrefixCache: prefix must not be empty (cache a prefix, or use namespace() to give an application its own key space)',
      );
    this.keysMax = int('keysMax', opts.keysMax ?? prefixCacheKeysMax);
    this.bytesMax = int('bytesMax', opts.bytesMax ?? prefixCacheBytesMax);
    // A consumer that fell behind gets everything it missed as the whole current content.
    this.#feed = new ChangeFeed(
      int('changesBufferedMax', opts.changesBufferedMax ?? prefixCacheChangesBufferedMax),
      () => {
        const events = this.#resetEvents();
        return [
          { change: { revision: this.#revision, events, resync: 'overflow', reset: true }, after: undefined },
        ];
      },
    );
    this.#signal = opts.signal;
  }

  /** Starts a cache: resolves once the prefix was read and the watch set up. */
  static start(kv: KV, prefix: Bytes, opts: PrefixCacheOptions = {}): Promise<PrefixCache> {
    return new PrefixCache(kv, prefix, opts).start();
  }

  /** The store revision the cache is current at: it equals a range of the prefix at this revision. */
  get revision(): number {
    return this.#revision;
  }

  /** Number of cached keys. */
  get size(): number {
    return this.#entries.size;
  }

  /** Bytes of cached keys plus values (what `bytesMax` bounds). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The error that stopped the cache, if it failed (iterators and `ready` reject with it too). */
  get error(): unknown {
    return this.#error;
  }

  /** The cached entry of `key` (the full key, prefix included), or undefined. */
  get(key: Bytes): KeyValue | undefined {
    this.#check();
    return this.#entries.get(mapKey(toBytes(key)));
  }

  /** Every cached entry in key order; with `under`, only keys starting with it (a full key prefix). */
  list(opts: { under?: Bytes } = {}): KeyValue[] {
    this.#check();
    this.#sorted ??= [...this.#entries.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1]);
    if (opts.under === undefined) return [...this.#sorted];
    const u = mapKey(toBytes(opts.under));
    return this.#sorted.filter((kv) => mapKey(kv.key).startsWith(u));
  }

  /** Reads the prefix at one revision and starts the watch. Call once. */
  async start(): Promise<this> {
    if (this.#started || this.#closed)
      invalidArgument(
        'start',
        'PrefixCache: start() may be called once (PrefixCache.start() creates and starts one)',
      );
    this.#started = true;
    const signal = this.#signal ? AbortSignal.any([this.#signal, this.#stop.signal]) : this.#stop.signal;
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    try {
      signal.throwIfAborted();
      const snap = await this.#read(signal);
      signal.throwIfAborted();
      this.#replace(snap.entries, snap.bytes, snap.revision, undefined);
      this.#running = this.#run();
      return this;
    } catch (err) {
      this.#error ??= err;
      await this.close();
      throw this.#signal?.aborted ? abortReason(this.#signal) : err;
    }
  }

  /**
   * Resolves once the cache reflects the store at `revision` or later (read-your-writes: pass the
   * revision of your write). Without `revision`: the store's current revision, read now. When no
   * change under the prefix arrives to carry the cache past `revision` (the store moved on
   * elsewhere), one read proves that nothing under the prefix changed since the cache's revision.
   */
  async ready(revision?: number, opts: CallOptions = {}): Promise<void> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.#stop.signal]) : this.#stop.signal;
    let target = revision;
    let failures = 0;
    for (;;) {
      this.#check();
      if (signal.aborted) throw opts.signal?.aborted ? abortReason(opts.signal) : this.#closedError();
      if (target !== undefined && this.#revision >= target) return;
      // Registered before the read, so a change applied while it is in flight still wakes us.
      const applied = this.#nextApplied(signal);
      const at = this.#revision;
      let proof: { unchanged: boolean; revision: number };
      try {
        proof = await this.#unchangedSince(at, signal);
      } catch (err) {
        applied.cancel();
        if (signal.aborted) continue;
        // Bounded like the watch's resyncs; a retryable failure is tried again after a pause.
        if (!ConclaveError.is(err) || !err.retryable || ++failures > prefixCacheResyncAttemptsMax) throw err;
        await pause(backoffMs(failures - 1, prefixCacheBackoffMsMax), signal);
        continue;
      }
      target ??= proof.revision;
      if (target > proof.revision) {
        applied.cancel();
        throw new ConclaveError(
          ErrorCode.FutureRevision,
          `prefix cache ready(${target}): the store is only at revision ${proof.revision}; pass a revision the store returned`,
        );
      }
      // Nothing under the prefix changed in (at, proof.revision]: the cache is current there too.
      if (proof.unchanged && this.#revision === at) this.#revision = Math.max(this.#revision, proof.revision);
      if (this.#revision >= target) {
        applied.cancel();
        return;
      }
      // Changes are on their way: wait for the next one, then check again.
      await applied.promise;
    }
  }

  /**
   * Changes applied after this call, in order, bounded by `changesBufferedMax` (past it: one reset
   * change with the whole content). Ends after `close()`; throws the cache's error if it failed.
   * Aborting `signal` ends this iterator only, normally (a requested stop is not an error).
   */
  changes(opts: PrefixCacheChangesOptions = {}): AsyncGenerator<PrefixCacheChange, void, undefined> {
    if (!opts.withContent) return this.#feed.subscribe(undefined, { signal: opts.signal });
    // Before start(), the content is the first read, delivered when it is made.
    if (!this.#running) return this.#feed.subscribe(undefined, { signal: opts.signal, tag: withContentTag });
    const first = { revision: this.#revision, events: this.#resetEvents(), reset: true } as const;
    return this.#feed.subscribe(undefined, {
      signal: opts.signal,
      first: [{ change: first, after: undefined }],
    });
  }

  /** `changes()`: every change applied after this call. */
  [Symbol.asyncIterator](): AsyncGenerator<PrefixCacheChange, void, undefined> {
    return this.changes();
  }

  /** Stops the watch; iterators deliver what they buffered, then end. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.#stop.abort(this.#closedError());
      this.#feed.end(this.#error);
      for (const w of this.#appliedWaiters) w();
      await this.#running?.catch(() => undefined);
    })();
    return this.#closed;
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------------------------

  #closedError(): ConclaveError {
    return new ConclaveError(ErrorCode.Closed, `prefix cache ${toText(this.prefix)} closed`);
  }

  #check(): void {
    if (this.#error !== undefined) throw this.#error;
  }

  #nextApplied(signal: AbortSignal): { promise: Promise<void>; cancel(): void } {
    let done!: () => void;
    const promise = new Promise<void>((resolve) => {
      done = () => {
        this.#appliedWaiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#appliedWaiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
    return { promise, cancel: done };
  }

  #applied(): void {
    for (const w of [...this.#appliedWaiters]) w();
  }

  /**
   * Whether no key under the prefix changed after `at`: the count equals the cache's size at `at`
   * and no key has a mod revision above `at` (a put shows as a newer key; a delete, unless a put
   * replaced it, as a smaller count). One range: etcd counts the whole range before pruning by
   * `minModRevision`, and applies `limit` after the pruning.
   */
  async #unchangedSince(at: number, signal: AbortSignal): Promise<{ unchanged: boolean; revision: number }> {
    const size = this.#entries.size;
    const r = await this.kv.range(this.prefix, {
      end: prefixEnd(this.prefix),
      keysOnly: true,
      minModRevision: at + 1,
      limit: 1,
      signal,
    });
    return { unchanged: r.count === size && r.kvs.length === 0, revision: r.revision };
  }

  /** The whole content as puts, in key order (a reset's events). */
  #resetEvents(): PrefixCacheEvent[] {
    return this.#sortedEntries().map((kv) => ({ type: 'put' as const, key: kv.key, kv }));
  }

  #sortedEntries(): KeyValue[] {
    this.#sorted ??= [...this.#entries.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1]);
    return this.#sorted;
  }

  #tooBig(what: 'keysMax' | 'bytesMax', have: number): ConclaveError {
    const bound = what === 'keysMax' ? this.keysMax : this.bytesMax;
    return new ConclaveError(
      ErrorCode.TooManyRequests,
      `prefix cache ${toText(this.prefix)}: ${have} ${what === 'keysMax' ? 'keys' : 'bytes'} exceed ${what} (${bound}); raise ${what} or cache a narrower prefix`,
      { retryable: false, details: { limit: what, bound, have } },
    );
  }

  /** The prefix at one revision, within the bounds. */
  async #read(
    signal: AbortSignal,
  ): Promise<{ entries: Map<string, KeyValue>; bytes: number; revision: number }> {
    const snap = await readPrefix(this.kv, this.prefix, {
      keysMax: this.keysMax,
      bytesMax: this.bytesMax,
      tooBig: (limit, have) => this.#tooBig(limit, have),
      signal,
    });
    const entries = new Map<string, KeyValue>();
    for (const kv of snap.kvs) entries.set(mapKey(kv.key), kv);
    return { entries, bytes: snap.bytes, revision: snap.revision };
  }

  /** Replaces the content with a fresh read; emits the difference as a resync change (unless starting). */
  #replace(
    next: Map<string, KeyValue>,
    bytes: number,
    revision: number,
    resync: PrefixCacheResync | undefined,
  ): void {
    const before = this.#entries;
    this.#entries = next;
    this.#bytes = bytes;
    this.#sorted = undefined;
    this.#revision = Math.max(this.#revision, revision);
    if (resync === undefined) {
      // The first read, for iterators taken before start() with `withContent`.
      if (this.#feed.has(withContentTag))
        this.#feed.publish(
          { revision: this.#revision, events: this.#resetEvents(), reset: true },
          undefined,
          withContentTag,
        );
      return;
    }
    const events: PrefixCacheEvent[] = [];
    for (const [k, prev] of before)
      if (!next.has(k)) events.push({ type: 'delete', key: prev.key, prevKv: prev });
    for (const [k, kv] of next) {
      const prev = before.get(k);
      if (!prev) events.push({ type: 'put', key: kv.key, kv });
      else if (prev.modRevision !== kv.modRevision || prev.createRevision !== kv.createRevision)
        events.push({ type: 'put', key: kv.key, kv, prevKv: prev });
    }
    this.#emit({ revision: this.#revision, events, resync });
  }

  #emit(change: PrefixCacheChange): void {
    this.#feed.publish(change, undefined);
    this.#applied();
  }

  /** Applies one watch batch; throws the bound error if the content outgrew a bound. */
  #apply(batch: WatchBatch): void {
    const events: PrefixCacheEvent[] = [];
    let revision = this.#revision;
    for (const e of batch.events) {
      const k = mapKey(e.kv.key);
      const prev = this.#entries.get(k);
      revision = Math.max(revision, e.kv.modRevision);
      if (e.type === 'delete') {
        if (!prev) continue;
        this.#entries.delete(k);
        this.#bytes -= entryBytes(prev);
        events.push({ type: 'delete', key: e.kv.key, prevKv: prev });
      } else {
        this.#entries.set(k, e.kv);
        this.#bytes += entryBytes(e.kv) - (prev ? entryBytes(prev) : 0);
        events.push(
          prev
            ? { type: 'put', key: e.kv.key, kv: e.kv, prevKv: prev }
            : { type: 'put', key: e.kv.key, kv: e.kv },
        );
      }
    }
    this.#sorted = undefined;
    this.#revision = Math.max(revision, batch.revision);
    if (this.#entries.size > this.keysMax) throw this.#tooBig('keysMax', this.#entries.size);
    if (this.#bytes > this.bytesMax) throw this.#tooBig('bytesMax', this.#bytes);
    if (events.length > 0) this.#emit({ revision: this.#revision, events });
    else this.#applied();
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    let failures = 0;
    const end = prefixEnd(this.prefix);
    // Bounded: every iteration counts a failure unless its watch delivered or lived long enough.
    while (!signal.aborted) {
      const w = this.kv.watch(this.prefix, { end, startRevision: this.#revision + 1, signal });
      const openedMs = performance.now();
      let reason: PrefixCacheResync = 'reconnect';
      try {
        for await (const batch of w) {
          failures = 0;
          this.#apply(batch);
        }
        if (signal.aborted) return;
      } catch (err) {
        if (signal.aborted) return;
        if (ConclaveError.is(err, ErrorCode.Compacted)) reason = 'compacted';
        else if (ConclaveError.is(err, ErrorCode.WatchOverflow)) reason = 'overflow';
        else if (!ConclaveError.is(err) || !err.retryable) return this.#fail(err);
      } finally {
        await w.close().catch(() => undefined);
      }
      if (performance.now() - openedMs >= watchHealthyMs) failures = 0;
      if (++failures > prefixCacheResyncAttemptsMax)
        return this.#fail(
          new ConclaveError(
            ErrorCode.Unavailable,
            `prefix cache ${toText(this.prefix)}: could not re-establish its watch in ${prefixCacheResyncAttemptsMax} attempts`,
          ),
        );
      try {
        if (reason === 'reconnect' || failures > 1)
          await pause(backoffMs(failures - 1, prefixCacheBackoffMsMax), signal);
        signal.throwIfAborted();
        const snap = await this.#read(signal);
        signal.throwIfAborted();
        this.#replace(snap.entries, snap.bytes, snap.revision, reason);
      } catch (err) {
        if (signal.aborted) return;
        if (!ConclaveError.is(err) || !(err.retryable || err.code === ErrorCode.Compacted))
          return this.#fail(err);
      }
    }
  }

  #fail(err: unknown): void {
    this.#error = err;
    void this.close();
  }
}
