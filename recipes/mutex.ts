/**
 * Mutex: a distributed lock with etcd's Go `concurrency.Mutex` key layout and algorithm, so a
 * Conclave Mutex, `etcdctl lock` and Go clients exclude each other on one etcd.
 *
 * Layout: each contender puts `name + "/" + leaseHex(session.lease)` (empty value, under its
 * session's lease). The owner is the key with the lowest create revision; every waiter watches only
 * its immediate predecessor (the greatest create revision below its own), so a release wakes one
 * waiter (no herd). The owner's create revision is its fencing token: it grows with every new
 * owner of the same name.
 *
 * A lock is a lease: it lasts only as long as the session. `handle.lost` fires when the session is
 * lost (by default also while it is suspended; see `lostOnSuspend`) or when the key disappears.
 */
import { Err, Ok, type Result } from 'ts-results-es';
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions, LeaseId } from '../src/types.js';
import { deleteGeneration, type HeldKey, heldKey } from './internal/hold.js';
import { watchGeneration } from './internal/key-watch.js';
import { enqueue, type TurnSpec, waitTurn } from './internal/queue.js';

/** The current holder, returned by `tryLock()` when the lock is taken. */
export interface LockHeld {
  readonly key: string;
  readonly lease: LeaseId;
  readonly token: number;
}

/**
 * A held lock. `key`: `name/` + lease id in lowercase hex. `token`: the key's create revision, a
 * fencing token monotonic per name across owners. `lost`: fires when ownership is (or may be)
 * lost. `guard()`: a txn Compare that holds only while this handle owns the lock (for etcd-side
 * writes). `unlock()` (= `release()`): deletes this generation of the key; idempotent, retry it
 * after an RPC error.
 */
export interface LockHandle extends HeldKey {
  /** Deletes this generation of the key (= `release()`); idempotent, retry it after an RPC error. */
  unlock(opts?: CallOptions): Promise<void>;
}

/** Options of a `Mutex` (and of each member of a `MultiLock`). */
export interface MutexOptions {
  /** Fire `lost` when the session becomes suspended (keep-alives failing), not only when lost. Default true. */
  lostOnSuspend?: boolean;
}

/**
 * A distributed lock with etcd's Go `concurrency.Mutex` layout and algorithm (see the module
 * comment): a Conclave Mutex, `etcdctl lock` and Go clients exclude each other on one etcd.
 */
export class Mutex {
  readonly session: Session;
  readonly name: string;
  readonly #spec: TurnSpec;
  readonly #lostOnSuspend: boolean;

  constructor(session: Session, name: string, opts: MutexOptions = {}) {
    if (typeof name !== 'string' || name.length === 0)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'Mutex: name must be a non-empty string');
    this.session = session;
    this.name = name;
    const pfx = `${name}/`;
    this.#spec = { myKey: `${pfx}${leaseHex(session.lease)}`, blockers: pfx, what: `lock ${name}` };
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
  }

  /** This session's key for the lock. */
  get key(): string {
    return this.#spec.myKey;
  }

  /**
   * Tries once. `Ok(handle)` if we own the lock, `Err(LockHeld)` (and no key left behind) if
   * someone else does.
   */
  async tryLock(opts: CallOptions = {}): Promise<Result<LockHandle, LockHeld>> {
    this.#checkSession();
    const e = await enqueue(this.session, this.#spec, '', opts.signal, { first: true });
    const owner = e.first;
    if (!owner || owner.createRevision === e.myRev)
      return Ok(this.#handle(e.myRev, watchGeneration(this.session, this.#spec.myKey, e.myRev)));
    // Go's TryLock deletes the key unconditionally; we delete only the key this call created.
    if (e.created) await this.#deleteOwn(e.myRev);
    return Err({ key: toText(owner.key), lease: owner.lease, token: owner.createRevision });
  }

  /**
   * Waits until we own the lock (FIFO by create revision). Aborting, or a failure while waiting,
   * removes our key. Fails fast with `session-lost` if the session is lost (or our key vanishes)
   * while waiting.
   */
  async lock(opts: CallOptions = {}): Promise<LockHandle> {
    this.#checkSession();
    opts.signal?.throwIfAborted();
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.session.lost]) : this.session.lost;
    let myRev = 0;
    let created = true;
    try {
      const e = await enqueue(this.session, this.#spec, '', signal);
      myRev = e.myRev;
      created = e.created;
      // The watch of our own key is kept across this session's lock cycles (internal/key-watch.ts).
      const own = watchGeneration(this.session, this.#spec.myKey, myRev);
      const turn = await waitTurn(this.session.kv, this.#spec, myRev, signal, e.view, own);
      return this.#handle(myRev, turn.ownership);
    } catch (err) {
      // Leave no key behind: an aborted or failed acquire must not block the next owner. A key
      // that existed before this call (another lock() of the same session) is left to its owner.
      if (created) await this.#deleteOwn(myRev);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw err;
    }
  }

  #deleteOwn(myRev: number): Promise<void> {
    return deleteGeneration(this.session.kv, this.#spec.myKey, myRev);
  }

  #checkSession(): void {
    if (this.session.lost.aborted) throw this.session.lost.reason;
  }

  #handle(myRev: number, ownership: AbortController): LockHandle {
    const h = heldKey(
      this.session,
      this.#spec.myKey,
      myRev,
      ownership,
      { lostOnSuspend: this.#lostOnSuspend, what: `lock ${this.name}` },
      this.#spec.blockers,
    );
    return Object.assign(h, { unlock: h.release });
  }
}
