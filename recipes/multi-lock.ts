/**
 * MultiLock: several Mutex names taken all-or-nothing as one lock (Apache Curator's
 * `InterProcessMultiLock`), deadlock-free between processes asking for overlapping sets in any
 * order.
 *
 * Each member is an ordinary `Mutex` of the same session (key `name/<lease hex>`, etcd's Go
 * `concurrency.Mutex` layout), so a plain `Mutex`, a Go client or `etcdctl lock` on one of the
 * names excludes the MultiLock and is excluded by it.
 *
 * Deadlock freedom: every MultiLock takes its members in one global order — the names' UTF-8 bytes,
 * as etcd orders keys — whatever order the caller listed them in. A holder of name X only ever
 * waits for names above X, so no cycle of waiters can form. (Mutex names nest as in Go: a waiter on
 * `a` is also queued behind keys under `a/b/`, and `a/b…` sorts above `a`, so the order argument
 * still holds.)
 *
 * All or nothing: if any member cannot be taken (the signal fires, the session is lost, a member
 * already taken is lost meanwhile, or a KV call fails), every member taken so far is released and
 * no key of this call is left behind.
 */
import { Err, Ok, type Result } from 'ts-results-es';
import { ConclaveError, ErrorCode, invalidArgument } from '../src/errors.js';
import { compareBytes, toBytes } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions, Compare } from '../src/types.js';
import { type LockHandle, type LockHeld, Mutex, type MutexOptions } from './mutex.js';

/** Most names one MultiLock takes: its `guard()` is a compare per name, and etcd's txn holds 128 ops. */
export const multiLockNamesMax = 64;

/** `tryLock()`'s negative answer: the first name (in lock order) someone else holds. */
export interface MultiLockHeld extends LockHeld {
  /** The member name that was taken. */
  readonly name: string;
}

/**
 * All member locks, held together. `tokens`: each member's fencing token (its key's create
 * revision). `lost` fires when ANY member is (or may be) lost — the session is lost or suspended,
 * or a member key was deleted — with that member's reason; the other members stay held until
 * `release()` (call it: `await using` does). `guard()`: one Compare per member, all of which hold
 * only while this handle owns every member (put them all in a txn's `compare`).
 */
export interface MultiLockHandle extends AsyncDisposable {
  /** The member names in lock order (UTF-8 byte order). */
  readonly names: readonly string[];
  /** Each member's fencing token (its key's create revision), by name. */
  readonly tokens: ReadonlyMap<string, number>;
  /** Each member's own handle (key, token, lost, guard), by name. */
  readonly members: ReadonlyMap<string, LockHandle>;
  /** Fires when any member lock is (or may be) lost, or on release. */
  readonly lost: AbortSignal;
  /** One compare per member: all hold only while this handle owns every member. */
  guard(): Compare[];
  /** Releases every member (concurrently). Idempotent; after an RPC error, call it again. */
  release(opts?: CallOptions): Promise<void>;
  /** `release()`. */
  unlock(opts?: CallOptions): Promise<void>;
}

/**
 * Several lock names taken all-or-nothing (Curator's Multi Shared Lock); see the module comment
 * for the order that keeps it deadlock-free.
 */
export class MultiLock {
  readonly session: Session;
  /** The distinct member names in lock order (UTF-8 byte order). */
  readonly names: readonly string[];
  readonly #mutexes: Mutex[];

