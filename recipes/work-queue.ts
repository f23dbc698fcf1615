/**
 * WorkQueue: an at-least-once work queue with visibility timeout, ack/nack, delay, priority and
 * dead letters, on any etcd-v3 store.
 *
 * Key layout (recipes/internal/work-queue-keys.ts): the body at `<name>/items/<id>` is written
 * once; a small state record moves between `ready/<priority>/<id>`, `delayed/<due ms>/<id>`,
 * `inflight/rec/<id>` and `dead/<id>` — always one txn that deletes the old state key, guarded by
 * its mod revision, and puts the new one, so an item is in exactly one state at every revision and
 * concurrent movers cannot both succeed.
 *
 * Claim = one txn: the ready key still has the mod revision we read → delete it, put the claim
 * record (attempts + 1) and `inflight/lease/<id>` bound to the claim's own lease with TTL = the
 * visibility timeout (granted for it, or a settled claim's keyless lease renewed for it), and read
 * the body. When the lease expires (the consumer died, or
 * is alive but slower than the timeout) etcd deletes the lease key; any live participant's reaper
 * sees that delete without the record's and puts the item back (or into dead letters once its
 * attempts are used up). Ack/nack are txns guarded by the claim record's mod revision (= the claim
 * revision, the job's `token`): they succeed iff the item was not given back meanwhile, so at most
 * one of "ack" and "redeliver" happens. A job's `lost` signal fires before the server could expire
 * its lease (local monotonic deadline from when the grant or last extension was *sent*, minus a
 * margin, as Session does), so a consumer that honours it never works on an item that another
 * live consumer holds.
 *
 * Throughput (docs/recipes/work-queue.md, Cost): `process` runs `concurrency` workers whose claims
 * overlap, reuses claim leases (a keep-alive instead of a grant and a revoke), and reads ready
 * keys from a cursor past the deleted keys of items already claimed.
 *
 * Delays use the client clock (Date.now): producers write the due time, any participant promotes
 * due items. Clock skew between participants shifts delays by the skew; it never loses an item.
 */
import { setMaxListeners } from 'node:events';
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, prefixEnd, toBytes } from '../src/keys.js';
import { leaseMarginMs, type Session } from '../src/session.js';
import type { Bytes, CallOptions, KeyValue, LeaseId, RangeResult } from '../src/types.js';
import { renamedOption } from './internal/options.js';
import { backoffMs, pause as wait } from './internal/timing.js';
import {
  decodeRecord,
  encodeRecord,
  idOf,
  newItemId,
  type StateRecord,
  WorkQueueKeys,
  workQueuePriorityMax,
} from './internal/work-queue-keys.js';
import { WorkQueueMaintenance, workQueueBackoffMsMax } from './internal/work-queue-maintenance.js';

import { type ClaimGroup, type ReadStart, ReadyWaiter, waitReadyPut } from './internal/work-queue-ready.js';
import { type ClaimLease, checkDelay, Job, type JobContext } from './work-queue-job.js';

export { workQueueErrorCharsMax, workQueuePriorityMax } from './internal/work-queue-keys.js';
export {
  workQueueBackoffMsMax,
  workQueuePageKeysMax,
  workQueueReapPendingMax,
  workQueueRestartAttemptsMax,
  workQueueSweepKeysMax,
  workQueueTimerMsMax,
  workQueueWatchHealthyMs,
} from './internal/work-queue-maintenance.js';
export {
  type ClaimLost,
  Job,
  type NackOptions,
  type NackOutcome,
  workQueueDelaySecondsMax,
} from './work-queue-job.js';

import { checkInt, checkName } from './internal/check.js';

