/**
 * Service naming: `ServiceRegistry` publishes endpoints, `ServiceResolver` keeps a live list of
 * them and picks one per call.
 *
 * Layout (etcd's `client/v3/naming/endpoints`, which Go's gRPC `etcd:///` resolver reads): the
 * endpoint `id` of `service` is the key `service + "/" + id`, bound to a session's lease, whose
 * value is the JSON of etcd's `naming.Update`: `{"Op":0,"Addr":"host:port","Metadata":…}` (`Op` 0
 * is Add; `Metadata` is `null` when absent, as Go's encoding/json writes a nil interface). Go's
 * endpoint manager lists the target's prefix and then watches it from the list's revision + 1;
 * the resolver here does the same, and re-reads (a resync) when that history is compacted.
 */
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Session } from '../src/session.js';
import type { CallOptions, KeyValue } from '../src/types.js';
import { ChangeFeed } from './internal/change-feed.js';
import type { ResyncReason } from './internal/resync.js';
import { backoffMs, pause } from './internal/timing.js';
import { PrefixCache, type PrefixCacheChange, prefixCacheResyncAttemptsMax } from './prefix-cache.js';

// ---------------------------------------------------------------------------------------------
// Bounds and defaults

/** Most instances a resolver tracks (default); further ones are ignored and `truncated` is set. */
export const namingInstancesMax = 1000;
/** Changes buffered per resolver iterator; past it they merge into one `resync: 'overflow'` change. */
export const namingChangesBufferedMax = 64;
/** Registrations one `ServiceRegistry` holds at a time. */
export const namingRegistrationsMax = 1000;
/** Consecutive failed attempts (write, or getting a session from the provider) before a registration fails. */
export const namingRegisterAttemptsMax = 30;
/** Longest back-off (ms) between two attempts of a registration or a resolver resync. */
export const namingBackoffMsMax = 2000;
/**
 * Consecutive failed attempts to re-read and re-watch before a resolver fails: the bound of the
 * `PrefixCache` under it (`prefixCacheResyncAttemptsMax`).
 */
export const namingResyncAttemptsMax = prefixCacheResyncAttemptsMax;
/**
 * Most keys under a service a resolver keeps in its local copy (valid instances and others); a
 * service with more fails the resolver with `too-many-requests`. `instancesMax` bounds how many of
 * the valid ones are tracked.
 */
export const namingCacheKeysMax = 10_000;
/** Default interval (ms) between health checks. */
export const healthCheckIntervalMsDefault = 5000;
/** Default bound (ms) on one health check; a check that takes longer fails. */
export const healthCheckTimeoutMsDefault = 2000;
/** Default number of errors within `errorWindowMs` that marks an instance down. */
export const downErrorThresholdDefault = 3;
/** Default window (ms) in which `errorThreshold` errors mark an instance down. */
export const downErrorWindowMsDefault = 10_000;
/** Default time (ms) an instance stays down after being marked. */
export const downMsDefault = 30_000;
/** Largest `errorThreshold` accepted (it bounds the error timestamps kept per instance). */
export const downErrorThresholdMax = 1000;

// ---------------------------------------------------------------------------------------------
// The stored format

/** An endpoint as Go's `endpoints.Endpoint`: an address and optional JSON metadata. */
export interface Endpoint {
  readonly addr: string;
  /** Any JSON-serialisable value (Go reads it as `interface{}`); absent is stored as `null`. */
  readonly metadata?: unknown;
}

/** The stored value: etcd's `naming.Update` JSON with `Op` Add (field order as Go writes it). */
export function encodeEndpoint(endpoint: Endpoint): string {
  return JSON.stringify({ Op: 0, Addr: endpoint.addr, Metadata: endpoint.metadata ?? null });
}

