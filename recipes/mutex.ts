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
import { leaseHex, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Session } from '../src/session.js';
import type { CallOptions, Compare, LeaseId } from '../src/types.js';
import { ownershipSignal, waitTurn } from './internal/queue.js';

/** The current holder, returned by `tryLock()` when the lock is taken. */
export interface LockHeld {
  readonly key: string;
  readonly lease: LeaseId;
  readonly token: number;
}

export interface LockHandle extends AsyncDisposable {
  /** The lock key: `name/` + lease id in lowercase hex. */
  readonly key: string;
  /** Fencing token: the key's create revision, monotonic per name across owners. */
  readonly token: number;
  /** Fires when ownership is (or may be) lost. */
  readonly lost: AbortSignal;
  /** A txn Compare that holds only while this handle owns the lock (for etcd-side writes). */
  guard(): Compare;
  /** Deletes the key. Idempotent; retry it after an RPC error. */
  unlock(opts?: CallOptions): Promise<void>;
}

export interface MutexOptions {
  /** Fire `lost` when the session becomes suspended (keep-alives failing), not only when lost. Default true. */
  lostOnSuspend?: boolean;
}

export class Mutex {
  readonly session: Session;
  readonly name: string;
  readonly #pfx: string;
  readonly #myKey: string;
  readonly #lostOnSuspend: boolean;

  constructor(session: Session, name: string, opts: MutexOptions = {}) {
    if (typeof name !== 'string' || name.length === 0)
      throw new TypeError('Mutex: name must be a non-empty string');
    this.session = session;
    this.name = name;
    this.#pfx = `${name}/`;
    this.#myKey = `${this.#pfx}${leaseHex(session.lease)}`;
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
  }

  get #kv(): KV {
    return this.session.kv;
  }

  /** Puts our key if absent; returns our create revision and the current owner. */
  async #enqueue(
    signal?: AbortSignal,
  ): Promise<{ myRev: number; owner?: { key: string; lease: bigint; rev: number }; revision: number }> {
    const t = await this.#kv.txn(
      {
        compare: [{ key: this.#myKey, target: 'create', result: '=', value: 0 }],
        success: [
          { type: 'put', key: this.#myKey, value: '', options: { lease: this.session.lease } },
          {
            type: 'get',
            key: this.#pfx,
            options: { prefix: true, sort: { target: 'create', order: 'ascend' }, limit: 1 },
          },
        ],
        failure: [
          { type: 'get', key: this.#myKey },
          {
            type: 'get',
            key: this.#pfx,
            options: { prefix: true, sort: { target: 'create', order: 'ascend' }, limit: 1 },
          },
        ],
      },
      { signal },
    );
    let myRev = t.revision;
    if (!t.succeeded) {
      const mine = t.responses[0];
      // Re-entrant as in Go: the same session already has a key; keep its position.
      if (mine?.type === 'get' && mine.kvs[0]) myRev = mine.kvs[0].createRevision;
    }
    const ownerResp = t.responses[1];
    const o = ownerResp?.type === 'get' ? ownerResp.kvs[0] : undefined;
    const owner = o ? { key: toText(o.key), lease: o.lease, rev: o.createRevision } : undefined;
    return { myRev, revision: t.revision, ...(owner ? { owner } : {}) };
  }

  /**
   * Tries once. `Ok(handle)` if we own the lock, `Err(LockHeld)` (and no key left behind) if
   * someone else does.
   */
  async tryLock(opts: CallOptions = {}): Promise<Result<LockHandle, LockHeld>> {
    this.#checkSession();
    const { myRev, owner, revision } = await this.#enqueue(opts.signal);
    if (!owner || owner.rev === myRev) return Ok(this.#handle(myRev, revision));
    await this.#kv.delete(this.#myKey).catch(() => undefined);
    return Err({ key: owner.key, lease: owner.lease, token: owner.rev });
  }

  /**
   * Waits until we own the lock (FIFO by create revision). Aborting, or a failure while waiting,
   * removes our key. Fails fast with `session-lost` if the session is lost while waiting.
   */
  async lock(opts: CallOptions = {}): Promise<LockHandle> {
    this.#checkSession();
    opts.signal?.throwIfAborted();
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.session.lost]) : this.session.lost;
    let myRev = 0;
    try {
      const e = await this.#enqueue(signal);
      myRev = e.myRev;
      if (!e.owner || e.owner.rev === myRev) return this.#handle(myRev, e.revision);
      const revision = await this.#waitPredecessors(myRev, signal);
      return this.#handle(myRev, revision);
    } catch (err) {
      // Leave no key behind: an aborted or failed acquire must not block the next owner.
      await this.#kv.delete(this.#myKey).catch(() => undefined);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw err;
    }
  }

  #waitPredecessors(myRev: number, signal: AbortSignal): Promise<number> {
    return waitTurn(
      this.#kv,
      { myKey: this.#myKey, myRev, blockers: this.#pfx, what: `lock ${this.name}` },
      signal,
    );
  }

  #checkSession(): void {
    if (this.session.lost.aborted) throw this.session.lost.reason;
  }

  #handle(myRev: number, revision: number): LockHandle {
    const key = this.#myKey;
    const kv = this.#kv;
    const lost = ownershipSignal(this.session, toBytes(key), myRev, revision + 1, {
      onSuspend: this.#lostOnSuspend,
      what: `lock ${this.name}`,
    });
    let released: Promise<void> | undefined;
    const unlock = async (opts: CallOptions = {}): Promise<void> => {
      released ??= kv
        .delete(key, opts)
        .then(() => {
          if (!lost.signal.aborted)
            lost.abort(new ConclaveError(ErrorCode.Closed, `lock ${this.name} released`));
        })
        .catch((err) => {
          released = undefined; // let the caller retry
          throw err;
        });
      return released;
    };
    return {
      key,
      token: myRev,
      lost: lost.signal,
      guard: () => ({ key, target: 'create', result: '=', value: myRev }),
      unlock,
      [Symbol.asyncDispose]: () => unlock().catch(() => undefined),
    };
  }
}
