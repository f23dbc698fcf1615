/**
 * A client of an in-process Raft cluster as the KV contract.
 *
 * Routing: writes and linearizable reads go to the current leader (bounded retries while there is
 * none); serializable reads and watches are served by a member's applied state. The client sees
 * its cluster only through `EmbeddedKVCluster` (which members lead or live, and the cluster's
 * clock and request timeout); the cluster's fault hooks are not part of it.
 */
import { randomBytes } from 'node:crypto';
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { limits } from '../../src/limits.js';
import type * as T from '../../src/types.js';
import { checkArgs } from '../../src/validate.js';
import { FailoverWatch, type WatchSource } from './failover-watch.js';
import type { CommandBody, RaftNode } from './node/node.js';
import { watchCloseSliceMax } from './store/watch-hub.js';

/** What an `EmbeddedKV` needs of its cluster (`EmbeddedCluster` implements it). */
export interface EmbeddedKVCluster extends WatchSource {
  /** Waits (bounded by `timeoutMs`, default the request timeout) for a leader; rejects `unavailable`. */
  waitLeader(signal?: AbortSignal, timeoutMs?: number): Promise<RaftNode>;
  /** How long a request may wait on the cluster (a proposal to apply, a leader, a revocation). */
  readonly requestTimeoutMs: number;
  /** The clock lease deadlines are kept on. */
  readonly now: () => number;
  /** Keeps the process alive until the returned release is called (an open watch takes one). */
  retain(): () => void;
}

/** Pause before a keep-alive refused "not primary" is retried on the leader (etcd's LeaseRenew sleeps 50 ms). */
const keepAliveRetryMs = 10;