/** Parses a stored `naming.Update`; undefined when it is not one (Go's resolver skips those too). */
export function decodeEndpoint(value: Uint8Array): Endpoint | undefined {
  let v: unknown;
  try {
    v = JSON.parse(toText(value));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const u = v as { Op?: unknown; Addr?: unknown; Metadata?: unknown };
  // Go's endpoint manager treats every put as an Add whatever its Op; a Delete is a deleted key.
  if (typeof u.Addr !== 'string') return undefined;
  return { addr: u.Addr, metadata: u.Metadata ?? null };
}

function checkName(what: string, name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${what} must be a non-empty string`);
}

function checkEndpoint(endpoint: Endpoint): Endpoint {
  if (typeof endpoint?.addr !== 'string' || endpoint.addr.length === 0)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'register: addr must be a non-empty string (host:port)',
    );
  if (endpoint.metadata !== undefined && JSON.stringify(endpoint.metadata) === undefined)
    throw new ConclaveError(ErrorCode.InvalidArgument, 'register: metadata must be JSON-serialisable');
  return { addr: endpoint.addr, metadata: endpoint.metadata ?? null };
}

const retryBackoffMs = (failures: number) => backoffMs(failures - 1, namingBackoffMsMax);

// ---------------------------------------------------------------------------------------------
// Registration

/**
 * Where a registration gets its session: a `Session`, or a provider called whenever the current
 * one is lost (and once at the start). The provider owns the sessions it returns: the
 * registration never closes them. It may return the same session until that one is lost.
 */
export type SessionProvider = (opts: { signal: AbortSignal }) => Session | Promise<Session>;

/**
 * A check run every `intervalMs`, bounded by `timeoutMs` (its `signal` aborts then). It fails when
 * it returns `false`, throws, or times out.
 */
export type HealthCheckFn = (opts: { signal: AbortSignal }) => unknown;

/** A registration's health check and how often it runs. */
export interface HealthCheckOptions {
  /** The check: a rejection or a thrown error is a failure. */
  readonly check: HealthCheckFn;
  /** Default `healthCheckIntervalMsDefault`. */
  readonly intervalMs?: number;
  /** Default `healthCheckTimeoutMsDefault`. */
  readonly timeoutMs?: number;
  /** Consecutive failures that withdraw the endpoint (default 1). */
  readonly failuresToWithdraw?: number;
  /** Consecutive passes that restore it (default 1). */
  readonly passesToRestore?: number;
}

export interface RegisterOptions extends Endpoint, CallOptions {
  /** The endpoint's id: the key is `service + "/" + id`. Unique per service. */
  readonly id: string;
  /** Withdraws the endpoint while it fails (a function: checked with the defaults). */
  readonly healthCheck?: HealthCheckFn | HealthCheckOptions;
}

/** The states of a `ServiceRegistration`. */
export const RegistrationState = {
  /** The key is stored under a live session's lease. */
  Registered: 'registered',
  /** The health check fails: the key was deleted; it is written again when the check passes. */
  Withdrawn: 'withdrawn',
  /** The session was lost (the key goes with its lease); waiting for a new session. */
  Lost: 'lost',
  /** Gave up after `namingRegisterAttemptsMax` failed attempts or a non-retryable error (see `error`). */
  Failed: 'failed',
  /** Closed by its owner: the key was deleted. */
  Closed: 'closed',
} as const;
/** One of the {@link RegistrationState} values. */
export type RegistrationState = (typeof RegistrationState)[keyof typeof RegistrationState];

/** One published endpoint. Close it (or `await using`) to delete its key. */
export class ServiceRegistration implements AsyncDisposable {
  readonly service: string;
  readonly id: string;
  readonly key: string;

  #endpoint: Endpoint;
  #session: Session | undefined;
  readonly #provider: SessionProvider | undefined;
  readonly #health: Required<HealthCheckOptions> | undefined;
  #healthy = true;
  #healthRun = { fails: 0, passes: 0 };
  /** The lease and value last written (believed stored), or undefined when no key of ours is stored. */
  #published: { lease: bigint; value: string } | undefined;
  /** Lease of the last put sent, stored or not: `close()` deletes the key only under it. */
  #lastLease: bigint | undefined;
  #state: RegistrationState = RegistrationState.Lost;
  #error: unknown;
  readonly #listeners = new Set<(s: RegistrationState) => void>();
  readonly #stop = new AbortController();
  #dirty = true;
  #wake: (() => void) | undefined;
  #offLost: (() => void) | undefined;
  #running: Promise<void> | undefined;
  #healthLoop: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  readonly #onClosed: (r: ServiceRegistration) => void;

  /** Use `ServiceRegistry.register`. */
  constructor(
    source: Session | SessionProvider,
    service: string,
    opts: RegisterOptions,
    onClosed: (r: ServiceRegistration) => void = () => {},
  ) {
    checkName('register: service', service);
    checkName('register: id', opts?.id);
    this.service = service;
    this.id = opts.id;
    this.key = `${service}/${opts.id}`;
    this.#endpoint = checkEndpoint(opts);
    if (typeof source === 'function') this.#provider = source;
    else this.#attach(source);
    this.#health = healthOptions(opts.healthCheck);
    this.#onClosed = onClosed;
  }

  get state(): RegistrationState {
    return this.#state;
  }

  /** The session the key is (or will be) written under; undefined before the provider gave one. */
  get session(): Session | undefined {
    return this.#session;
  }

  get endpoint(): Endpoint {
    return this.#endpoint;
  }

  /** What made the registration fail (state `failed`). */
  get error(): unknown {
    return this.#error;
  }

  /** Subscribe to state changes; returns an unsubscribe function. */
  onStateChange(listener: (s: RegistrationState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Runs the first health check, then writes the key (or records it withdrawn). Called once by
   * `ServiceRegistry.register`; rejects (and closes) when that first attempt fails.
   */
  async start(signal?: AbortSignal): Promise<this> {
    const stop = signal ? AbortSignal.any([signal, this.#stop.signal]) : this.#stop.signal;
    try {
      if (this.#health) this.#recordHealth(await this.#check(stop));
      stop.throwIfAborted();
      this.#dirty = false;
      await this.#reconcile(stop);
      stop.throwIfAborted();
    } catch (err) {
      await this.close().catch(() => undefined);
      throw signal?.aborted ? abortReason(signal) : err;
    }
    this.#running = this.#run();
    if (this.#health) this.#healthLoop = this.#runHealth();
    return this;
  }

  /**
   * Hands the registration a new session (after the old one was lost, or to move it): the key is
   * written again under the new lease. With a provider this is not needed.
   */
  setSession(session: Session): void {
    if (this.#closing) throw new ConclaveError(ErrorCode.Closed, 'setSession: the registration is closed');
    this.#attach(session);
    this.#poke();
  }

  /** Changes the published address or metadata (written under the same lease). */
  update(endpoint: Endpoint): void {
    if (this.#closing) throw new ConclaveError(ErrorCode.Closed, 'update: the registration is closed');
    this.#endpoint = checkEndpoint(endpoint);
    this.#poke();
  }

  /**
   * Stops the health check and deletes the key (only while it is still bound to the lease we last
   * wrote it under, so a newer registration of the same id is left alone). Idempotent. Rejects
   * when the delete fails (the key then goes when its lease expires).
   */
  close(opts: CallOptions = {}): Promise<void> {
    this.#closing ??= (async () => {
      this.#stop.abort(new ConclaveError(ErrorCode.Closed, `registration ${this.key} closed`));
      this.#wake?.();
      this.#offLost?.();
      await this.#running?.catch(() => undefined);
      await this.#healthLoop?.catch(() => undefined);
      this.#setState(RegistrationState.Closed);
      this.#onClosed(this);
      const kv = this.#session?.kv;
      if (this.#lastLease === undefined || !kv) return;
      await kv.txn(
        {
          compare: [{ key: this.key, target: 'lease', result: '=', value: this.#lastLease }],
          success: [{ type: 'delete', key: this.key }],
          failure: [],
        },
        opts,
      );
      this.#published = undefined;
    })();
    return this.#closing;
  }

  /** `close()`, for `await using` (errors ignored: the keys go with their leases at the latest). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => undefined);
  }

  // -------------------------------------------------------------------------------------------

  #setState(s: RegistrationState): void {
    if (this.#state === s || this.#state === RegistrationState.Closed) return;
    this.#state = s;
    for (const l of [...this.#listeners]) l(s);
  }

  #attach(session: Session): void {
    if (this.#session === session) return;
    this.#offLost?.();
    this.#session = session;
    const onLost = () => this.#poke();
    session.lost.addEventListener('abort', onLost, { once: true });
    this.#offLost = () => session.lost.removeEventListener('abort', onLost);
  }

  /** Something changed: the loop reconciles again. */
  #poke(): void {
    this.#dirty = true;
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  /** The one loop that writes: every change of session, health or endpoint leads here. */
  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    let failures = 0;
    // Bounded: each turn either waits for a poke or counts a failure (and fails past the bound).
    while (!signal.aborted) {
      if (!this.#dirty) {
        await new Promise<void>((r) => (this.#wake = r));
        continue;
      }
      this.#dirty = false;
      try {
        await this.#reconcile(signal);
        failures = 0;
      } catch (err) {
        if (signal.aborted) return;
        const retryable =
          ConclaveError.is(err) &&
          (err.retryable || err.code === ErrorCode.LeaseNotFound || err.code === ErrorCode.SessionLost);
        if (!retryable || ++failures >= namingRegisterAttemptsMax) {
          this.#error = err;
          this.#setState(RegistrationState.Failed);
          return;
        }
        this.#dirty = true;
        await pause(retryBackoffMs(failures), signal);
      }
    }
  }

  /** Brings the store in line with the wanted state: written under a live lease when healthy. */
  async #reconcile(signal: AbortSignal): Promise<void> {
    let session = this.#session;
    if (!session || session.lost.aborted) {
      // The old lease's key expires with it (or already went): nothing of ours is stored.
      this.#published = undefined;
      this.#setState(RegistrationState.Lost);
      if (!this.#provider) return; // waits for setSession()
      const next = await this.#provider({ signal });
      signal.throwIfAborted();
      if (next.lost.aborted)
        throw new ConclaveError(
          ErrorCode.SessionLost,
          `registration ${this.key}: the provider returned a lost session`,
        );
      this.#attach(next);
      session = next;
    }
    const kv = session.kv;
    if (!this.#healthy) {
      const published = this.#published;
      if (published) {
        // Delete only our own key (bound to our lease): a newer owner of the id stays.
        await kv.txn(
          {
            compare: [{ key: this.key, target: 'lease', result: '=', value: published.lease }],
            success: [{ type: 'delete', key: this.key }],
            failure: [],
          },
          { signal },
        );
        if (this.#published === published) this.#published = undefined;
      }
      if (!this.#dirty) this.#setState(RegistrationState.Withdrawn);
      return;
    }
    const value = encodeEndpoint(this.#endpoint);
    const lease = session.lease;
    if (this.#published?.lease !== lease || this.#published.value !== value) {
      this.#lastLease = lease;
      // A lease the server no longer knows fails the put (`lease-not-found`); the session's own
      // keep-alive then finds it lost and the loop moves on to a new session.
      await kv.put(this.key, value, { lease, signal });
      this.#published = { lease, value };
    }
    // Re-check: the session may have been lost, or health changed, while the put was in flight.
    if (!this.#dirty && !session.lost.aborted) this.#setState(RegistrationState.Registered);
  }

  // -------------------------------------------------------------------------------------------
  // Health

  /**
   * One check, bounded by `timeoutMs`: its own controller aborts at the deadline or when the
   * registration stops (a per-check controller, so no listener outlives the check).
   */
  async #check(signal: AbortSignal): Promise<boolean> {
    const h = this.#health!;
    const ctl = new AbortController();
    let expired: () => void = () => {};
    const expiredP = new Promise<false>((resolve) => {
      expired = () => resolve(false);
    });
    const abort = () => {
      ctl.abort(new ConclaveError(ErrorCode.DeadlineExceeded, `health check of ${this.key} timed out`));
      expired();
    };
    const timer = setTimeout(abort, h.timeoutMs);
    signal.addEventListener('abort', abort, { once: true });
    try {
      const r = await Promise.race([Promise.resolve(h.check({ signal: ctl.signal })), expiredP]);
      return r !== false && !ctl.signal.aborted;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', abort);
    }
  }

  #recordHealth(ok: boolean): void {
    const h = this.#health!;
    const run = this.#healthRun;
    if (ok) {
      run.fails = 0;
      run.passes = Math.min(run.passes + 1, h.passesToRestore);
      if (!this.#healthy && run.passes >= h.passesToRestore) {
        this.#healthy = true;
        this.#poke();
      }
    } else {
      run.passes = 0;
      run.fails = Math.min(run.fails + 1, h.failuresToWithdraw);
      if (this.#healthy && run.fails >= h.failuresToWithdraw) {
        this.#healthy = false;
        this.#poke();
      }
    }
  }

  async #runHealth(): Promise<void> {
    const signal = this.#stop.signal;
    const h = this.#health!;
    while (!signal.aborted) {
      await pause(h.intervalMs, signal);
      if (signal.aborted) return;
      const ok = await this.#check(signal);
      if (signal.aborted) return;
      this.#recordHealth(ok);
    }
  }
}

function healthOptions(
  h: HealthCheckFn | HealthCheckOptions | undefined,
): Required<HealthCheckOptions> | undefined {
  if (h === undefined) return undefined;
  const o: HealthCheckOptions = typeof h === 'function' ? { check: h } : h;
  if (typeof o.check !== 'function')
    throw new ConclaveError(ErrorCode.InvalidArgument, 'register: healthCheck.check must be a function');
  const positive = (name: string, v: number) => {
    if (!Number.isFinite(v) || v <= 0)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `register: healthCheck.${name} must be a positive number`,
      );
    return v;
  };
  const count = (name: string, v: number) => {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `register: healthCheck.${name} must be a positive integer`,
      );
    return v;
  };
  return {
    check: o.check,
    intervalMs: positive('intervalMs', o.intervalMs ?? healthCheckIntervalMsDefault),
    timeoutMs: positive('timeoutMs', o.timeoutMs ?? healthCheckTimeoutMsDefault),
    failuresToWithdraw: count('failuresToWithdraw', o.failuresToWithdraw ?? 1),
    passesToRestore: count('passesToRestore', o.passesToRestore ?? 1),
  };
}

/**
 * Publishes endpoints. `register()` writes one endpoint bound to a session's lease and keeps it
 * there: re-written under the next session when one is lost (given a `SessionProvider`, or via
 * `registration.setSession`), withdrawn while its health check fails. `close()` closes every
 * registration still open.
 */
export class ServiceRegistry implements AsyncDisposable {
  readonly #open = new Set<ServiceRegistration>();
  #closed = false;

  /** Registrations not yet closed. */
  get size(): number {
    return this.#open.size;
  }

  /**
   * Registers `opts.addr` (and `metadata`) as `service/id`. Resolves once the key is written, or
   * once a failing first health check has left it withdrawn. Rejects (writing nothing) with the
   * signal's reason or the first write's error.
   */
  async register(
    source: Session | SessionProvider,
    service: string,
    opts: RegisterOptions,
  ): Promise<ServiceRegistration> {
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'ServiceRegistry: closed');
    if (this.#open.size >= namingRegistrationsMax)
      throw new ConclaveError(
        ErrorCode.TooManyRequests,
        `ServiceRegistry: ${this.#open.size} registrations are open (namingRegistrationsMax); close some or use another registry`,
        { retryable: false },
      );
    opts.signal?.throwIfAborted();
    const r = new ServiceRegistration(source, service, opts, (x) => this.#open.delete(x));
    this.#open.add(r);
    return r.start(opts.signal);
  }

  /** Closes (deregisters) every open registration. Idempotent; rejects with the first failure. */
  async close(): Promise<void> {
    this.#closed = true;
    const results = await Promise.allSettled([...this.#open].map((r) => r.close()));
    const failed = results.find((x) => x.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** `close()`, for `await using` (errors ignored: the keys go with their leases at the latest). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => undefined);
  }
}

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
  /** Default `namingInstancesMax`. */
  readonly instancesMax?: number;
  /** Default `namingChangesBufferedMax`. */
  readonly changesBufferedMax?: number;
  /** Errors within `errorWindowMs` that mark an instance down (default `downErrorThresholdDefault`). */
  readonly errorThreshold?: number;
  readonly errorWindowMs?: number;
  /** How long an instance stays down (default `downMsDefault`). */
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
  readonly #signal: AbortSignal | undefined;
  readonly #stop = new AbortController();
  /** The live copy of the service's keys (watch, resyncs, bounds); the instances are derived from it. */
  #cache: PrefixCache | undefined;

  #instances: Instances = new Map();
  #sorted: ServiceInstance[] = [];
  #revision = 0;
  #truncated = false;
  #skipped = new Set<string>();
  #health = new Map<string, Health>();
  #rr = 0;
  #started = false;
  #running: Promise<void> | undefined;
  #closed: Promise<void> | undefined;
  #error: unknown;
  #onAbort = () => void this.close();

  constructor(kv: KV, service: string, opts: ResolverOptions = {}) {
    checkName('ServiceResolver: service', service);
    const int = (name: string, v: number, min: number) => {
      if (!Number.isSafeInteger(v) || v < min)
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          `ServiceResolver: ${name} must be an integer >= ${min}`,
        );
      return v;
    };
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
    this.#signal = opts.signal;
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
    return this.#error;
  }

  /** Reads the service's instances at one revision and starts the watch. Call once. */
  async start(): Promise<this> {
    if (this.#started || this.#closed)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'ServiceResolver: start() may be called once');
    this.#started = true;
    const signal = this.#signal ? AbortSignal.any([this.#signal, this.#stop.signal]) : this.#stop.signal;
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    try {
      signal.throwIfAborted();
      const cache = await PrefixCache.start(this.kv, this.#prefixBytes, {
        keysMax: Math.max(namingCacheKeysMax, this.#max),
        signal,
      });
      this.#cache = cache;
      // Subscribed and derived in one turn: the changes that follow apply on top of this list.
      const changes = cache.changes();
      this.#set(this.#derive(cache), cache.revision, { emit: false });
      this.#running = this.#run(cache, changes);
      return this;
    } catch (err) {
      await this.close();
      throw this.#signal?.aborted ? abortReason(this.#signal) : err;
    }
  }

  /** Stops the watch; iterators finish what they buffered, then end. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.#stop.abort(new ConclaveError(ErrorCode.Closed, `service resolver ${this.service} closed`));
      this.#feed.end(this.#error);
      await this.#cache?.close();
      await this.#running?.catch(() => undefined);
    })();
    return this.#closed;
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

  /**
   * Follows the cache: after each of its changes, the instances are derived again and the
   * difference emitted (a change that comes from a re-read of the prefix carries its reason).
   * The cache does the watching, the resyncs after compaction, overflow or a broken watch, and
   * their bounds; when it fails, so does the resolver.
   */
  async #run(cache: PrefixCache, changes: AsyncGenerator<PrefixCacheChange, void, undefined>): Promise<void> {
    try {
      for await (const c of changes) {
        const resync = c.resync;
        this.#set(this.#derive(cache), cache.revision, resync ? { emit: true, resync } : { emit: true });
      }
      if (cache.error !== undefined && !this.#stop.signal.aborted) this.#fail(cache.error);
    } catch (err) {
      if (!this.#stop.signal.aborted) this.#fail(err);
    }
  }

  #fail(err: unknown): void {
    this.#error = err;
    void this.close();
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
