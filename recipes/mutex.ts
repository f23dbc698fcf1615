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
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions, LeaseId } from '../src/types.js';
import { checkName } from './internal/check.js';
import { type HeldKey, heldKey } from './internal/hold.js';
import { watchGeneration } from './internal/key-watch.js';
import { acquireTurn, type TurnSpec, tryTurn } from './internal/turn.js';

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
  /**
   * What a second `lock()`/`tryLock()` of this name by a session that holds or waits for it does:
   * `'conflict'` (default) fails it; `'share'` returns another handle on the same key, as etcd's
   * Go `Mutex` does (releasing either handle releases both). `'share'` exists for etcd
   * compatibility (an etcd-compatible server's Lock service); it is unsafe for async tasks that
   * share a session.
   */
  sameSession?: 'conflict' | 'share';
  /**
   * Handles hear revocation requests (`requestRevocation`) on `revocationRequested`; each held
   * handle then keeps one more watch, of its own key. Default false.
   */
  revocable?: boolean;
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
  readonly #again: 'conflict' | 'share';
  readonly #revocable: boolean;

  constructor(session: Session, name: string, opts: MutexOptions = {}) {
    checkName('Mutex: name', name);
    this.session = session;
    this.name = name;
    const pfx = `${name}/`;
    this.#spec = { myKey: `${pfx}${leaseHex(session.lease)}`, blockers: pfx, what: `lock ${name}` };
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
    this.#again = opts.sameSession ?? 'conflict';
    if (this.#again !== 'conflict' && this.#again !== 'share')
      throw new ConclaveError(ErrorCode.InvalidArgument, "Mutex: sameSession must be 'conflict' or 'share'");
    this.#revocable = opts.revocable ?? false;
  }

  /** This session's key for the lock. */
  get key(): string {
    return this.#spec.myKey;
  }

  /**
   * Tries once. `Ok(handle)` if we own the lock, `Err(LockHeld)` (and no key left behind) if
   * someone else does; `conflict` if this session already holds or waits for it.
   */
  async tryLock(opts: CallOptions = {}): Promise<Result<LockHandle, LockHeld>> {
    // Go's TryLock deletes the key unconditionally; we delete only the key this call created.
    const t = await tryTurn(this.session, this.#spec, opts.signal, this.#again);
    if (t.blocker)
      return Err({ key: toText(t.blocker.key), lease: t.blocker.lease, token: t.blocker.createRevision });
    return Ok(this.#handle(t.myRev, watchGeneration(this.session, this.#spec.myKey, t.myRev)));
  }

  /**
   * Waits until we own the lock (FIFO by create revision). Aborting, or a failure while waiting,
   * removes our key. Fails fast with `session-lost` if the session is lost (or our key vanishes)
   * while waiting. Not re-entrant: while this session holds or waits for the lock (through any
   * `Mutex` object of this name), a second `lock()` or `tryLock()` fails `conflict` — two async
   * tasks sharing a session must not both believe they hold it (see `sameSession`).
   */
  lock(opts: CallOptions = {}): Promise<LockHandle> {
    return acquireTurn(
      this.session,
      this.#spec,
      opts,
      // The watch of our own key is kept across this session's lock cycles (internal/key-watch.ts).
      { again: this.#again, ownKey: (myRev) => watchGeneration(this.session, this.#spec.myKey, myRev) },
      (myRev, ownership) => this.#handle(myRev, ownership),
    );
  }

  #handle(myRev: number, ownership: AbortController): LockHandle {
    const h = heldKey(
      this.session,
      this.#spec.myKey,
      myRev,
      ownership,
      { lostOnSuspend: this.#lostOnSuspend, what: `lock ${this.name}` },
      this.#spec.blockers,
      this.#revocable,
    );
    return Object.assign(h, { unlock: h.release });
  }
}
