/**
 * Election: leader election with etcd's Go `concurrency.Election` layout, so it queues with
 * `etcdctl elect` and Go clients on the same etcd. Candidates put `name + "/" + leaseHex(lease)`
 * with their value under their session's lease; the leader is the key with the lowest create
 * revision. Its create revision is the leadership's term (epoch) and fencing token.
 */
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Session } from '../src/session.js';
import type { Bytes, CallOptions, Compare, KeyValue } from '../src/types.js';
import { ownershipSignal, waitTurn } from './internal/queue.js';

export interface Leader {
  readonly key: string;
  readonly value: Uint8Array;
  /** The leader key's create revision: the term of this leadership, growing with each leader. */
  readonly token: number;
}

export interface Observation {
  /** undefined: there is no leader right now. */
  readonly leader: Leader | undefined;
  /** The store revision at which this was observed. */
  readonly revision: number;
}

export interface Leadership extends AsyncDisposable {
  readonly key: string;
  readonly token: number;
  readonly lost: AbortSignal;
  guard(): Compare;
  /** Updates the leader's value, only while still the leader. */
  proclaim(value: Bytes, opts?: CallOptions): Promise<void>;
  /** Gives up leadership (deletes the key). Idempotent; retry after an RPC error. */
  resign(opts?: CallOptions): Promise<void>;
}

const toLeader = (kv: KeyValue): Leader => ({
  key: toText(kv.key),
  value: kv.value,
  token: kv.createRevision,
});

export class Election {
  readonly session: Session;
  readonly name: string;
  readonly #pfx: string;
  readonly #myKey: string;
  readonly #lostOnSuspend: boolean;

  /** `lostOnSuspend` (default true): a leadership counts as lost as soon as the session is suspended. */
  constructor(session: Session, name: string, opts: { lostOnSuspend?: boolean } = {}) {
    if (typeof name !== 'string' || name.length === 0)
      throw new TypeError('Election: name must be a non-empty string');
    this.session = session;
    this.name = name;
    this.#pfx = `${name}/`;
    this.#myKey = `${this.#pfx}${leaseHex(session.lease)}`;
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
  }

  get #kv(): KV {
    return this.session.kv;
  }

  /** Waits until elected. A cancelled or failed campaign leaves no key behind. */
  async campaign(value: Bytes, opts: CallOptions = {}): Promise<Leadership> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    opts.signal?.throwIfAborted();
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.session.lost]) : this.session.lost;
    try {
      const t = await this.#kv.txn(
        {
          compare: [{ key: this.#myKey, target: 'create', result: '=', value: 0 }],
          success: [{ type: 'put', key: this.#myKey, value, options: { lease: this.session.lease } }],
          failure: [{ type: 'get', key: this.#myKey }],
        },
        { signal },
      );
      let myRev = t.revision;
      if (!t.succeeded) {
        const mine = t.responses[0]?.type === 'get' ? t.responses[0].kvs[0] : undefined;
        if (!mine)
          throw new ConclaveError(
            ErrorCode.Conflict,
            `election ${this.name}: our key vanished during campaign`,
          );
        myRev = mine.createRevision;
        await this.#kv.put(this.#myKey, value, { lease: this.session.lease, signal });
      }
      const revision = await this.#waitPredecessors(myRev, signal);
      return this.#leadership(myRev, revision);
    } catch (err) {
      await this.#kv.delete(this.#myKey).catch(() => undefined);
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw err;
    }
  }

  #waitPredecessors(myRev: number, signal: AbortSignal): Promise<number> {
    return waitTurn(
      this.#kv,
      { myKey: this.#myKey, myRev, blockers: this.#pfx, what: `election ${this.name}` },
      signal,
    );
  }

  #leadership(myRev: number, revision: number): Leadership {
    const kv = this.#kv;
    const key = this.#myKey;
    const lost = ownershipSignal(this.session, toBytes(key), myRev, revision + 1, {
      onSuspend: this.#lostOnSuspend,
      what: `election ${this.name}`,
    });
    const guard = (): Compare => ({ key, target: 'create', result: '=', value: myRev });
    let resigned: Promise<void> | undefined;
    const resign = (opts: CallOptions = {}): Promise<void> => {
      resigned ??= kv
        .txn({ compare: [guard()], success: [{ type: 'delete', key }], failure: [] }, opts)
        .then(() => {
          if (!lost.signal.aborted)
            lost.abort(new ConclaveError(ErrorCode.Closed, `election ${this.name}: resigned`));
        })
        .catch((err) => {
          resigned = undefined;
          throw err;
        });
      return resigned;
    };
    return {
      key,
      token: myRev,
      lost: lost.signal,
      guard,
      async proclaim(value: Bytes, opts: CallOptions = {}) {
        if (lost.signal.aborted)
          throw new ConclaveError(ErrorCode.SessionLost, 'proclaim: leadership was lost', {
            cause: lost.signal.reason,
          });
        const t = await kv.txn(
          {
            compare: [guard()],
            success: [{ type: 'put', key, value, options: { ignoreLease: true } }],
            failure: [],
          },
          opts,
        );
        if (!t.succeeded) throw new ConclaveError(ErrorCode.SessionLost, 'proclaim: no longer the leader');
      },
      resign,
      [Symbol.asyncDispose]: () => resign().catch(() => undefined),
    };
  }

  /** The current leader, or undefined when there is none. */
  async leader(opts: CallOptions = {}): Promise<Leader | undefined> {
    const r = await this.#kv.range(this.#pfx, {
      prefix: true,
      sort: { target: 'create', order: 'ascend' },
      limit: 1,
      signal: opts.signal,
    });
    return r.kvs[0] ? toLeader(r.kvs[0]) : undefined;
  }

  /**
   * Every change of leader (including "no leader") and of the leader's value, starting with the
   * current state. Survives compaction by re-reading (the re-read state is emitted if it differs).
   */
  async *observe(opts: CallOptions = {}): AsyncGenerator<Observation> {
    const kv = this.#kv;
    const signal = opts.signal;
    let last: string | undefined;
    const changed = (l: Leader | undefined): boolean => {
      const id = l ? `${l.token}:${toText(l.value)}` : 'none';
      if (id === last) return false;
      last = id;
      return true;
    };
    while (true) {
      signal?.throwIfAborted();
      // Candidates by key, with their create revision and value; the leader is the lowest create revision.
      const r = await kv.range(this.#pfx, { prefix: true, signal });
      const live = new Map<string, KeyValue>(r.kvs.map((k) => [toText(k.key), k]));
      const current = () =>
        [...live.values()].reduce<KeyValue | undefined>(
          (a, b) => (!a || b.createRevision < a.createRevision ? b : a),
          undefined,
        );
      const first = current();
      if (changed(first ? toLeader(first) : undefined))
        yield { leader: first ? toLeader(first) : undefined, revision: r.revision };
      try {
        const w = kv.watch(this.#pfx, {
          prefix: true,
          startRevision: r.revision + 1,
          ...(signal ? { signal } : {}),
        });
        for await (const batch of w) {
          for (const e of batch.events) {
            if (e.type === 'delete') live.delete(toText(e.kv.key));
            else live.set(toText(e.kv.key), e.kv);
          }
          const l = current();
          if (changed(l ? toLeader(l) : undefined))
            yield { leader: l ? toLeader(l) : undefined, revision: batch.revision };
        }
        if (signal?.aborted) throw abortReason(signal);
        return;
      } catch (err) {
        if (ConclaveError.is(err, ErrorCode.Compacted)) continue; // resync from the present
        throw err;
      }
    }
  }
}