  /**
   * `names`: the locks to take together (duplicates are taken once; order does not matter).
   * `opts` applies to every member (`lostOnSuspend`, default true).
   */
  constructor(session: Session, names: Iterable<string>, opts: MutexOptions = {}) {
    if (names === null || typeof names !== 'object' || !(Symbol.iterator in names))
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'MultiLock: names must be an array (or iterable) of lock names',
      );
    const distinct = [...new Set(names)];
    for (const n of distinct)
      if (typeof n !== 'string' || n.length === 0)
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          'MultiLock: every name must be a non-empty string',
        );
    if (distinct.length === 0) invalidArgument('names', 'a MultiLock needs at least one lock name');
    if (distinct.length > multiLockNamesMax)
      invalidArgument(
        'names',
        `at most ${multiLockNamesMax} names (multiLockNamesMax), got ${distinct.length}`,
      );
    this.session = session;
    this.names = distinct
      .map((n) => ({ n, b: toBytes(n) }))
      .sort((x, y) => compareBytes(x.b, y.b))
      .map((x) => x.n);
    this.#mutexes = this.names.map((n) => new Mutex(session, n, opts));
  }

  /**
   * Waits until every member is held (each FIFO among its own waiters), taking them in lock order.
   * Aborting, the session's loss, the loss of a member already taken, or any failure releases
   * what was taken and rejects (with the signal's reason, `session-lost`, or the member's loss
   * reason).
   */
  async lock(opts: CallOptions = {}): Promise<MultiLockHandle> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    opts.signal?.throwIfAborted();
    // Fires when a member already taken is lost while we wait for the next ones.
    const memberLost = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, memberLost.signal]) : memberLost.signal;
    const taken: LockHandle[] = [];
    const watchLoss = (h: LockHandle) => {
      const onLost = () => memberLost.abort(h.lost.reason);
      if (h.lost.aborted) onLost();
      else h.lost.addEventListener('abort', onLost, { once: true });
      return () => h.lost.removeEventListener('abort', onLost);
    };
    const unwatch: Array<() => void> = [];
    try {
      for (const m of this.#mutexes) {
        const h = await m.lock({ signal });
        taken.push(h);
        unwatch.push(watchLoss(h));
      }
      if (memberLost.signal.aborted) throw memberLost.signal.reason;
    } catch (err) {
      for (const u of unwatch) u();
      await releaseAll(taken);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw err;
    }
    for (const u of unwatch) u();
    return this.#handle(taken);
  }

  /**
   * Tries once, in lock order: `Ok(handle)` if every member was free, else `Err` naming the first
   * member held by someone else, with every member this call took released again.
   */
  async tryLock(opts: CallOptions = {}): Promise<Result<MultiLockHandle, MultiLockHeld>> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    const taken: LockHandle[] = [];
    try {
      for (const [i, m] of this.#mutexes.entries()) {
        const r = await m.tryLock(opts);
        if (r.isErr()) {
          await releaseAll(taken);
          return Err({ name: this.names[i]!, ...r.error });
        }
        taken.push(r.value);
      }
    } catch (err) {
      await releaseAll(taken);
      throw err;
    }
    return Ok(this.#handle(taken));
  }

  #handle(handles: LockHandle[]): MultiLockHandle {
    const lost = new AbortController();
    const onMember = (h: LockHandle) => () => {
      if (!lost.signal.aborted) lost.abort(h.lost.reason);
    };
    for (const h of handles) {
      if (h.lost.aborted) onMember(h)();
      else h.lost.addEventListener('abort', onMember(h), { once: true });
    }
    const members = new Map(this.names.map((n, i) => [n, handles[i]!] as const));
    const release = async (o: CallOptions = {}): Promise<void> => {
      const results = await Promise.allSettled(handles.map((h) => h.release(o)));
      const failed = results.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      if (!lost.signal.aborted)
        lost.abort(new ConclaveError(ErrorCode.Closed, `multi-lock ${this.names.join(', ')} released`));
    };
    return {
      names: this.names,
      tokens: new Map(this.names.map((n, i) => [n, handles[i]!.token] as const)),
      members,
      lost: lost.signal,
      guard: () => handles.map((h) => h.guard()),
      release,
      unlock: release,
      [Symbol.asyncDispose]: () => release().catch(() => undefined),
    };
  }
}

/**
 * Releases every handle, tolerating failures: a key whose delete failed is removed by the session's
 * lease at the latest, and a caller that failed to acquire has nothing to retry it with.
 */
async function releaseAll(handles: LockHandle[]): Promise<void> {
  await Promise.allSettled(handles.map((h) => h.release()));
}
