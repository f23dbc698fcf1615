/**
 * Session: a lease kept alive. Every recipe that holds something is tied to one.
 *
 * Contract of `lost`: it fires no later than the moment the server could expire the lease. The
 * local deadline is measured from when each successful keep-alive was *sent* (monotonic clock)
 * plus the TTL it granted, minus a safety margin — never from when the answer came back, because
 * the server starts the new TTL somewhere between sending and receiving.
 *
 * What makes that sound: a keep-alive answered with TTL t means the server will not expire the
 * lease before t seconds after it renewed it (it never renews a lease that is expiring or being
 * revoked: it answers TTL 0). The process itself may stall (a long GC pause, a blocked loop): then
 * the timer that fires `lost` runs late. So the deadline is also checked synchronously wherever
 * the session is consulted — `state`, `remainingMs()`, and before a keep-alive is sent — and a
 * session found past its deadline is lost at once, whatever a later keep-alive would answer.
 */
import { abortReason, ConclaveError, ErrorCode } from './errors.js';
import type { KV } from './kv.js';
import { limits } from './limits.js';
import type { CallOptions, LeaseId } from './types.js';
import { checkLeaseId, checkTtl } from './validate.js';

/**
 * The states of a `Session`: `connected` (its lease is known alive), `suspended` (a keep-alive
 * failed; the lease may still be alive until its deadline), `lost` (the lease is or may be gone).
 */
export const SessionState = { Connected: 'connected', Suspended: 'suspended', Lost: 'lost' } as const;
/** One of the {@link SessionState} values. */
export type SessionState = (typeof SessionState)[keyof typeof SessionState];

export interface SessionOptions extends CallOptions {
  /** Lease TTL in seconds (default 60, etcd's concurrency default). */
  ttlSeconds?: number;
  /** Adopt an existing lease instead of granting one. */
  lease?: LeaseId;
  /** Monotonic clock in milliseconds (default `performance.now`); tests may inject one. */
  now?: () => number;
}

/** The most (ms) a lease holder's deadline is set before the server's. */
export const leaseMarginMsMax = 1000;

/**
 * How much earlier than the computed server deadline of a lease of `ttlSeconds` its holder counts
 * it as gone (`Session.lost`, a WorkQueue claim's signal): a sixth of the TTL, at most
 * `leaseMarginMsMax`, for the clock and scheduling slack between this process and the server.
 * The one margin every lease holder uses.
 */
export function leaseMarginMs(ttlSeconds: number): number {
  return Math.min(leaseMarginMsMax, (ttlSeconds * 1000) / 6);
}

/**
 * A lease kept alive in the background: what locks, elections and registrations bind their keys
 * to, so they disappear when the process does. `lost` fires before the server could have expired
 * the lease (a margin below the deadline it computes from each keep-alive's answer), so whatever
 * was held can be given up in time. Create one with `Session.create(kv, { ttlSeconds })`; close it
 * (or `await using`) to revoke the lease at once.
 */
export class Session implements AsyncDisposable {
  /** The client the lease was granted through. */
  readonly kv: KV;
  /** The lease's id. */
  readonly lease: LeaseId;
  /** The lease's granted TTL in seconds. */
  readonly ttlSeconds: number;
  /** Fires (with a `session-lost` ConclaveError as reason) when the lease is or may be gone, or on close. */
  readonly lost: AbortSignal;

  #state: SessionState = SessionState.Connected;
  readonly #lostController = new AbortController();
  readonly #now: () => number;
  #deadline: number; // monotonic ms after which the server may have expired the lease (minus margin)
  #loopTimer: ReturnType<typeof setTimeout> | undefined;
  #deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  readonly #listeners = new Set<(s: SessionState) => void>();
  #inFlight: AbortController | undefined;

  private constructor(kv: KV, lease: LeaseId, ttlSeconds: number, sentAt: number, now: () => number) {
    this.kv = kv;
    this.lease = lease;
    this.ttlSeconds = ttlSeconds;
    this.lost = this.#lostController.signal;
    this.#now = now;
    this.#deadline = sentAt + ttlSeconds * 1000 - leaseMarginMs(ttlSeconds);
    this.#armDeadline();
    this.#scheduleKeepAlive(this.#intervalMs());
  }

