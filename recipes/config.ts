/**
 * ConfigWatcher: a typed, validated, live view of a configuration stored as one key per field
 * under a prefix, and `setConfig`, which writes a whole configuration in one txn.
 *
 * Layout: `<prefix><field>` holds the field's value, JSON by default (a custom codec may be used).
 * The config object maps each key *relative to the prefix* to its decoded value; it is validated
 * with any Standard Schema v1 (zod, valibot, arktype…), whose output is the typed `current`.
 *
 * Consistency: the watcher only ever evaluates the prefix as it was at one store revision — the
 * initial read is one range (paginated at one pinned revision), and the watch applies whole
 * revisions (etcd never splits a revision across watch responses unless asked to fragment), so a
 * multi-key txn is seen as one change, never half. Updates that fail validation keep the last
 * valid config and are reported as a `Result` Err with the schema's issues. When the watch's
 * history is compacted, the consumer falls behind the watch buffer, or the watch fails with a
 * retryable error, the watcher re-reads the prefix and resumes after the read (a `resync`).
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import { Err, Ok, type Result } from 'ts-results-es';
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { bytesEqual, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { CallOptions, KeyValue } from '../src/types.js';
import {
  type ConfigConflict,
  type ConfigInvalid,
  type ConfigWritten,
  type SetConfigOptions,
  setConfig,
} from './config-write.js';
import { CacheFollower } from './internal/cache-follower.js';
import { ChangeFeed } from './internal/change-feed.js';
import {
  type ConfigDecoder,
  checkPrefix,
  configKeysMax,
  jsonDecode,
  tooManyKeys,
} from './internal/config-common.js';
import { prefixReadPageKeysMax } from './internal/prefix-read.js';
import type { ResyncReason } from './internal/resync.js';
import {
  PrefixCache,
  type PrefixCacheChange,
  prefixCacheBackoffMsMax,
  prefixCacheResyncAttemptsMax,
} from './prefix-cache.js';

export {
  type ConfigConflict,
  type ConfigEncoder,
  type ConfigInvalid,
  type ConfigWritten,
  type SetConfigOptions,
  setConfig,
  setConfigAttemptsMax,
} from './config-write.js';

import { checkInt } from './internal/check.js';

export { type ConfigDecoder, configKeysMax } from './internal/config-common.js';

/** Keys read per page of a snapshot (all pages pinned at the first page's revision). */
export const configPageKeysMax = prefixReadPageKeysMax;
/** Changes buffered per iterator for a slow consumer; past it they collapse into one `resync`. */
export const configChangesBufferedMax = 64;
/** Default quiet time (ms) after the last write of a burst before the burst is applied. */
export const configDebounceMsDefault = 50;
/** A burst is applied at the latest this many `debounceMs` after its first write (no starvation). */
export const configDebounceSpanFactorMax = 10;
/**
 * Consecutive failed attempts to re-read and re-watch (after `unavailable` etc.) before the
 * watcher fails: the bound of the `PrefixCache` under it.
 */
export const configResyncAttemptsMax = prefixCacheResyncAttemptsMax;
/** Longest back-off (ms) between two resync attempts (the `PrefixCache`'s). */
export const configResyncBackoffMsMax = prefixCacheBackoffMsMax;
/** Why a candidate config was not accepted: the schema's issues (decode failures are issues too). */
export interface ConfigRejection {
  /** The store revision of the rejected candidate. */
  readonly revision: number;
  readonly issues: readonly StandardSchemaV1.Issue[];
}

/** Why a resync happened: history compacted, consumer fell behind, or the watch broke. */
export type { ResyncReason };

/**
 * One item of the change stream. Every item carries `result`: `Ok(config)` for an accepted
 * update or resync, `Err(rejection)` for a candidate that failed validation (then `config` is the
 * kept, last valid config). `changedKeys`: keys (relative to the prefix) whose stored bytes
 * differ from the previous candidate.
 */
export type ConfigChange<T> =
  | {
      readonly type: 'update';
      readonly revision: number;
      readonly config: T;
      readonly previous: T;
      readonly changedKeys: readonly string[];
      readonly result: Result<T, ConfigRejection>;
    }
  | {
      readonly type: 'rejected';
      readonly revision: number;
      /** The last valid config, which stays current. */
      readonly config: T;
      readonly changedKeys: readonly string[];
      /** Set when the rejected candidate came from a re-read (its `ResyncReason`). */
      readonly resync?: ResyncReason;
      readonly result: Result<T, ConfigRejection>;
    }
  | {
      readonly type: 'resync';
      readonly reason: ResyncReason;
      readonly revision: number;
      readonly config: T;
      readonly changedKeys: readonly string[];
      readonly result: Result<T, ConfigRejection>;
    };

