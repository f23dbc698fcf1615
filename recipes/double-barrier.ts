/**
 * DoubleBarrier (etcd experimental recipe layout): `count` participants `enter()` and are released
 * together once all have entered; `leave()` returns once all have left.
 *
 * Layout: `<name>/waiters/<lease hex>` per participant under its session's lease, and `<name>/ready`,
 * put by the participant that completes the group. More than `count` participants entering is a
 * `conflict` error for the extra one (its key is removed).
 */
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toBytes, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions } from '../src/types.js';
import { checkInt, checkName } from './internal/check.js';
import { putIfAbsent } from './internal/hold.js';
import { rejectOnAbort, waitDelete } from './internal/wait.js';

/**
 * A double barrier (etcd's Go `recipe.DoubleBarrier`): `enter()` waits until `count` sessions
 * have entered, `leave()` until all of them have left. Each participant's key is bound to its
 * session's lease, so a crashed participant leaves when its lease expires.
 */
export class DoubleBarrier {
  readonly session: Session;
  readonly name: string;
  readonly count: number;
  readonly #myKey: string;

  constructor(session: Session, name: string, count: number) {
    checkName('DoubleBarrier: name', name);
    checkInt('DoubleBarrier: count', count, 1);
    this.session = session;
    this.name = name;
    this.count = count;
    this.#myKey = `${name}/waiters/${leaseHex(session.lease)}`;
  }

  get #ready(): string {
    return `${this.name}/ready`;
  }

  /** Waits until `count` participants have entered. */
  async enter(opts: CallOptions = {}): Promise<void> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.session.lost]) : this.session.lost;
    const kv = this.session.kv;
    try {
      const { myRev } = await putIfAbsent(this.session, this.#myKey, '', signal);
      const r = await kv.range(`${this.name}/waiters/`, {
        prefix: true,
        sort: { target: 'create', order: 'ascend' },
        keysOnly: true,
        signal,
      });
      const position = r.kvs.findIndex((k) => k.createRevision === myRev);
      if (position >= this.count || position < 0) {
        throw new ConclaveError(
          ErrorCode.Conflict,
          `double barrier ${this.name}: more than ${this.count} participants entered`,
        );
      }
      if (r.count >= this.count) {
        await kv.put(this.#ready, '', { signal });
        return;
      }
      // Wait for the ready key to appear: a watch from "now" (one started in the past is served
      // by etcd's unsynced group, caught up every 100 ms), then a linearizable read once it is
      // registered, which covers everything before its registered revision.
      const w = kv.watch(this.#ready, { filters: ['nodelete'], signal });
      try {
        await w.ready;
        const now = await kv.get(this.#ready, { signal });
        if (now) return;
        for await (const b of w) if (b.events.length > 0) return;
        throw abortReason(signal);
      } finally {
        await w.close();
      }
    } catch (err) {
      await kv.delete(this.#myKey).catch(() => undefined);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw err;
    }
  }

  /** Waits until every participant has left; the last one out removes the ready key. */
  async leave(opts: CallOptions = {}): Promise<void> {
    const signal = opts.signal ?? new AbortController().signal;
    const kv = this.session.kv;
    while (true) {
      const r = await kv.range(`${this.name}/waiters/`, {
        prefix: true,
        sort: { target: 'create', order: 'ascend' },
        keysOnly: true,
        signal,
      });
      const mine = r.kvs.find((k) => toText(k.key) === this.#myKey);
      if (r.count === 0 || (r.count === 1 && mine)) {
        await kv.txn(
          {
            compare: [],
            success: [
              { type: 'delete', key: this.#myKey },
              { type: 'delete', key: this.#ready },
            ],
            failure: [],
          },
          { signal },
        );
        return;
      }
      const lowest = r.kvs[0]!;
      const highest = r.kvs[r.kvs.length - 1]!;
      const stop = rejectOnAbort(signal);
      try {
        if (mine && toText(lowest.key) === this.#myKey) {
          // The lowest leaves last: wait for the newest to go, then look again.
          await Promise.race([waitDelete(kv, highest.key, r.revision + 1, signal), stop.promise]);
        } else {
          if (mine) await kv.delete(this.#myKey, { signal });
          await Promise.race([
            waitDelete(kv, toBytes(toText(lowest.key)), r.revision + 1, signal),
            stop.promise,
          ]);
          return;
        }
      } finally {
        stop.off();
      }
    }
  }
}
