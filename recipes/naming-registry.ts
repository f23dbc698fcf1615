/**
 * Publishing endpoints: `ServiceRegistry` and its `ServiceRegistration`s, each a key bound to a
 * session's lease (layout and format: naming.ts).
 */
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import type { Session } from '../src/session.js';
import type { CallOptions } from '../src/types.js';
import {
  checkEndpoint,
  checkName,
  type Endpoint,
  encodeEndpoint,
  healthCheckIntervalMsDefault,
  healthCheckTimeoutMsDefault,
  namingRegisterAttemptsMax,
  namingRegistrationsMax,
  retryBackoffMs,
} from './internal/naming-common.js';
import { pause } from './internal/timing.js';

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
  /** Default `limits.naming.healthCheckIntervalMsDefault`. */
  readonly intervalMs?: number;
  /** Default `limits.naming.healthCheckTimeoutMsDefault`. */
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
  /** Gave up after `limits.naming.registerAttemptsMax` failed attempts or a non-retryable error (see `error`). */
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
  async start(opts: CallOptions | AbortSignal = {}): Promise<this> {
    // A bare AbortSignal is the deprecated positional form (`start(signal)`).
    const signal = opts instanceof AbortSignal ? opts : opts.signal;
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

  /** `close()`: every held thing has `release()`. */
  release(opts: CallOptions = {}): Promise<void> {
    return this.close(opts);
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
    return r.start({ signal: opts.signal });
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
