/**
 * RWMutex: readers share, writers exclude, FIFO by create revision (a waiting writer blocks later
 * readers, so writers do not starve).
 *
 * Layout: `<name>/read/<lease hex>` and `<name>/write/<lease hex>` under the session's lease. A
 * reader may hold when no writer key was created before its own; a writer when no key at all was.
 * Waiters watch one blocking key and re-check the whole queue after every wake-up, so a waiter whose
 * session expires can never make two writers believe they hold the lock (a known bug of etcd's
 * experimental recipe, which infers ownership from one delete event).
 */
import { Err, Ok, type Result } from 'ts-results-es';
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions } from '../src/types.js';
import { deleteGeneration, type HeldKey, heldKey } from './internal/hold.js';
import { enqueue, type TurnSpec, waitTurn, watchKeyLoss } from './internal/queue.js';

/** A held read or write lock: a {@link HeldKey} with `unlock()` (= `release()`). */
export type RWLockHandle = HeldKey & {
  /** Deletes this generation of the key (= `release()`); idempotent, retry it after an RPC error. */
  unlock(opts?: CallOptions): Promise<void>;
};

/** Who blocks a `tryRLock()`/`tryLock()` that did not get the lock. */
export interface RWLockHeld {
  /** The key blocking us (the earliest conflicting holder or waiter). */
  readonly key: string;
  /** The blocking key's create revision. */
  readonly token: number;
}

/**
 * A readers-writer lock: readers share, writers exclude, FIFO by create revision (see the module
 * comment). Each session holds at most one read and one write key per name.
 */
export class RWMutex {
  readonly session: Session;
  readonly name: string;
  readonly #lostOnSuspend: boolean;

  constructor(session: Session, name: string, opts: { lostOnSuspend?: boolean } = {}) {
    if (typeof name !== 'string' || name.length === 0)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'RWMutex: name must be a non-empty string');
    this.session = session;
    this.name = name;
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
  }

  #key(kind: 'read' | 'write'): string {
    return `${this.name}/${kind}/${leaseHex(this.session.lease)}`;
  }

  #blockers(kind: 'read' | 'write'): string {
    return kind === 'read' ? `${this.name}/write/` : `${this.name}/`;
  }

  /**
   * Waits for a read lock: until no writer key was created before ours. Aborting, or a failure while
   * waiting, removes our key.
   */
  rLock(opts: CallOptions = {}): Promise<RWLockHandle> {
    return this.#acquire('read', opts);
  }

  /**
   * Waits for the write lock: until no key at all was created before ours. Aborting, or a failure
   * while waiting, removes our key.
   */
  lock(opts: CallOptions = {}): Promise<RWLockHandle> {
    return this.#acquire('write', opts);
  }

  /** Tries once for a read lock: `Ok(handle)`, or `Err(blocker)` with no key left behind. */
  tryRLock(opts: CallOptions = {}): Promise<Result<RWLockHandle, RWLockHeld>> {
    return this.#try('read', opts);
  }

  /** Tries once for the write lock: `Ok(handle)`, or `Err(blocker)` with no key left behind. */
  tryLock(opts: CallOptions = {}): Promise<Result<RWLockHandle, RWLockHeld>> {
    return this.#try('write', opts);
  }

  #spec(kind: 'read' | 'write'): TurnSpec {
    return { myKey: this.#key(kind), blockers: this.#blockers(kind), what: `rwmutex ${this.name} (${kind})` };
  }

  async #acquire(kind: 'read' | 'write', opts: CallOptions): Promise<RWLockHandle> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    opts.signal?.throwIfAborted();
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.session.lost]) : this.session.lost;
    const spec = this.#spec(kind);
    let myRev = 0;
    let created = true;
    try {
      const e = await enqueue(this.session, spec, '', signal);
      myRev = e.myRev;
      created = e.created;
      const turn = await waitTurn(this.session.kv, spec, myRev, signal, e.view);
      return this.#handle(kind, spec.myKey, myRev, turn.ownership);
    } catch (err) {
      if (created) await deleteGeneration(this.session.kv, spec.myKey, myRev);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw err;
    }
  }

  async #try(kind: 'read' | 'write', opts: CallOptions): Promise<Result<RWLockHandle, RWLockHeld>> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    const spec = this.#spec(kind);
    const e = await enqueue(this.session, spec, '', opts.signal, { first: true });
    // The earliest conflicting key: we are blocked iff it was created before ours.
    const blocker = e.first && e.first.createRevision < e.myRev ? e.first : undefined;
    if (!blocker)
      return Ok(this.#handle(kind, spec.myKey, e.myRev, watchKeyLoss(this.session.kv, spec.myKey, e.myRev)));
    if (e.created) await deleteGeneration(this.session.kv, spec.myKey, e.myRev);
    return Err({ key: toText(blocker.key), token: blocker.createRevision });
  }

  #handle(kind: 'read' | 'write', key: string, myRev: number, ownership: AbortController): RWLockHandle {
    // A writer waiting on this client right behind us is handed the lock (internal/handoff.ts):
    // writers wait for every key under `name/`, so "first under name/" is exactly their turn.
    // Readers wait for writers only and are never handed over; they wake by the delete event.
    const h = heldKey(
      this.session,
      key,
      myRev,
      ownership,
      { lostOnSuspend: this.#lostOnSuspend, what: `rwmutex ${this.name} (${kind})` },
      this.#blockers('write'),
    );
    return Object.assign(h, { unlock: h.release });
  }
}
