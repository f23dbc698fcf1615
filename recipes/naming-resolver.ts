/**
 * Resolving endpoints: `ServiceResolver` keeps a live list of a service's instances on a
 * `PrefixCache` and picks one per call (layout and format: naming.ts).
 */
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { CallOptions, KeyValue } from '../src/types.js';
import { CacheFollower } from './internal/cache-follower.js';
import { ChangeFeed } from './internal/change-feed.js';
import { checkInt } from './internal/check.js';
import {
  checkName,
  decodeEndpoint,
  downErrorThresholdDefault,
  downErrorThresholdMax,
  downErrorWindowMsDefault,
  downMsDefault,
  type Endpoint,
  namingCacheKeysMax,
  namingChangesBufferedMax,
  namingInstancesMax,
} from './internal/naming-common.js';
import type { ResyncReason } from './internal/resync.js';
import { PrefixCache } from './prefix-cache.js';

// ---------------------------------------------------------------------------------------------
// Resolver

export interface ServiceInstance extends Endpoint {
  readonly id: string;
  readonly key: string;
  readonly metadata: unknown;
  readonly lease: bigint;
  readonly createRevision: number;
  readonly modRevision: number;
}

/** One change of the instance list; `instances` is the whole list after it (sorted by id). */
export interface ServiceChange {
  readonly revision: number;
  readonly added: readonly ServiceInstance[];
  readonly removed: readonly ServiceInstance[];
  readonly updated: readonly ServiceInstance[];
  /** Set when the change comes from a re-read: history compacted, a broken watch, or a backlog merged. */
  readonly resync?: ResyncReason;
  readonly instances: readonly ServiceInstance[];
}

/** How `ServiceResolver.pick()` chooses an instance. */
export const PickStrategy = { RoundRobin: 'round-robin', Random: 'random', Sticky: 'sticky' } as const;
/** One of the {@link PickStrategy} values. */
export type PickStrategy = (typeof PickStrategy)[keyof typeof PickStrategy];

/** Options of one `pick()`. */
export interface PickOptions {
  /** Default: the resolver's `strategy` (round-robin unless set). */
  readonly strategy?: PickStrategy;
  /** For `sticky`: the same key goes to the same instance while that instance stays up. */
  readonly key?: string;
}

export interface ResolverOptions extends CallOptions {
  /** How `pick()` chooses (default round-robin). */
  readonly strategy?: PickStrategy;
  /** Default `limits.naming.instancesMax`. */
  readonly instancesMax?: number;
  /** Default `limits.naming.changesBufferedMax`. */
  readonly changesBufferedMax?: number;
  /** Errors within `errorWindowMs` that mark an instance down (default `limits.naming.downErrorThresholdDefault`). */
  readonly errorThreshold?: number;
  readonly errorWindowMs?: number;
  /** How long an instance stays down (default `limits.naming.downMsDefault`). */
  readonly downMs?: number;
  /** Monotonic clock in ms (default `performance.now`); tests may inject one. */
  readonly now?: () => number;
}

type Instances = ReadonlyMap<string, ServiceInstance>;