/** Default visibility timeout: how long a claim lasts without ack, nack or extend. */
export const workQueueVisibilityTimeoutSecondsDefault = 30;
/** Default deliveries before an item is dead-lettered (`attemptsMax`). */
export const workQueueAttemptsMaxDefault = 5;
/** The largest `attemptsMax` an item may be given. */
export const workQueueAttemptsLimitMax = 1_000_000;
/** Ready keys read per claim round; the claim tries them in order until one txn wins. */
export const workQueueClaimCandidatesMax = 8;
/** Consecutive claim rounds that found items but lost every race before `claim` fails `retries-exhausted`. */
export const workQueueClaimRoundsMax = 64;
/** Most handlers one `process` call runs at once. */
export const workQueueConcurrencyMax = 1024;
/** Consecutive failed claims (store errors) after which `process` gives up and rejects. */
export const workQueueProcessErrorsMax = 10;
/** Lease revocations (after ack/nack) in flight at once; past it, leases are left to expire. */
export const workQueueRevokesPendingMax = 256;
/** Most dead letters one `deadLetters()` call returns (bodies are read in one txn). */
export const workQueueDeadLettersPageMax = 100;
/**
 * Claim leases kept for reuse once their claim is settled (or a round did not need them); past
 * it they are revoked. A reused lease is renewed (keep-alive) by the claim that takes it.
 */
export const workQueueLeasePoolMax = 64;

/** Options of a `WorkQueue` (each has a default; see docs/recipes/work-queue.md). */
export interface WorkQueueOptions {
  /** Claim lifetime in whole seconds (default 30). The store may raise it to its minimum lease TTL. */
  readonly visibilityTimeoutSeconds?: number;
  /** Deliveries before an item is dead-lettered (default 5); fixed per item when it is added. */
  readonly attemptsMax?: number;
  /** @deprecated Renamed `attemptsMax` (every bound is named `<what>Max`); this name goes in the next release. */
  readonly maxAttempts?: number;
}

export interface AddOptions extends CallOptions {
  /** 0…65535, lower is served first (default 0). */
  readonly priority?: number;
  /** Claimable only after this many seconds (client clock; default 0). */
  readonly delaySeconds?: number;
  /** Overrides the queue's `attemptsMax` for this item. */
  readonly attemptsMax?: number;
  /** @deprecated Renamed `attemptsMax`; this name goes in the next release. */
  readonly maxAttempts?: number;
}

/** Counts of a queue's items by state, read at one revision. */
export interface WorkQueueStats {
  /** The revision all four counts were read at. */
  readonly revision: number;
  readonly ready: number;
  /** Claimed, including expired claims not yet returned by a reaper. */
  readonly inFlight: number;
  readonly delayed: number;
  readonly dead: number;
}

/** An item that used up its attempts (or was dead-lettered), with why it last failed. */
export interface DeadLetter {
  readonly id: string;
  readonly value: Uint8Array;
  readonly priority: number;
  readonly attempts: number;
  readonly lastError: string | undefined;
  /** Client time (ms) it was dead-lettered. */
  readonly deadAtMs: number | undefined;
}

export interface ProcessOptions extends CallOptions {
  /** Handlers running at once (default 1, at most `limits.workQueue.concurrencyMax`). */
  readonly concurrency?: number;
  /** Extend each claim every third of the visibility timeout while its handler runs (default false). */
  readonly autoExtend?: boolean;
  /** Delay before a failed job is redelivered (default 0). */
  readonly retryDelaySeconds?: number;
  /** Called when an ack or nack fails (the item is then redelivered after the timeout). */
  readonly onError?: (err: unknown, job: Job) => void;
}

/** `process()`'s handler: return to ack the job, throw to nack it; `signal` fires when the claim may expire or processing stops. */
export type JobHandler = (job: Job, ctx: { readonly signal: AbortSignal }) => unknown;

/** `opts.attemptsMax` (or its deprecated name `maxAttempts`), else `dflt`, checked. */
function attemptsMaxOf(
  what: string,
  opts: { readonly attemptsMax?: number; readonly maxAttempts?: number },
  dflt: number,
): number {
  const n =
    renamedOption(
      what,
      { name: 'attemptsMax', value: opts.attemptsMax },
      { name: 'maxAttempts', value: opts.maxAttempts },
    ) ?? dflt;
  return checkInt(`${what}: attemptsMax`, n, 1, workQueueAttemptsLimitMax);
}

/**
 * An at-least-once work queue named `name` (a key prefix). Producers `add`; consumers `claim` and
 * settle jobs, or `process(handler, { concurrency })`. Consuming starts the shared background
 * duties (reaper and delay promoter) in this participant; `close()` stops them.
 */
