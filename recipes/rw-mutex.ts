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
import { leaseHex, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions } from '../src/types.js';
import { checkName } from './internal/check.js';
import { type HeldKey, heldKey } from './internal/hold.js';
import { acquireTurn, type TurnSpec, tryTurn, watchKeyLoss } from './internal/turn.js';

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

/** Options of an `RWMutex`. */
export interface RWMutexOptions {
  /** Fire a held lock's `lost` when the session becomes suspended, not only when lost. Default true. */
  readonly lostOnSuspend?: boolean;
  /** Held locks hear revocation requests (`requestRevocation`) on `revocationRequested`. Default false. */
  readonly revocable?: boolean;
}

/**
 * A readers-writer lock: readers share, writers exclude, FIFO by create revision (see the module
 * comment). Not re-entrant: while a session holds or waits for the read (or the write) lock of a
name, a second `rLock()` (or `lock()`) of it fails `conflict`.
 */
export class RWMutex {
  readonly session: Session;
  readonly name: string;
  readonly #lostOnSuspend: boolean;
  readonly #revocable: boolean;

  /**
   * `lostOnSuspend` (default true): `lost` fires as soon as the session is suspended.
   * `revocable` (default false): handles hear revocation requests (see `MutexOptions`).
   */
  constructor(session: Session, name: string, opts: RWMutexOptions = {}) {
    checkName('RWMutex: name', name);
    this.session = session;
    this.name = name;
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
    this.#revocable = opts.revocable ?? false;
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

  #acquire(kind: 'read' | 'write', opts: CallOptions): Promise<RWLockHandle> {
    const spec = this.#spec(kind);
    return acquireTurn(this.session, spec, opts, { again: 'conflict' }, (myRev, ownership) =>
      this.#handle(kind, spec.myKey, myRev, ownership),
    );
  }

  async #try(kind: 'read' | 'write', opts: CallOptions): Promise<Result<RWLockHandle, RWLockHeld>> {
    const spec = this.#spec(kind);
    // The earliest conflicting key: we are blocked iff it was created before ours.
    const t = await tryTurn(this.session, spec, opts.signal);
    if (t.blocker) return Err({ key: toText(t.blocker.key), token: t.blocker.createRevision });
    return Ok(this.#handle(kind, spec.myKey, t.myRev, watchKeyLoss(this.session.kv, spec.myKey, t.myRev)));
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
      this.#revocable,
    );
    return Object.assign(h, { unlock: h.release });
  }
}