  /** Grants a lease (or adopts `opts.lease`) and keeps it alive every TTL/3. */
  static async create(kv: KV, opts: SessionOptions = {}): Promise<Session> {
    const ttlSeconds = checkTtl('ttlSeconds', opts.ttlSeconds ?? 60);
    const now = opts.now ?? (() => performance.now());
    opts.signal?.throwIfAborted();
    const sentAt = now();
    if (opts.lease !== undefined) {
      const id = checkLeaseId('lease', opts.lease, { allowZero: false });
      const ka = await kv.lease.keepAliveOnce(id, { signal: opts.signal });
      if (ka.ttlSeconds <= 0) {
        throw new ConclaveError(
          ErrorCode.LeaseNotFound,
          `lease ${id.toString(16)} is unknown or expired; cannot adopt it`,
        );
      }
      return new Session(kv, id, ka.ttlSeconds, sentAt, now);
    }
    const grant = await kv.lease.grant(ttlSeconds, { signal: opts.signal });
    if (opts.signal?.aborted) {
      await kv.lease.revoke(grant.id).catch(() => undefined);
      throw abortReason(opts.signal);
    }
    return new Session(kv, grant.id, grant.ttlSeconds, sentAt, now);
  }

  /**
   * The current state, checked against the clock: past its deadline the session is lost now,
   * even if a stalled event loop has not yet run the timer that fires `lost`.
   */
  get state(): SessionState {
    this.#checkDeadline();
    return this.#state;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Milliseconds until `lost` would fire if no keep-alive succeeds from now on. */
  remainingMs(): number {
    this.#checkDeadline();
    return Math.max(0, this.#deadline - this.#now());
  }

  /** Fires `lost` now if the deadline has passed (the deadline timer may be late after a stall). */
  #checkDeadline(): void {
    if (!this.lost.aborted && this.#now() >= this.#deadline)
      this.#markLost('the lease could have expired: no keep-alive succeeded in time');
  }

  /** Subscribe to state changes; returns an unsubscribe function. */
  onStateChange(listener: (s: SessionState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The session's states as an async iterator: the current one first, then every change, ending after `lost`. */
  async *states(opts: CallOptions = {}): AsyncGenerator<SessionState> {
    const pending: SessionState[] = [this.#state];
    let wake: (() => void) | undefined;
    const off = this.onStateChange((s) => {
      pending.push(s);
      wake?.();
    });
    const onAbort = () => wake?.();
    opts.signal?.addEventListener('abort', onAbort);
    try {
      while (true) {
        opts.signal?.throwIfAborted();
        const s = pending.shift();
        if (s === undefined) {
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
          continue;
        }
        yield s;
        if (s === SessionState.Lost) return;
      }
    } finally {
      off();
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  #setState(s: SessionState): void {
    if (this.#state === s || this.#state === SessionState.Lost) return;
    this.#state = s;
    for (const l of [...this.#listeners]) l(s);
  }

  #intervalMs(): number {
    return Math.max(50, (this.ttlSeconds * 1000) / 3);
  }

  #armDeadline(): void {
    clearTimeout(this.#deadlineTimer);
    const ms = Math.max(0, this.#deadline - this.#now());
    this.#deadlineTimer = setTimeout(() => {
      // Re-check: a keep-alive may have moved the deadline while this timer was queued.
      if (this.#now() >= this.#deadline)
        this.#markLost('the lease could have expired: no keep-alive succeeded in time');
      else this.#armDeadline();
    }, ms);
    this.#deadlineTimer.unref?.();
  }

  #scheduleKeepAlive(ms: number): void {
    if (this.#closed || this.lost.aborted) return;
    clearTimeout(this.#loopTimer);
    this.#loopTimer = setTimeout(() => void this.#keepAlive(), ms);
    this.#loopTimer.unref?.();
  }

  async #keepAlive(attempt = 1): Promise<void> {
    if (this.#closed || this.lost.aborted) return;
    const sentAt = this.#now();
    // Past the deadline (the loop stalled, or keep-alives kept failing) the server may have expired
    // the lease already: the session is lost, and no keep-alive may bring it back.
    if (sentAt >= this.#deadline) {
      this.#markLost('the lease could have expired: no keep-alive succeeded in time');
      return;
    }
    const ctl = new AbortController();
    this.#inFlight = ctl;
    const remaining = this.#deadline - sentAt;
    const timeout = setTimeout(() => ctl.abort(), Math.max(100, Math.min(remaining, this.#intervalMs())));
    try {
      const r = await this.kv.lease.keepAliveOnce(this.lease, { signal: ctl.signal });
      if (this.#closed || this.lost.aborted) return;
      if (r.ttlSeconds <= 0) {
        this.#markLost(`lease ${this.lease.toString(16)} expired or is unknown to the server`);
        return;
      }
      this.#deadline = sentAt + r.ttlSeconds * 1000 - leaseMarginMs(r.ttlSeconds);
      this.#armDeadline();
      this.#setState(SessionState.Connected);
      this.#scheduleKeepAlive(this.#intervalMs());
    } catch (err) {
      if (this.#closed || this.lost.aborted) return;
      if (ConclaveError.is(err, ErrorCode.LeaseNotFound)) {
        this.#markLost(`lease ${this.lease.toString(16)} is unknown to the server`, err);
        return;
      }
      this.#setState(SessionState.Suspended);
      // Retry sooner than the normal interval, but never beyond the deadline, and boundedly often.
      const left = this.#deadline - this.#now();
      if (left <= 0 || attempt >= limits.keepAliveAttemptsMax) {
        this.#markLost('keep-alives kept failing until the lease could have expired', err);
        return;
      }
      const backoff = Math.min(left / 2, 100 * 2 ** Math.min(attempt, 5), this.#intervalMs());
      clearTimeout(this.#loopTimer);
      this.#loopTimer = setTimeout(() => void this.#keepAlive(attempt + 1), Math.max(10, backoff));
      this.#loopTimer.unref?.();
    } finally {
      clearTimeout(timeout);
      if (this.#inFlight === ctl) this.#inFlight = undefined;
    }
  }

  #markLost(message: string, cause?: unknown): void {
    if (this.lost.aborted) return;
    clearTimeout(this.#loopTimer);
    clearTimeout(this.#deadlineTimer);
    this.#setState(SessionState.Lost);
    this.#lostController.abort(
      new ConclaveError(ErrorCode.SessionLost, `session lost: ${message}`, { cause }),
    );
  }

  /** Stops keep-alives and revokes the lease (its keys are deleted). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#loopTimer);
    this.#inFlight?.abort();
    const wasLost = this.lost.aborted;
    this.#markLost('the session was closed');
    if (wasLost) return;
    try {
      await this.kv.lease.revoke(this.lease);
    } catch (err) {
      // An already-expired lease is the outcome we wanted.
      if (!ConclaveError.is(err, ErrorCode.LeaseNotFound)) throw err;
    } finally {
      clearTimeout(this.#deadlineTimer);
    }
  }

  /**
   * Stops keeping the lease alive without revoking it (Go's `Session.Orphan`): the lease and its
   * keys are left to whoever else keeps it alive, or expire with it. `lost` fires now (this
   * session no longer vouches for the lease). Idempotent; `close()` afterwards revokes nothing.
   */
  orphan(): void {
    this.#closed = true;
    this.#closing ??= Promise.resolve();
    clearTimeout(this.#loopTimer);
    clearTimeout(this.#deadlineTimer);
    this.#inFlight?.abort();
    this.#markLost('the session was orphaned: its lease is left to its owner');
  }

  /** Revokes if needed; a lease the server may be unable to revoke right now expires on its own. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => undefined);
  }
}