export interface WatchConfigOptions<T> extends CallOptions {
  readonly schema: StandardSchemaV1<unknown, T>;
  /** Default: UTF-8 JSON. */
  readonly decode?: ConfigDecoder;
  /** Quiet time before a burst of writes is applied (default `limits.config.debounceMsDefault`; 0: none). */
  readonly debounceMs?: number;
  /** Per-iterator buffer (default `limits.config.changesBufferedMax`). */
  readonly changesBufferedMax?: number;
}

function issuesText(issues: readonly StandardSchemaV1.Issue[]): string {
  return issues
    .slice(0, 5)
    .map((i) => {
      const path = (i.path ?? []).map((s) => String(typeof s === 'object' ? s.key : s)).join('.');
      return path ? `${path}: ${i.message}` : i.message;
    })
    .join('; ');
}

/** One stored field: its bytes and their decoding (or the decode failure's message). */
interface Field {
  readonly value: Uint8Array;
  readonly decoded: { ok: true; value: unknown } | { ok: false; message: string };
}

type Pending = { kind: 'update' } | { kind: 'resync'; reason: ResyncReason };

/**
 * A live, validated view of the config under a prefix. Use `watchConfig()`, or construct and
 * `start()` (which returns a `Result` instead of rejecting when the stored config is invalid).
 * Iterate it for changes; `close()` (or `await using`) stops the watch.
 */
export class ConfigWatcher<T> implements AsyncDisposable, AsyncIterable<ConfigChange<T>> {
  readonly kv: KV;
  readonly prefix: string;
  readonly #schema: StandardSchemaV1<unknown, T>;
  readonly #decode: ConfigDecoder;
  readonly #debounceMs: number;
  /** Start once, stop on close or the caller's abort, follow the cache, fail with it. */
  readonly #follower: CacheFollower;
  readonly #prefixBytes: Uint8Array;
  readonly #feed: ChangeFeed<ConfigChange<T>>;

  /** The store as last applied: relative key → field, consistent at `#rawRevision`. */
  #raw = new Map<string, Field>();
  #rawRevision = 0;
  /** Bytes of the last evaluated candidate, to tell which keys changed. */
  #evaluated = new Map<string, Uint8Array>();
  #valid: { config: T; revision: number; keys: string[] } | undefined;
  /**
   * The newest state of the prefix evaluated, valid or rejected: what a guarded write compares
   * against (`revision`, `keys`). After a rejected candidate it is ahead of `#valid`.
   */
  #seen: { revision: number; keys: string[] } = { revision: 0, keys: [] };
  /** The last rejection, while it is newer than the valid config (an overflow catch-up repeats it). */
  #rejected: ConfigChange<T> | undefined;
  #pending: Pending | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #burstStartMs: number | undefined;
  #evaluating: Promise<void> | undefined;