/** `p`, or the signal's reason as soon as it aborts (the work behind `p` goes on). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

export class EmbeddedKV implements KV {
  readonly #c: EmbeddedKVCluster;
  #closed = false;
  /** Open watches, ended by `close()` (bounded by the store's `watchersMax`). */
  readonly #watches = new Set<FailoverWatch>();
  readonly lease: T.LeaseApi;

  constructor(c: EmbeddedKVCluster) {
    this.#c = c;
    this.lease = {
      grant: async (ttl, o = {}) => {
        this.#open(o);
        const asked = checkArgs.leaseGrant(ttl, o);
        const id = asked === 0n ? BigInt(`0x${randomBytes(6).toString('hex')}`) + 1n : asked;
        return this.#write({ op: 'grant', lease: id, ttlSeconds: ttl }, o.signal);
      },
      revoke: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        return this.#write({ op: 'revoke', lease: id }, o.signal);
      },
      keepAliveOnce: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        // Served by the lease primary without a log entry (etcd): it owns lease deadlines. An
        // expiring lease is never renewed: the primary answers 0 once its revocation applies.
        // "Not primary" (no leader yet, a new leader still applying earlier terms, leadership
        // moved during that wait) is retried on the leader until the request timeout, as etcd's
        // LeaseRenew forwards to the leader until its request timeout.
        const until = performance.now() + this.#c.requestTimeoutMs;
        for (;;) {
          const l = this.#c.leader() ?? (await this.#c.waitLeader(o.signal));
          try {
            return { id, ttlSeconds: await untilAborted(l.renewLease(id), o.signal) };
          } catch (err) {
            if (!ConclaveError.is(err, ErrorCode.Unavailable) || performance.now() >= until) throw err;
            o.signal?.throwIfAborted();
            await new Promise((r) => setTimeout(r, keepAliveRetryMs));
          }
        }
      },
      timeToLive: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const l = await this.#c.waitLeader(o.signal);
        await l.readIndex();
        const lease = l.store.leases.get(id);
        const keys =
          o.keys && lease ? [...lease.keys].map((k) => new Uint8Array(Buffer.from(k, 'latin1'))) : [];
        return {
          id,
          ttlSeconds: l.store.leases.remainingSeconds(id, this.#c.now()),
          grantedTtlSeconds: lease?.grantedTtlSeconds ?? 0,
          keys,
        };
      },
      list: async (o = {}) => {
        this.#open(o);
        const l = await this.#c.waitLeader(o.signal);
        await l.readIndex();
        return [...l.store.leases.byId.keys()];
      },
    };
  }

  #open(o: T.CallOptions | undefined): void {
    checkArgs.options(o);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the embedded client is closed');
    o?.signal?.throwIfAborted();
  }

  /** Proposes through the leader, retrying (bounded) only failures that certainly did not apply. */
  async #write<T>(cmd: CommandBody, signal?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      // The known leader without a turn of the event loop (waitLeader is async); else wait for one.
      const l = this.#c.leader() ?? (await this.#c.waitLeader(signal));
      try {
        const r = await l.propose<T>(cmd);
        signal?.throwIfAborted();
        return r;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= limits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, 10 * attempt));
      }
    }
  }

  async #readNode(o: { serializable?: boolean; signal?: AbortSignal }) {
    if (o.serializable) return this.#c.anyMember();
    for (let attempt = 1; ; attempt++) {
      const l = await this.#c.waitLeader(o.signal);
      try {
        await l.readIndex();
        return l;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= limits.retryAttemptsMax) throw err;
      }
    }
  }

  async get(key: T.Bytes, o: T.GetOptions = {}): Promise<T.KeyValue | undefined> {
    this.#open(o);
    checkArgs.get(key, o);
    const n = await this.#readNode(o);
    return n.store.range(key, o).kvs[0];
  }

  async range(key: T.Bytes, o: T.RangeOptions = {}): Promise<T.RangeResult> {
    this.#open(o);
    checkArgs.range(key, o);
    const n = await this.#readNode(o);
    return n.store.range(key, o);
  }

  async put(key: T.Bytes, value: T.Bytes, o: T.PutOptions = {}): Promise<T.PutResult> {
    this.#open(o);
    const { key: k, value: v } = checkArgs.put(key, value, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'put', key: k, value: v, opts }, o.signal);
  }

  async delete(key: T.Bytes, o: T.DeleteOptions = {}): Promise<T.DeleteResult> {
    this.#open(o);
    checkArgs.delete(key, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'delete', key: toBytes(key), opts }, o.signal);
  }

  async txn(t: T.Txn, o: T.CallOptions = {}): Promise<T.TxnResult> {
    this.#open(o);
    checkArgs.txn(t);
    return this.#write({ op: 'txn', txn: t }, o.signal);
  }

  watch(key: T.Bytes, o: T.WatchOptions = {}): T.Watch {
    this.#open(o);
    checkArgs.watch(key, o);
    const release = this.#c.retain();
    let w: FailoverWatch;
    try {
      w = new FailoverWatch(this.#c, key, o, (closed) => {
        this.#watches.delete(closed);
        release();
      });
    } catch (err) {
      release();
      throw err;
    }
    this.#watches.add(w);
    return w;
  }

  async compact(revision: number, o: T.CompactOptions = {}): Promise<void> {
    this.#open(o);
    checkArgs.compact(revision);
    await this.#write({ op: 'compact', revision }, o.signal);
  }

  async status(o: T.CallOptions = {}): Promise<T.StatusResult> {
    this.#open(o);
    const l = await this.#c.waitLeader(o.signal);
    return {
      revision: l.store.revision,
      version: 'conclave-raft',
      memberId: BigInt(l.id),
      leader: BigInt(l.id),
      raftTerm: l.raft.term,
      raftIndex: l.raft.log.lastIndex,
    };
  }

  /**
   * Closes the client: later calls fail `closed`, and its open watches end, `watchCloseSliceMax`
   * per turn of the event loop (a client with 100,000 watches does not hold the members' ticks).
   */
  async close(): Promise<void> {
    this.#closed = true;
    const ws = [...this.#watches];
    for (let i = 0; i < ws.length; i += watchCloseSliceMax) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      await Promise.all(ws.slice(i, i + watchCloseSliceMax).map((w) => w.close()));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