function sortedList(m: Instances): ServiceInstance[] {
  return [...m.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function diffChange(
  before: Instances,
  after: Instances,
  revision: number,
  resync?: ResyncReason,
): ServiceChange {
  const added: ServiceInstance[] = [];
  const updated: ServiceInstance[] = [];
  const removed: ServiceInstance[] = [];
  for (const [id, now] of after) {
    const was = before.get(id);
    if (!was) added.push(now);
    else if (was.modRevision !== now.modRevision || was.createRevision !== now.createRevision)
      updated.push(now);
  }
  for (const [id, was] of before) if (!after.has(id)) removed.push(was);
  const byId = (a: ServiceInstance, b: ServiceInstance) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  return {
    revision,
    added: added.sort(byId),
    removed: removed.sort(byId),
    updated: updated.sort(byId),
    ...(resync ? { resync } : {}),
    instances: sortedList(after),
  };
}

/** FNV-1a (32-bit) of a string's UTF-16 code units, finished with murmur3's fmix32 for spread. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

interface Health {
  /** Times (ms) of the most recent errors, at most `errorThreshold` of them. */
  errors: number[];
  downUntil: number;
}

/**
 * A live list of a service's instances: read at one revision, then kept current by a watch from
 * the next revision. `pick()` chooses one; `reportError(id)` feeds the down-instance policy.
 * Iterate it (or `changes()`) for `{ added, removed, updated, resync }` changes.
 */
export class ServiceResolver implements AsyncDisposable, AsyncIterable<ServiceChange> {
  readonly kv: KV;
  readonly service: string;
  readonly #prefix: string;
  readonly #prefixBytes: Uint8Array;
  readonly #strategy: PickStrategy;
  readonly #max: number;
  readonly #feed: ChangeFeed<ServiceChange, Instances>;
  readonly #errorThreshold: number;
  readonly #errorWindowMs: number;
  readonly #downMs: number;
  readonly #now: () => number;
  /** Start once, stop on close or the caller's abort, follow the cache, fail with it. */
  readonly #follower: CacheFollower;

  #instances: Instances = new Map();
  #sorted: ServiceInstance[] = [];
  #revision = 0;
  #truncated = false;
  #skipped = new Set<string>();
  #health = new Map<string, Health>();
  #rr = 0;

  constructor(kv: KV, service: string, opts: ResolverOptions = {}) {
    checkName('ServiceResolver: service', service);
    const int = (name: string, v: number, min: number) => checkInt(`ServiceResolver: ${name}`, v, min);
    this.kv = kv;
    this.service = service;
    this.#prefix = `${service}/`;
    this.#prefixBytes = toBytes(this.#prefix);
    this.#strategy = opts.strategy ?? PickStrategy.RoundRobin;
    this.#max = int('instancesMax', opts.instancesMax ?? namingInstancesMax, 1);
    // A consumer that fell behind gets one change from what it last saw to now.
    this.#feed = new ChangeFeed(
      int('changesBufferedMax', opts.changesBufferedMax ?? namingChangesBufferedMax, 1),
      (seen) => [
        { change: diffChange(seen, this.#instances, this.#revision, 'overflow'), after: this.#instances },
      ],
    );
    this.#errorThreshold = int('errorThreshold', opts.errorThreshold ?? downErrorThresholdDefault, 1);
    if (this.#errorThreshold > downErrorThresholdMax)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `ServiceResolver: errorThreshold must be <= ${downErrorThresholdMax}`,
      );
    this.#errorWindowMs = int('errorWindowMs', opts.errorWindowMs ?? downErrorWindowMsDefault, 1);
    this.#downMs = int('downMs', opts.downMs ?? downMsDefault, 1);
    this.#now = opts.now ?? (() => performance.now());
    this.#follower = new CacheFollower('ServiceResolver', `service resolver ${service} closed`, opts.signal, {
      stopped: (error) => this.#feed.end(error),
    });
  }

  /** Every tracked instance, sorted by id (down ones included). */
  get instances(): readonly ServiceInstance[] {
    return this.#sorted;
  }

  /** The store revision the list is current at. */
  get revision(): number {
    return this.#revision;
  }

  /** Whether instances were ignored because `instancesMax` was reached. */
  get truncated(): boolean {
    return this.#truncated;
  }

  /** Keys under the service whose value is not a `naming.Update` (ignored, as Go's resolver does). */
  get skippedKeys(): readonly string[] {
    return [...this.#skipped];
  }

  /** The error that stopped the resolver, if it failed (iterators throw it too). */
  get error(): unknown {
    return this.#follower.error;
  }

  /** Reads the service's instances at one revision and starts the watch. Call once. */
  start(): Promise<this> {
    return this.#follower.start(async (signal) => {
      // The live copy of the service's keys (watch, resyncs, bounds); the instances are derived from it.
      const cache = this.#follower.adopt(
        await PrefixCache.start(this.kv, this.#prefixBytes, {
          keysMax: Math.max(namingCacheKeysMax, this.#max),
          signal,
        }),
      );
      // Subscribed and derived in one turn: the changes that follow apply on top of this list.
      const changes = cache.changes();
      this.#set(this.#derive(cache), cache.revision, { emit: false });
      // After each of the cache's changes the instances are derived again and the difference
      // emitted (a change from a re-read of the prefix carries its reason). The cache does the
      // watching, the resyncs and their bounds; when it fails, so does the resolver.
      this.#follower.follow(changes, (c) =>
        this.#set(
          this.#derive(cache),
          cache.revision,
          c.resync ? { emit: true, resync: c.resync } : { emit: true },
        ),
      );
      return this;
    });
  }

  /** Stops the watch; iterators finish what they buffered, then end. Idempotent. */
  close(): Promise<void> {
    return this.#follower.close();
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------------------------
  // Picking and the down-instance policy

  /**
   * One instance, or undefined when there is none. Skips instances marked down unless every
   * instance is down (then all are candidates: failing open beats refusing every call).
   * `round-robin` cycles through the candidates sorted by id; `random` is uniform; `sticky` maps
   * `key` to an instance by rendezvous hashing, so a key moves only when its instance leaves, goes
   * down, or a new instance outranks it for that key.
   */
  pick(opts: PickOptions = {}): ServiceInstance | undefined {
    const strategy = opts.strategy ?? this.#strategy;
    const all = this.#sorted;
    if (all.length === 0) return undefined;
    const now = this.#now();
    const up = all.filter((i) => !this.#isDownAt(i.id, now));
    const cands = up.length > 0 ? up : all;
    switch (strategy) {
      case PickStrategy.RoundRobin: {
        const i = cands[this.#rr % cands.length]!;
        this.#rr = (this.#rr + 1) % 0x7fffffff;
        return i;
      }
      case PickStrategy.Random:
        return cands[Math.floor(Math.random() * cands.length)]!;
      case PickStrategy.Sticky: {
        if (typeof opts.key !== 'string')
          throw new ConclaveError(ErrorCode.InvalidArgument, 'pick: the sticky strategy needs a key string');
        let best = cands[0]!;
        let bestScore = -1;
        for (const c of cands) {
          const score = hash32(`${opts.key}\u0000${c.id}`);
          if (score > bestScore) {
            best = c;
            bestScore = score;
          }
        }
        return best;
      }
      default:
        throw new ConclaveError(ErrorCode.InvalidArgument, `pick: unknown strategy ${String(strategy)}`);
    }
  }

  /**
   * Records a failed call to instance `id`. `errorThreshold` errors within `errorWindowMs` mark it
   * down for `downMs`. Unknown ids are ignored. Returns whether the instance is now down.
   */
  reportError(id: string): boolean {
    if (!this.#instances.has(id)) return false;
    const now = this.#now();
    let h = this.#health.get(id);
    if (!h) {
      h = { errors: [], downUntil: 0 };
      this.#health.set(id, h);
    }
    h.errors.push(now);
    // Bounded: only the last `errorThreshold` times matter for the window check.
    if (h.errors.length > this.#errorThreshold) h.errors.splice(0, h.errors.length - this.#errorThreshold);
    if (h.errors.length >= this.#errorThreshold && now - h.errors[0]! <= this.#errorWindowMs) {
      h.downUntil = now + this.#downMs;
      h.errors = [];
    }
    return this.#isDownAt(id, now);
  }

  /** Records a successful call: forgets the instance's errors and any down mark. */
  reportSuccess(id: string): void {
    this.#health.delete(id);
  }

  /** Whether instance `id` is currently marked down. */
  isDown(id: string): boolean {
    return this.#isDownAt(id, this.#now());
  }

  #isDownAt(id: string, now: number): boolean {
    const h = this.#health.get(id);
    return h !== undefined && h.downUntil > now;
  }

  // -------------------------------------------------------------------------------------------
  // Changes

  /**
   * Changes applied after this call, in order. A consumer more than `changesBufferedMax` changes
   * behind gets one change (`resync: 'overflow'`) from what it last saw to now instead. Ends after
   * `close()`; throws the resolver's error if it failed. Aborting `signal` ends this iterator
   * only, normally (a requested stop is not an error).
   */
  changes(opts: CallOptions = {}): AsyncGenerator<ServiceChange, void, undefined> {
    return this.#feed.subscribe(this.#instances, { signal: opts.signal });
  }

  /** `changes()`: every change applied after this call. */
  [Symbol.asyncIterator](): AsyncGenerator<ServiceChange, void, undefined> {
    return this.changes();
  }

  /** Replaces the list, forgets the health of instances that left, and emits the change. */
  #set(next: Instances, revision: number, how: { emit: boolean; resync?: ResyncReason }): void {
    const { resync } = how;
    const before = this.#instances;
    this.#instances = next;
    this.#sorted = sortedList(next);
    this.#revision = revision;
    for (const id of this.#health.keys()) if (!next.has(id)) this.#health.delete(id);
    if (!how.emit) return;
    const change = diffChange(before, next, revision, resync);
    if (!resync && change.added.length + change.removed.length + change.updated.length === 0) return;
    this.#feed.publish(change, next);
  }

  // -------------------------------------------------------------------------------------------
  // Store state and the watch loop

  #instance(kv: KeyValue): ServiceInstance | undefined {
    const e = decodeEndpoint(kv.value);
    if (!e) return undefined;
    const key = toText(kv.key);
    return {
      id: key.slice(this.#prefix.length),
      key,
      addr: e.addr,
      metadata: e.metadata,
      lease: kv.lease,
      createRevision: kv.createRevision,
      modRevision: kv.modRevision,
    };
  }

  /**
   * The instances in the cache: the first `instancesMax` valid ones in key order (further valid
   * ones set `truncated`); keys whose value is not an endpoint are remembered in `skippedKeys`.
   */
  #derive(cache: PrefixCache): Instances {
    const out = new Map<string, ServiceInstance>();
    this.#skipped = new Set();
    this.#truncated = false;
    for (const kv of cache.list()) {
      const i = this.#instance(kv);
      if (!i) {
        this.#skip(toText(kv.key));
        continue;
      }
      if (out.size >= this.#max) {
        this.#truncated = true;
        continue;
      }
      out.set(i.id, i);
    }
    return out;
  }

  #skip(key: string): void {
    // Bounded like the instances: a flood of invalid keys is not remembered past the bound.
    if (this.#skipped.size < this.#max) this.#skipped.add(key);
  }
}

/** Starts a `ServiceResolver`: resolves once the instances were read and the watch is set up. */
export function resolveService(
  kv: KV,
  service: string,
  opts: ResolverOptions = {},
): Promise<ServiceResolver> {
  return new ServiceResolver(kv, service, opts).start();
}