export class WorkQueue implements AsyncDisposable {
  readonly session: Session;
  readonly name: string;
  readonly visibilityTimeoutSeconds: number;
  /** Deliveries before an item added without its own `attemptsMax` is dead-lettered. */
  readonly attemptsMax: number;

  readonly #keys: WorkQueueKeys;
  readonly #ctx: JobContext;
  readonly #closed = new AbortController();
  readonly #revokes = new Set<Promise<unknown>>();
  /** Keyless claim leases for reuse, most recently renewed last (bounded by `limits.workQueue.leasePoolMax`). */
  readonly #leasePool: ClaimLease[] = [];
  readonly #processes = new Set<Promise<void>>();
  #maintenance: WorkQueueMaintenance | undefined;
  #failure: unknown;
  #closing: Promise<void> | undefined;

  constructor(session: Session, name: string, opts: WorkQueueOptions = {}) {
    checkName('WorkQueue: name', name);
    const vis = checkInt(
      'WorkQueue: visibilityTimeoutSeconds',
      opts.visibilityTimeoutSeconds ?? workQueueVisibilityTimeoutSecondsDefault,
      1,
    );
    this.session = session;
    this.name = name;
    this.visibilityTimeoutSeconds = vis;
    this.attemptsMax = attemptsMaxOf('WorkQueue', opts, workQueueAttemptsMaxDefault);
    this.#keys = new WorkQueueKeys(name);
    this.#ctx = {
      kv: session.kv,
      keys: this.#keys,
      consumer: leaseHex(session.lease),
      release: (lease) => this.#release(lease),
    };
  }

  /** @deprecated Renamed `attemptsMax`; this name goes in the next release. */
  get maxAttempts(): number {
    return this.attemptsMax;
  }

  #check(signal: AbortSignal | undefined): void {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#closed.signal.aborted) throw this.#closed.signal.reason;
    signal?.throwIfAborted();
  }

  /** Adds an item; resolves with its id. */
  async add(value: Bytes, opts: AddOptions = {}): Promise<string> {
    const priority = checkInt('WorkQueue.add: priority', opts.priority ?? 0, 0, workQueuePriorityMax);
    const delaySeconds = checkDelay('WorkQueue.add', opts.delaySeconds);
    const m = attemptsMaxOf('WorkQueue.add', opts, this.attemptsMax);
    const body = toBytes(value);
    this.#check(opts.signal);
    const now = Date.now();
    const id = newItemId(now);
    const rec: StateRecord = { p: priority, a: 0, m, t: now };
    const key =
      delaySeconds > 0 ? this.#keys.delayed(now + delaySeconds * 1000, id) : this.#keys.ready(priority, id);
    const t = await this.session.kv.txn(
      {
        compare: [{ key: this.#keys.item(id), target: 'create', result: '=', value: 0 }],
        success: [
          { type: 'put', key: this.#keys.item(id), value: body },
          { type: 'put', key, value: encodeRecord(rec) },
        ],
        failure: [],
      },
      opts.signal ? { signal: opts.signal } : {},
    );
    if (!t.succeeded)
      throw new ConclaveError(ErrorCode.Conflict, `WorkQueue.add: item id ${id} collided; add again`);
    return id;
  }

  /** Counts of ready, in-flight, delayed and dead items, read at one revision. */
  async stats(opts: CallOptions = {}): Promise<WorkQueueStats> {
    this.#check(opts.signal);
    const k = this.#keys;
    const count = (prefix: string) =>
      ({ type: 'get', key: prefix, options: { end: prefixEnd(toBytes(prefix)), countOnly: true } }) as const;
    const t = await this.session.kv.txn(
      {
        compare: [],
        success: [count(k.readyPrefix), count(k.recPrefix), count(k.delayedPrefix), count(k.deadPrefix)],
        failure: [],
      },
      opts.signal ? { signal: opts.signal } : {},
    );
    const n = (i: number) => {
      const r = t.responses[i];
      return r?.type === 'get' ? r.count : 0;
    };
    return { revision: t.revision, ready: n(0), inFlight: n(1), delayed: n(2), dead: n(3) };
  }

  /**
   * Waits for an item and claims it. Rejects with the signal's reason, the session's `lost`
   * reason, `closed`, or a store error; `retries-exhausted` after `limits.workQueue.claimRoundsMax`
   * consecutive lost races.
   */
  async claim(opts: CallOptions = {}): Promise<Job> {
    const signal = this.#signal(opts.signal);
    // Terminates: each wait ends at a put under ready/ (or the signal); lost races are bounded.
    while (true) {
      const r = await this.#claimRounds(signal);
      if (r.job) return r.job;
      await waitReadyPut(this.session.kv, this.#keys.readyPrefix, r.revision + 1, signal);
    }
  }

  /** Claims an item if one is ready now; `undefined` when none is. */
  async tryClaim(opts: CallOptions = {}): Promise<Job | undefined> {
    return (await this.#claimRounds(this.#signal(opts.signal))).job;
  }

  #signal(user: AbortSignal | undefined): AbortSignal {
    this.#check(user);
    if (this.session.lost.aborted) throw this.session.lost.reason;
    this.#startMaintenance();
    const all = [this.#closed.signal, this.session.lost];
    return AbortSignal.any(user ? [user, ...all] : all);
  }

  #startMaintenance(): void {
    if (this.#maintenance) return;
    this.#maintenance = new WorkQueueMaintenance({
      kv: this.session.kv,
      keys: this.#keys,
      onFailure: (err) => {
        this.#failure = err;
        void this.close();
      },
    });
    this.#maintenance.start();
  }

  /**
   * Claim rounds until a job is won or the queue is seen empty (with the revision it was seen at).
   * `group`: the claimers of one `process` call (they skip the items their siblings are claiming).
   */
  async #claimRounds(signal: AbortSignal, group?: ClaimGroup): Promise<{ job?: Job; revision: number }> {
    for (let round = 1; ; round++) {
      const r = await this.#claimRound(signal, group);
      if (r.job || r.empty) return r;
      if (round >= workQueueClaimRoundsMax)
        throw new ConclaveError(
          ErrorCode.RetriesExhausted,
          `WorkQueue ${this.name}: lost the race for ready items ${round} rounds in a row; too many consumers for this queue — retry later`,
        );
    }
  }

  /**
   * Reads the first ready keys (priority, then FIFO) and, at the same time, takes a claim lease
   * (a pooled one, renewed, or a new grant), then tries the keys in order, one guarded txn each.
   * A lease no claim used goes back to the pool (it has no key); after a failed claim txn it is
   * revoked instead, once the undo settled, so a claim that did happen but could not be undone
   * returns at once through the reaper.
   *
   * In a `group`, the items a sibling claimer is trying right now are skipped (they are marked
   * before the first await after the read, so two siblings that read the same keys pick different
   * ones instead of racing each other), and the read asks for that many more keys. A read that
   * finds only siblings' items counts as empty: this claimer then waits for a new ready put, and
   * a sibling whose claim fails re-reads on its own.
   */
  async #claimRound(
    signal: AbortSignal,
    group?: ClaimGroup,
  ): Promise<{ job?: Job; empty: boolean; revision: number }> {
    const kv = this.session.kv;
    const span = WorkQueueKeys.span(this.#keys.readyPrefix);
    const busy = group?.claiming;
    const limit = workQueueClaimCandidatesMax + (busy?.size ?? 0);
    // Both are round trips; neither needs the other. A lease the read turns out not to need
    // returns to the pool, so an empty queue costs no grants once the pool has one.
    const leased = this.#takeLease(signal);
    // Handled below (awaited or given back), but perhaps only after it failed: mark it handled
    // now so a failure during the read is not reported as an unhandled rejection.
    leased.catch(() => undefined);
    const feed = group?.waiter;
    const read = async (from: ReadStart | undefined): Promise<RangeResult> => {
      const got = await kv.range(from?.key ?? span.key, { end: span.end, limit, signal });
      signal.throwIfAborted();
      if (from) feed?.observe(from, got.revision, got.kvs);
      return got;
    };
    const claimable = (got: RangeResult) => (busy ? got.kvs.filter((c) => !busy.has(idOf(c.key))) : got.kvs);
    let r: RangeResult;
    let cands: KeyValue[];
    try {
      const from = feed?.readFrom();
      r = await read(from);
      cands = claimable(r);
      // The cursor only skips keys known to be deleted; "empty" is always decided on a full read.
      if (cands.length === 0 && from?.key !== undefined) {
        r = await read(feed?.readFrom(true));
        cands = claimable(r);
      }
    } catch (err) {
      this.#giveBack(leased);
      throw err;
    }
    if (cands.length === 0) {
      this.#giveBack(leased);
      return { empty: true, revision: r.revision };
    }
    const lease = await leased;
    // What became of the lease: still keyless (back to the pool), owned by a job, or unknown.
    let fate: 'free' | 'job' | 'revoke' = 'free';
    let undo: Promise<unknown> | undefined;
    try {
      for (const cand of cands) {
        signal.throwIfAborted();
        const id = idOf(cand.key);
        // Re-checked after every await: a sibling may have taken this item up meanwhile.
        if (busy?.has(id)) continue;
        busy?.add(id);
        let job: Job | undefined | 'released' | 'used';
        try {
          job = await this.#tryCandidate(cand, lease, signal);
        } catch (err) {
          fate = 'revoke';
          undo = this.#undoClaim(cand, lease.id);
          throw err;
        } finally {
          busy?.delete(id);
        }
        if (job === 'released' || job === 'used') {
          fate = job === 'released' ? 'job' : 'revoke';
          break;
        }
        if (job) {
          fate = 'job';
          return { job, empty: false, revision: job.token };
        }
      }
      return { empty: false, revision: r.revision };
    } finally {
      if (fate === 'free') this.#release(lease);
      else if (fate === 'revoke') this.#revoke(lease.id, undo);
    }
  }

  /**
   * A claim txn that failed without an answer (lost reply, abort) may still have been applied:
   * the item would then sit claimed under a lease nobody uses, and the reaper would count the
   * claim as a delivery (dead-lettering an item on its last attempt that no handler ever saw).
   * While our lease key is still there, put the ready key back exactly as it was read; the round's
   * lease is revoked only after this settles. Not tied to the caller's signal, which may be the
   * reason we are here.
   */
  #undoClaim(cand: KeyValue, lease: LeaseId): Promise<unknown> {
    const id = idOf(cand.key);
    return this.session.kv
      .txn({
        compare: [{ key: this.#keys.lease(id), target: 'lease', result: '=', value: lease }],
        success: [
          { type: 'delete', key: this.#keys.rec(id) },
          { type: 'delete', key: this.#keys.lease(id) },
          { type: 'put', key: cand.key, value: cand.value },
        ],
        failure: [],
      })
      .catch(() => undefined);
  }

  /**
   * One claim txn. `undefined`: lost the race. `'released'`/`'used'`: the item had no body and
   * went to dead letters, giving the lease back (or not, if that failed: it may still hold a key).
   */
  async #tryCandidate(
    cand: KeyValue,
    lease: ClaimLease,
    signal: AbortSignal,
  ): Promise<Job | undefined | 'released' | 'used'> {
    const id = idOf(cand.key);
    const rec = decodeRecord(cand.key, cand.value);
    const claimed: StateRecord = { p: rec.p, a: rec.a + 1, m: rec.m, c: this.#ctx.consumer, t: Date.now() };
    if (rec.e !== undefined) Object.assign(claimed, { e: rec.e });
    const t = await this.session.kv.txn(
      {
        compare: [{ key: cand.key, target: 'mod', result: '=', value: cand.modRevision }],
        success: [
          { type: 'delete', key: cand.key },
          { type: 'put', key: this.#keys.rec(id), value: encodeRecord(claimed) },
          { type: 'put', key: this.#keys.lease(id), value: '', options: { lease: lease.id } },
          { type: 'get', key: this.#keys.item(id) },
        ],
        failure: [],
      },
      { signal },
    );
    if (!t.succeeded) return undefined;
    const body = t.responses[3]?.type === 'get' ? t.responses[3].kvs[0]?.value : undefined;
    const job = new Job(this.#ctx, id, body ?? new Uint8Array(0), claimed, t.revision, lease);
    if (body) return job;
    // The body was deleted behind the queue's back (our txns never leave a state key without
    // one): hand nobody an empty job; park it with the dead letters for an operator to see.
    // Settling the job released the round's lease to the pool: the round ends, the next takes one.
    const dead = await job.deadLetter({ error: `the body ${this.#keys.item(id)} is missing`, signal });
    return dead.isOk() ? 'released' : 'used';
  }

  /**
   * Runs `handler` for each claimed job, at most `concurrency` at once. It runs `concurrency`
   * workers, each claiming a job and then running it, so handlers plus claims in flight never
   * exceed `concurrency` and nothing is claimed ahead of a free slot; the workers' claims overlap
   * (one claim is three round trips, so a single claimer caps throughput however many handlers
   * may run). A handler that returns acks the job (unless it settled it itself); one that throws
   * nacks it with the error (after `retryDelaySeconds`). The handler's `signal` fires when the
   * job's claim may expire, or when processing stops.
   *
   * Stopping (the convention of every long-running recipe loop): a stop you asked for is not a
   * failure. When `signal` is aborted or the queue is closed, `process` resolves (undefined) once
   * the running handlers have finished. It rejects only on a failure that stopped it: the
   * session was lost (`session-lost`), the store kept failing (the last error), or the queue's
   * background maintenance failed.
   */
  async process(handler: JobHandler, opts: ProcessOptions = {}): Promise<void> {
    const concurrency = checkInt(
      'WorkQueue.process: concurrency',
      opts.concurrency ?? 1,
      1,
      workQueueConcurrencyMax,
    );
    checkDelay('WorkQueue.process retryDelaySeconds', opts.retryDelaySeconds);
    const stop = this.#signal(opts.signal);
    const run = this.#processLoop(handler, opts, concurrency, stop);
    const tracked = run.catch(() => undefined);
    this.#processes.add(tracked);
    try {
      return await run;
    } finally {
      this.#processes.delete(tracked);
    }
  }

  async #processLoop(
    handler: JobHandler,
    opts: ProcessOptions,
    concurrency: number,
    stop: AbortSignal,
  ): Promise<void> {
    // `halt` stops every worker when claims keep failing; `signal` is what they all run under.
    const halt = new AbortController();
    const signal = AbortSignal.any([stop, halt.signal]);
    // Every worker's calls listen on it (a read and a lease renewal at once, or a wait, and its
    // job's signal): past Node's default of 10 it would warn of a leak that is not one.
    setMaxListeners(4 * concurrency + 10, signal);
    const group: ClaimGroup = {
      claiming: new Set(),
      waiter: new ReadyWaiter(this.session.kv, this.#keys.readyPrefix, signal),
    };
    // Consecutive claim failures, counted once per back-off period: when the store is down every
    // worker fails at once, and that is one failure, not `concurrency` of them.
    let failures = 0;
    let epoch = 0;
    let pausedUntil = 0;
    let fatal: unknown;
    const worker = async (): Promise<void> => {
      while (!signal.aborted) {
        const pause = pausedUntil - performance.now();
        if (pause > 0) await wait(pause, signal);
        if (signal.aborted) return;
        const started = epoch;
        let job: Job;
        try {
          job = await this.#claimIn(group, signal);
          failures = 0;
        } catch (err) {
          if (signal.aborted) return;
          if (started === epoch) {
            epoch++;
            if (++failures >= workQueueProcessErrorsMax) {
              fatal = err;
              halt.abort(err);
              return;
            }
            pausedUntil = performance.now() + backoffMs(failures, workQueueBackoffMsMax);
          }
          continue;
        }
        if (signal.aborted) {
          // Stopped while claiming: give the job straight back rather than start it.
          await job.nack().catch(() => undefined);
          return;
        }
        await this.#runJob(job, handler, opts, signal);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    if (fatal !== undefined) throw fatal;
    if (this.#failure !== undefined) throw this.#failure;
    if (this.session.lost.aborted) throw this.session.lost.reason;
    // Stopped by the caller's signal or by close(): the normal end.
  }

  /** `claim()` for a worker of `process`: waits for new ready items on the group's shared watch. */
  async #claimIn(group: ClaimGroup, signal: AbortSignal): Promise<Job> {
    while (true) {
      const r = await this.#claimRounds(signal, group);
      if (r.job) return r.job;
      await group.waiter.wait(r.revision + 1, signal);
    }
  }

  async #runJob(job: Job, handler: JobHandler, opts: ProcessOptions, stop: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([job.lost, stop]);
    let extender: ReturnType<typeof setInterval> | undefined;
    if (opts.autoExtend) {
      extender = setInterval(
        () => void job.extend().catch(() => undefined),
        Math.max(100, (this.visibilityTimeoutSeconds * 1000) / 3),
      );
      extender.unref?.();
    }
    // The callback is the user's: a throw from it must neither be reported back to it nor reject
    // this job's run (it would end the worker, and with it `process`, on a user's bug).
    const report = (err: unknown) => {
      try {
        opts.onError?.(err, job);
      } catch {
        // Ignored: there is nobody left to tell.
      }
    };
    try {
      let failed: unknown;
      let threw = false;
      try {
        await handler(job, { signal });
      } catch (err) {
        threw = true;
        failed = err;
      }
      clearInterval(extender);
      if (job.settled) return;
      const r = threw
        ? await job.nack({
            error: failed instanceof Error ? failed.message : String(failed),
            ...(opts.retryDelaySeconds ? { delaySeconds: opts.retryDelaySeconds } : {}),
          })
        : await job.ack();
      if (r.isErr() && r.error.reason === 'expired')
        report(new ConclaveError(ErrorCode.SessionLost, r.error.message, { details: { id: job.id } }));
    } catch (err) {
      report(err);
    } finally {
      clearInterval(extender);
    }
  }

  /**
   * Dead letters, oldest id first, with their bodies (at most `limits.workQueue.deadLettersPageMax`).
   * `after`: an id to continue after.
   */
  async deadLetters(opts: { limit?: number; after?: string } & CallOptions = {}): Promise<DeadLetter[]> {
    const limit = Math.min(opts.limit ?? workQueueDeadLettersPageMax, workQueueDeadLettersPageMax);
    this.#check(opts.signal);
    const k = this.#keys;
    const span = WorkQueueKeys.span(k.deadPrefix);
    const from = opts.after !== undefined ? `${k.dead(opts.after)}\0` : span.key;
    const kv = this.session.kv;
    const r = await kv.range(from, { end: span.end, limit, ...(opts.signal ? { signal: opts.signal } : {}) });
    if (r.kvs.length === 0) return [];
    const ids = r.kvs.map((x) => idOf(x.key));
    const bodies = await kv.txn(
      { compare: [], success: ids.map((id) => ({ type: 'get', key: k.item(id) }) as const), failure: [] },
      opts.signal ? { signal: opts.signal } : {},
    );
    return r.kvs.map((x, i) => {
      const rec = decodeRecord(x.key, x.value);
      const b = bodies.responses[i];
      return {
        id: ids[i]!,
        value: b?.type === 'get' ? (b.kvs[0]?.value ?? new Uint8Array(0)) : new Uint8Array(0),
        priority: rec.p,
        attempts: rec.a,
        lastError: rec.e,
        deadAtMs: rec.t,
      };
    });
  }

  /** Moves a dead letter back to ready with its attempts reset. False if there is no such dead letter. */
  async requeueDead(id: string, opts: CallOptions = {}): Promise<boolean> {
    this.#check(opts.signal);
    const kv = this.session.kv;
    const o = opts.signal ? { signal: opts.signal } : {};
    const cur = await kv.get(this.#keys.dead(id), o);
    if (!cur) return false;
    const rec = decodeRecord(cur.key, cur.value);
    const next: StateRecord = { p: rec.p, a: 0, m: rec.m, ...(rec.e ? { e: rec.e } : {}), t: Date.now() };
    const t = await kv.txn(
      {
        compare: [{ key: cur.key, target: 'mod', result: '=', value: cur.modRevision }],
        success: [
          { type: 'delete', key: cur.key },
          { type: 'put', key: this.#keys.ready(rec.p, id), value: encodeRecord(next) },
        ],
        failure: [],
      },
      o,
    );
    return t.succeeded;
  }

  /** Deletes a dead letter and its body. False if there is no such dead letter. */
  async deleteDead(id: string, opts: CallOptions = {}): Promise<boolean> {
    this.#check(opts.signal);
    const t = await this.session.kv.txn(
      {
        compare: [{ key: this.#keys.dead(id), target: 'create', result: '>', value: 0 }],
        success: [
          { type: 'delete', key: this.#keys.dead(id) },
          { type: 'delete', key: this.#keys.item(id) },
        ],
        failure: [],
      },
      opts.signal ? { signal: opts.signal } : {},
    );
    return t.succeeded;
  }

  /**
   * A claim lease: the most recently renewed pooled one, renewed again now (a keep-alive: served
   * by the leader without a log entry, unlike a grant), or a new grant. Its `sentAt` is taken just
   * before the renewal or grant is sent, so the job's `lost` deadline derived from it is never
   * later than the server's. A pooled lease that may have expired by now is dropped (the server
   * ends it), as is one whose keep-alive says it is gone; a keep-alive that fails means a grant.
   */
  async #takeLease(signal: AbortSignal): Promise<ClaimLease> {
    const kv = this.session.kv;
    for (let l = this.#leasePool.pop(); l; l = this.#leasePool.pop()) {
      if (performance.now() >= l.sentAt + l.ttlSeconds * 1000 - leaseMarginMs(l.ttlSeconds)) continue;
      const sentAt = performance.now();
      let ka: { ttlSeconds: number };
      try {
        ka = await kv.lease.keepAliveOnce(l.id, { signal });
      } catch (err) {
        this.#revoke(l.id);
        if (signal.aborted) throw err;
        // A keep-alive fails at once while its stream reconnects (clients leave the retry to the
        // caller), where a grant is retried like any unary call: fall back to a grant.
        break;
      }
      if (ka.ttlSeconds > 0) return { id: l.id, ttlSeconds: ka.ttlSeconds, sentAt };
    }
    const sentAt = performance.now();
    const g = await kv.lease.grant(this.visibilityTimeoutSeconds, { signal });
    return { id: g.id, ttlSeconds: g.ttlSeconds, sentAt };
  }

  /** Releases the lease `leased` resolves with (a round that did not use it); ignores its failure. */
  #giveBack(leased: Promise<ClaimLease>): void {
    leased.then(
      (l) => this.#release(l),
      () => undefined,
    );
  }

  /** Pools a keyless claim lease for reuse; revokes it when the pool is full or the queue closed. */
  #release(lease: ClaimLease): void {
    if (this.#closed.signal.aborted || this.#leasePool.length >= workQueueLeasePoolMax)
      this.#revoke(lease.id);
    else this.#leasePool.push(lease);
  }

  /** Revokes `lease` in the background, after `after` settles (an undo that needs the lease). */
  #revoke(lease: LeaseId, after?: Promise<unknown>): void {
    if (this.#revokes.size >= workQueueRevokesPendingMax) return; // It expires on its own.
    const p = (after ?? Promise.resolve())
      .then(() => this.session.kv.lease.revoke(lease))
      .catch(() => undefined);
    this.#revokes.add(p);
    void p.finally(() => this.#revokes.delete(p));
  }

  /**
   * Stops claiming and the background duties, waits for running `process` handlers to settle
   * their jobs and for pending lease revocations. Claimed jobs that are not settled stay claimed
   * until their visibility timeout. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed.abort(new ConclaveError(ErrorCode.Closed, `work queue ${this.name} closed`));
      await Promise.allSettled([...this.#processes]);
      await this.#maintenance?.close();
      for (const l of this.#leasePool.splice(0)) this.#revoke(l.id);
      await Promise.allSettled([...this.#revokes]);
    })();
    return this.#closing;
  }

  /** `close()`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
