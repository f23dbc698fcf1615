import { Err, Ok, type Result } from 'ts-results-es';
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import { leaseMarginMs } from '../src/session.js';
import type { CallOptions, LeaseId, Op } from '../src/types.js';
import {
  clipError,
  encodeRecord,
  idTimeMs,
  type StateRecord,
  type WorkQueueKeys,
} from './internal/work-queue-keys.js';
import { requeueKey } from './internal/work-queue-maintenance.js';

/** Longest delay of `add` and `nack` (one year). */
export const workQueueDelaySecondsMax = 365 * 24 * 3600;
export interface NackOptions extends CallOptions {
  /** Claimable again only after this many seconds (default 0: at once). */
  readonly delaySeconds?: number;
  /** Why the attempt failed; stored with the item (cut to `limits.workQueue.errorCharsMax`). */
  readonly error?: string;
}

/** Where a nacked item went. */
export type NackOutcome = 'ready' | 'delayed' | 'dead';

/** The claim is no longer ours: it expired and the item went back (and may be with another consumer), or it was already settled. */
export interface ClaimLost {
  readonly id: string;
  /** The claim revision (the job's token). */
  readonly token: number;
  readonly reason: 'expired' | 'settled';
  readonly message: string;
}

export function checkDelay(what: string, s: number | undefined): number {
  const v = s ?? 0;
  if (!Number.isFinite(v) || v < 0 || v > workQueueDelaySecondsMax)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${what}: delaySeconds must be between 0 and ${workQueueDelaySecondsMax}, got ${s}`,
    );
  return v;
}

/** A claim lease and when its TTL clock last (re)started, by the local monotonic clock. */
export interface ClaimLease {
  readonly id: LeaseId;
  readonly ttlSeconds: number;
  /** `performance.now()` just before the grant or keep-alive that set the server's deadline was sent. */
  readonly sentAt: number;
}

/** What a Job needs from its queue. */
export interface JobContext {
  readonly kv: KV;
  readonly keys: WorkQueueKeys;
  readonly consumer: string;
  /** Takes back the lease of a settled job: its only key was deleted by the settling txn. */
  release(lease: ClaimLease): void;
}

/** A put of the item's state record at `key`. */
const put = (key: string, rec: StateRecord): Op => ({ type: 'put', key, value: encodeRecord(rec) });

/**
 * One claimed item. Settle it with `ack()` (done), `nack()` (try again, optionally later) or
 * `deadLetter()`; `await using job = await queue.claim()` nacks an unsettled job at scope exit.
 * `lost` fires before the claim could expire on the server (unless extended), and when settled.
 */
export class Job implements AsyncDisposable {
  readonly id: string;
  readonly value: Uint8Array;
  readonly priority: number;
  /** Deliveries including this one. */
  readonly attempts: number;
  /** Deliveries after which a failed delivery dead-letters the item (fixed when it was added). */
  readonly attemptsMax: number;
  /** Why the previous delivery failed, if one did. */
  readonly lastError: string | undefined;
  /** Client time (ms) the item was added. */
  readonly enqueuedAtMs: number;
  /** The claim revision: increases with every claim of the queue; guards ack and nack. */
  readonly token: number;
  /** The claim's lease. Once the job is settled the queue may reuse it for a later claim. */
  readonly lease: LeaseId;
  readonly lost: AbortSignal;

  readonly #ctx: JobContext;
  readonly #record: StateRecord;
  readonly #lost = new AbortController();
  #ttlSeconds: number;
  #renewedAt: number;
  #deadline: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #settled = false;

  /** @internal Built by `WorkQueue.claim`. */
  constructor(
    ctx: JobContext,
    id: string,
    value: Uint8Array,
    record: StateRecord,
    token: number,
    lease: ClaimLease,
  ) {
    this.#ctx = ctx;
    this.id = id;
    this.value = value;
    this.#record = record;
    this.priority = record.p;
    this.attempts = record.a;
    this.attemptsMax = record.m;
    this.lastError = record.e;
    this.enqueuedAtMs = idTimeMs(id);
    this.token = token;
    this.lease = lease.id;
    this.lost = this.#lost.signal;
    this.#ttlSeconds = lease.ttlSeconds;
    this.#renewedAt = lease.sentAt;
    this.#deadline = lease.sentAt + lease.ttlSeconds * 1000 - leaseMarginMs(lease.ttlSeconds);
    this.#arm();
  }

  /** The body as UTF-8 text. */
  get text(): string {
    return toText(this.value);
  }

  /** @deprecated Renamed `attemptsMax`; this name goes in the next release. */
  get maxAttempts(): number {
    return this.attemptsMax;
  }

  /** Whether ack, nack or deadLetter succeeded. */
  get settled(): boolean {
    return this.#settled;
  }

  /** Milliseconds until `lost` fires if the claim is not extended. */
  remainingMs(): number {
    return Math.max(0, this.#deadline - performance.now());
  }

  #arm(): void {
    clearTimeout(this.#timer);
    if (this.#lost.signal.aborted) return;
    this.#timer = setTimeout(
      () => {
        if (performance.now() >= this.#deadline) {
          this.#fire(
            new ConclaveError(
              ErrorCode.SessionLost,
              `work queue job ${this.id}: the visibility timeout (${this.#ttlSeconds} s) may have passed; the item may be redelivered to another consumer — stop working on it`,
            ),
          );
        } else this.#arm();
      },
      Math.max(0, this.#deadline - performance.now()),
    );
    this.#timer.unref?.();
  }

  #fire(reason: unknown): void {
    clearTimeout(this.#timer);
    if (!this.#lost.signal.aborted) this.#lost.abort(reason);
  }

  #lostErr(reason: ClaimLost['reason'], message: string): Err<ClaimLost> {
    return Err({ id: this.id, token: this.token, reason, message });
  }

  #settledErr(): Err<ClaimLost> {
    return this.#lostErr('settled', `work queue job ${this.id}: already acked, nacked or dead-lettered`);
  }

  #expiredErr(): Err<ClaimLost> {
    this.#fire(new ConclaveError(ErrorCode.SessionLost, `work queue job ${this.id}: claim lost`));
    return this.#lostErr(
      'expired',
      `work queue job ${this.id}: the claim expired and the item was returned to the queue (it may have been redelivered); the result of this attempt was not recorded`,
    );
  }

  /** Marks the job done: deletes the item. `Err(ClaimLost)` if the claim was lost meanwhile. */
  async ack(opts: CallOptions = {}): Promise<Result<void, ClaimLost>> {
    if (this.#settled) return this.#settledErr();
    return this.#settle('acked', { type: 'delete', key: this.#ctx.keys.item(this.id) }, opts.signal);
  }

  /**
   * Gives the item back: ready at once, delayed by `delaySeconds`, or — when this was its last
   * allowed attempt — dead-lettered with `error`. `Err(ClaimLost)` if the claim was lost meanwhile.
   */
  async nack(opts: NackOptions = {}): Promise<Result<NackOutcome, ClaimLost>> {
    const delaySeconds = checkDelay('nack', opts.delaySeconds);
    if (this.#settled) return this.#settledErr();
    const next = this.#nextRecord(opts.error);
    const dest = requeueKey(this.#ctx.keys, this.id, this.#record);
    let key = dest.key;
    let outcome: NackOutcome = dest.dead ? 'dead' : 'ready';
    if (!dest.dead && delaySeconds > 0) {
      key = this.#ctx.keys.delayed(next.t! + delaySeconds * 1000, this.id);
      outcome = 'delayed';
    }
    const moved = await this.#settle('nacked', put(key, next), opts.signal);
    return moved.map(() => outcome);
  }

  /** Moves the item to dead letters now, with `error`. `Err(ClaimLost)` if the claim was lost. */
  async deadLetter(opts: { error?: string } & CallOptions = {}): Promise<Result<void, ClaimLost>> {
    if (this.#settled) return this.#settledErr();
    const next = this.#nextRecord(opts.error ?? 'dead-lettered by the consumer');
    return this.#settle('dead-lettered', put(this.#ctx.keys.dead(this.id), next), opts.signal);
  }

  /**
   * Restarts the visibility timeout (a lease keep-alive: the full timeout from now).
   * `Err(ClaimLost)` when the lease is gone; resolves with the new TTL in seconds.
   */
  async extend(opts: CallOptions = {}): Promise<Result<number, ClaimLost>> {
    if (this.#settled) return this.#settledErr();
    if (this.#lost.signal.aborted) return this.#expiredErr();
    const sentAt = performance.now();
    const ka = await this.#ctx.kv.lease.keepAliveOnce(this.lease, opts.signal ? { signal: opts.signal } : {});
    if (this.#settled) return this.#settledErr();
    if (ka.ttlSeconds <= 0) return this.#expiredErr();
    this.#ttlSeconds = ka.ttlSeconds;
    this.#renewedAt = sentAt;
    this.#deadline = sentAt + ka.ttlSeconds * 1000 - leaseMarginMs(ka.ttlSeconds);
    this.#arm();
    return Ok(ka.ttlSeconds);
  }

  /** Nacks the job (ready at once) if it is not settled; errors are ignored (the claim expires). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#settled) await this.nack().catch(() => undefined);
  }

  /** The claim is still ours: its record was not rewritten since the claim txn. */
  #guard() {
    return { key: this.#ctx.keys.rec(this.id), target: 'mod', result: '=', value: this.token } as const;
  }

  /** The item's record after this delivery: attempts kept, `error` (if given) as its last error. */
  #nextRecord(error: string | undefined): StateRecord {
    const r = this.#record;
    return {
      p: r.p,
      a: r.a,
      m: r.m,
      ...(error !== undefined ? { e: clipError(error) } : {}),
      c: this.#ctx.consumer,
      t: Date.now(),
    };
  }

  /**
   * Ends the claim (`how`: acked, nacked…) in one txn guarded by it: deletes the claim record and
   * its lease key, and does `then` (delete the item: ack; put its next state: nack, dead letter).
   * `Err(ClaimLost)` if the claim was lost (the guard failed): nothing was written.
   */
  async #settle(how: string, then: Op, signal: AbortSignal | undefined): Promise<Result<void, ClaimLost>> {
    const { kv, keys } = this.#ctx;
    const t = await kv.txn(
      {
        compare: [this.#guard()],
        success: [
          { type: 'delete', key: keys.rec(this.id) },
          { type: 'delete', key: keys.lease(this.id) },
          then,
        ],
        failure: [],
      },
      signal ? { signal } : {},
    );
    if (!t.succeeded) return this.#settled ? this.#settledErr() : this.#expiredErr();
    this.#finish(how);
    return Ok(undefined);
  }

  #finish(how: string): void {
    this.#settled = true;
    this.#fire(new ConclaveError(ErrorCode.Closed, `work queue job ${this.id} ${how}`));
    // The settling txn deleted the lease's only key: the queue may give the lease to a later
    // claim (which renews it first) instead of revoking it and granting another.
    this.#ctx.release({ id: this.lease, ttlSeconds: this.#ttlSeconds, sentAt: this.#renewedAt });
  }
}