  constructor(kv: KV, prefix: string, opts: WatchConfigOptions<T>) {
    checkPrefix('ConfigWatcher', prefix);
    if (typeof opts?.schema?.['~standard']?.validate !== 'function')
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'ConfigWatcher: schema must be a Standard Schema v1 (zod, valibot, arktype…)',
      );
    const debounceMs = opts.debounceMs ?? configDebounceMsDefault;
    if (!Number.isFinite(debounceMs) || debounceMs < 0)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'ConfigWatcher: debounceMs must be a non-negative number',
      );
    const bufferMax = checkInt(
      'ConfigWatcher: changesBufferedMax',
      opts.changesBufferedMax ?? configChangesBufferedMax,
      1,
    );
    this.kv = kv;
    this.prefix = prefix;
    this.#prefixBytes = toBytes(prefix);
    this.#schema = opts.schema;
    this.#decode = opts.decode ?? jsonDecode;
    this.#debounceMs = debounceMs;
    this.#feed = new ChangeFeed(bufferMax, () => this.#catchUp());
    this.#follower = new CacheFollower('ConfigWatcher', `config watcher ${prefix} closed`, opts.signal, {
      stopped: (error) => {
        clearTimeout(this.#timer);
        this.#feed.end(error);
      },
      drained: () => this.#evaluating,
      mapError: (err) => this.#boundError(err),
    });
  }

  /** The last valid config. Throws before a successful `start()`. */
  get current(): T {
    if (!this.#valid)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'ConfigWatcher: no valid config yet (start() has not succeeded)',
      );
    return this.#valid.config;
  }

  /**
   * The store revision of the newest state of the prefix this watcher has evaluated, valid or
   * rejected: pass it to `setConfig({ ifRevision })` (or use `set()`), so a guarded write succeeds
   * when nobody wrote since — including after a rejected (invalid) write, which such a write is
   * meant to replace. Equal to `currentRevision` unless the newest state was rejected.
   */
  get revision(): number {
    return this.#seen.revision;
  }

  /** The keys (relative to the prefix) present at `revision` (`setConfig`'s `ifKeys`). */
  get keys(): readonly string[] {
    return this.#seen.keys;
  }

  /** The store revision `current` (the last valid config) was read at. */
  get currentRevision(): number {
    return this.#valid?.revision ?? 0;
  }

  /**
   * Writes `config` as the whole prefix, guarded by what this watcher last saw in the store
   * (`revision` and `keys`), after checking it with the watcher's schema (and decoder): `Err` with
   * reason `invalid` (nothing written) if the watchers would reject it, `changed`/`compacted` if
   * the prefix changed since the watcher last saw it (wait for the change, then decide again).
   */
  set(
    config: Readonly<Record<string, unknown>>,
    opts: Omit<SetConfigOptions, 'ifRevision' | 'ifKeys' | 'schema' | 'decode'> = {},
  ): Promise<Result<ConfigWritten, ConfigConflict | ConfigInvalid>> {
    return setConfig(this.kv, this.prefix, config, {
      ...opts,
      ifRevision: this.revision,
      ifKeys: this.keys,
      schema: this.#schema,
      decode: this.#decode,
    });
  }

  /** The error that stopped the watcher, if it failed (iterators throw it too). */
  get error(): unknown {
    return this.#follower.error;
  }

  /**
   * Reads the prefix at one revision and validates it. `Ok(this)`: `current` is set and the watch
   * runs. `Err(rejection)`: the stored config is invalid (or undecodable); the watcher is closed.
   * Rejects with the signal's reason, or a KV error.
   */
  start(): Promise<Result<this, ConfigRejection>> {
    return this.#follower.start(async (signal) => {
      // The live copy of the prefix (watch, resyncs, bounds); the config is evaluated from it.
      const cache = this.#follower.adopt(
        new PrefixCache(this.kv, this.#prefixBytes, { keysMax: configKeysMax, signal }),
      );
      // Subscribed before the read: its first change is the content read (a reset), and every
      // change after it reaches the watch loop, however soon the watch delivers.
      const changes = cache.changes({ withContent: true });
      await cache.start().catch((err: unknown) => {
        throw this.#boundError(err);
      });
      const first = await changes.next();
      if (first.done)
        throw cache.error ?? new ConclaveError(ErrorCode.Closed, `config watcher ${this.prefix} closed`);
      this.#apply(first.value);
      const revision = this.#rawRevision;
      const cand = this.#candidate();
      const checked = await this.#validate(cand.object, cand.decodeIssues);
      signal.throwIfAborted();
      if (!checked.ok) {
        await this.close();
        return Err({ revision, issues: checked.issues });
      }
      this.#evaluated = cand.bytes;
      this.#valid = { config: checked.value, revision, keys: [...cand.bytes.keys()] };
      this.#seen = { revision, keys: this.#valid.keys };
      this.#follower.follow(changes, (c) => this.#follow(c));
      return Ok(this);
    });
  }

  /** Stops the watch and timers; iterators finish what they buffered, then end. Idempotent. */
  close(): Promise<void> {
    return this.#follower.close();
  }

  /** `close()`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Changes applied after this call, in order. A consumer more than `changesBufferedMax` changes
   * behind gets one `resync` (reason `overflow`) with the latest config instead of the backlog.
   * Ends after `close()`; throws the watcher's error if it failed. Aborting `signal` ends this
   * iterator only, normally (a stop you asked for is not an error).
   */
  changes(opts: CallOptions = {}): AsyncGenerator<ConfigChange<T>, void, undefined> {
    return this.#feed.subscribe(undefined, { signal: opts.signal });
  }

  /** `changes()`: every change after this call, until `close()`. */
  [Symbol.asyncIterator](): AsyncGenerator<ConfigChange<T>, void, undefined> {
    return this.changes();
  }

  // -------------------------------------------------------------------------------------------
  // Store state

  #field(kv: KeyValue): [string, Field] {
    const key = toText(kv.key.subarray(this.#prefixBytes.length));
    let decoded: Field['decoded'];
    try {
      decoded = { ok: true, value: this.#decode(kv.value, key) };
    } catch (err) {
      decoded = { ok: false, message: `cannot decode: ${err instanceof Error ? err.message : String(err)}` };
    }
    return [key, { value: kv.value, decoded }];
  }

  #load(kvs: readonly KeyValue[], revision: number): void {
    this.#raw = new Map(kvs.map((kv) => this.#field(kv)));
    this.#rawRevision = revision;
  }

  /**
   * Applies one change of the cache to the raw state. A watch's change moves the raw revision to
   * its newest event's (the revision of the write, which a guarded `setConfig` compares with); a
   * re-read's to the read's revision.
   */
  #apply(c: PrefixCacheChange): void {
    if (c.reset) {
      this.#load(
        c.events.flatMap((e) => (e.type === 'put' ? [e.kv] : [])),
        c.revision,
      );
      return;
    }
    for (const e of c.events) {
      if (e.type === 'put') {
        const [key, field] = this.#field(e.kv);
        this.#raw.set(key, field);
        this.#rawRevision = Math.max(this.#rawRevision, e.kv.modRevision);
      } else {
        this.#raw.delete(toText(e.key.subarray(this.#prefixBytes.length)));
      }
    }
    if (c.resync) this.#rawRevision = Math.max(this.#rawRevision, c.revision);
  }

  /** The object built from the raw state, and each key's bytes. Decode failures become issues. */
  #candidate(): {
    object: Record<string, unknown>;
    bytes: Map<string, Uint8Array>;
    decodeIssues: StandardSchemaV1.Issue[];
  } {
    const entries: [string, unknown][] = [];
    const bytes = new Map<string, Uint8Array>();
    const decodeIssues: StandardSchemaV1.Issue[] = [];
    for (const [key, f] of this.#raw) {
      bytes.set(key, f.value);
      if (f.decoded.ok) entries.push([key, f.decoded.value]);
      else decodeIssues.push({ message: f.decoded.message, path: [key] });
    }
    // Object.fromEntries defines own properties: a key named "__proto__" cannot change the prototype.
    return { object: Object.fromEntries(entries), bytes, decodeIssues };
  }

  async #validate(
    object: Record<string, unknown>,
    decodeIssues: StandardSchemaV1.Issue[] = [],
  ): Promise<{ ok: true; value: T } | { ok: false; issues: readonly StandardSchemaV1.Issue[] }> {
    if (decodeIssues.length > 0) return { ok: false, issues: decodeIssues };
    try {
      const r = await this.#schema['~standard'].validate(object);
      if (r.issues) return { ok: false, issues: r.issues };
      return { ok: true, value: r.value };
    } catch (err) {
      const message = `schema validation threw: ${err instanceof Error ? err.message : String(err)}`;
      return { ok: false, issues: [{ message }] };
    }
  }

  // -------------------------------------------------------------------------------------------
  // Watch loop

  /**
   * Follows the cache: each change is applied to the raw state, then evaluated (after the
   * debounce; a re-read at once, as a resync). The cache does the watching, the resyncs after
   * compaction, overflow or a broken watch, and their bounds; when it fails, so does the watcher.
   */
  #follow(c: PrefixCacheChange): void {
    this.#apply(c);
    const reason = c.resync;
    if (reason === undefined) {
      this.#scheduleUpdate();
      return;
    }
    clearTimeout(this.#timer);
    this.#burstStartMs = undefined;
    this.#request({ kind: 'resync', reason });
  }

  /** The cache's `keysMax` error as the watcher's own (`request-too-large`, naming `limits.config.keysMax`). */
  #boundError(err: unknown): unknown {
    if (ConclaveError.is(err, ErrorCode.TooManyRequests) && err.details?.limit === 'keysMax')
      return tooManyKeys(this.prefix, Number(err.details.have));
    return err;
  }

  // -------------------------------------------------------------------------------------------
  // Debounce and evaluation

  /** Trailing debounce: applied `debounceMs` after the last write, at most `span` after the first. */
  #scheduleUpdate(): void {
    if (this.#debounceMs === 0) {
      this.#request({ kind: 'update' });
      return;
    }
    const now = performance.now();
    this.#burstStartMs ??= now;
    const latest = this.#burstStartMs + this.#debounceMs * configDebounceSpanFactorMax;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(
      () => {
        this.#burstStartMs = undefined;
        this.#request({ kind: 'update' });
      },
      Math.max(0, Math.min(this.#debounceMs, latest - now)),
    );
  }

  /** Queues an evaluation (a resync wins over an update) and runs evaluations one at a time. */
  #request(p: Pending): void {
    if (this.#pending?.kind !== 'resync') this.#pending = p;
    if (this.#evaluating) return;
    this.#evaluating = (async () => {
      try {
        // Bounded: each turn consumes `#pending`; new requests only come from store events.
        while (this.#pending && !this.#follower.stopSignal.aborted) {
          const next = this.#pending;
          this.#pending = undefined;
          await this.#evaluate(next);
        }
      } finally {
        this.#evaluating = undefined;
      }
    })();
    this.#evaluating.catch((err) => this.#follower.fail(err));
  }

  async #evaluate(p: Pending): Promise<void> {
    const revision = this.#rawRevision;
    const cand = this.#candidate();
    const changedKeys = changed(this.#evaluated, cand.bytes);
    // Seen even when no byte changed (a rewrite of the same value still moves mod revisions).
    this.#seen = { revision, keys: [...cand.bytes.keys()] };
    if (p.kind === 'update' && changedKeys.length === 0) return;
    this.#evaluated = cand.bytes;
    const checked = await this.#validate(cand.object, cand.decodeIssues);
    if (this.#follower.stopSignal.aborted) return;
    const prev = this.#valid!;
    if (!checked.ok) {
      const rejection: ConfigRejection = { revision, issues: checked.issues };
      this.#emit({
        type: 'rejected',
        revision,
        config: prev.config,
        changedKeys,
        ...(p.kind === 'resync' ? { resync: p.reason } : {}),
        result: Err(rejection),
      });
      return;
    }
    const config = checked.value;
    this.#valid = { config, revision, keys: [...cand.bytes.keys()] };
    this.#emit(
      p.kind === 'resync'
        ? { type: 'resync', reason: p.reason, revision, config, changedKeys, result: Ok(config) }
        : { type: 'update', revision, config, previous: prev.config, changedKeys, result: Ok(config) },
    );
  }

  #emit(change: ConfigChange<T>): void {
    this.#rejected = change.type === 'rejected' ? change : undefined;
    this.#feed.publish(change, undefined);
  }

  /**
   * What an iterator that fell behind reads instead of its backlog: the latest valid config as a
   * `resync` (reason `overflow`), then the newest rejection if one came after it.
   */
  #catchUp(): { change: ConfigChange<T>; after: undefined }[] {
    const v = this.#valid!;
    const latest: ConfigChange<T> = {
      type: 'resync',
      reason: 'overflow',
      revision: v.revision,
      config: v.config,
      changedKeys: [],
      result: Ok(v.config),
    };
    return [latest, ...(this.#rejected ? [this.#rejected] : [])].map((change) => ({
      change,
      after: undefined,
    }));
  }
}

function changed(before: Map<string, Uint8Array>, after: Map<string, Uint8Array>): string[] {
  const out: string[] = [];
  for (const [k, v] of after) {
    const b = before.get(k);
    if (!b || !bytesEqual(b, v)) out.push(k);
  }
  for (const k of before.keys()) if (!after.has(k)) out.push(k);
  return out.sort();
}

/**
 * Starts a `ConfigWatcher` on `prefix`: resolves once the stored config has been read at one
 * revision and validated. Rejects with `invalid-argument` (details: `issues`, `revision`) when the
 * stored config fails validation — use `new ConfigWatcher(…).start()` to get that as a `Result`.
 * Aborting `signal` cancels the start and later closes the watcher.
 */
export async function watchConfig<T>(
  kv: KV,
  prefix: string,
  opts: WatchConfigOptions<T>,
): Promise<ConfigWatcher<T>> {
  const w = new ConfigWatcher<T>(kv, prefix, opts);
  const r = await w.start();
  if (r.isErr()) {
    const { revision, issues } = r.error;
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `config ${prefix} at revision ${revision} failed validation: ${issuesText(issues)}`,
      { details: { prefix, revision, issues } },
    );
  }
  return w;
}
