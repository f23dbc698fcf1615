/**
 * LocalKV: the KV contract served straight from one Store, with no replication. It exists so the
 * whole conformance suite can check the state machine's etcd semantics on its own; the Raft node
 * wraps the same Store behind consensus. Writes apply synchronously; lease expiry runs
 * on a timer against the monotonic clock.
 */
import { randomBytes } from 'node:crypto';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toBytes } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import type {
  Bytes,
  CallOptions,
  CompactOptions,
  DeleteOptions,
  DeleteResult,
  GetOptions,
  KeyValue,
  LeaseApi,
  LeaseId,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  StatusResult,
  Txn,
  TxnResult,
  Watch,
  WatchOptions,
} from '../../../src/types.js';
import { checkArgs } from '../../../src/validate.js';
import { encodeRequest, type RequestLimits, resolveRequestLimits } from '../limits.js';
import { Store } from './store.js';

export interface LocalKVOptions {
  minTtlSeconds?: number;
  /** Monotonic clock in ms (tests may inject a virtual one). */
  now?: () => number;
  /** How often expired leases are revoked (ms). */
  expiryCheckMs?: number;
  /** etcd's `--max-request-bytes` and `--max-txn-ops`, as a Raft member enforces them (default: etcd's). */
  limits?: Partial<RequestLimits>;
}

export class LocalKV implements KV {
  readonly store: Store;
  readonly lease: LeaseApi;
  readonly #now: () => number;
  readonly #timer: ReturnType<typeof setInterval>;
  readonly #limits: RequestLimits;
  #nextLease = BigInt(`0x${randomBytes(6).toString('hex')}`);
  #closed = false;

  constructor(opts: LocalKVOptions = {}) {
    this.#limits = resolveRequestLimits(opts.limits);
    this.store = new Store({ minTtlSeconds: opts.minTtlSeconds ?? 1 });
    this.#now = opts.now ?? (() => performance.now());
    this.#timer = setInterval(() => this.expireLeases(), opts.expiryCheckMs ?? 100);
    this.#timer.unref?.();
    this.lease = {
      grant: async (ttl, o = {}) => {
        this.#open(o);
        const asked = checkArgs.leaseGrant(ttl, o);
        const id = asked === 0n ? this.#nextLease++ : asked;
        return this.store.applyLeaseGrant(id, ttl, this.#now());
      },
      revoke: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        return this.store.applyLeaseRevoke(id);
      },
      keepAliveOnce: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const r = this.store.leases.renew(id, this.#now());
        if (r !== 'expiring') return { id, ttlSeconds: r };
        // Its deadline passed: never renewed (etcd's lessor waits for the revocation). This store
        // is its own expiry authority and revokes synchronously, so the wait is the revocation itself.
        this.expireLeases();
        return { id, ttlSeconds: 0 };
      },
      timeToLive: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const l = this.store.leases.get(id);
        const keys = o.keys && l ? [...l.keys].map((k) => new Uint8Array(Buffer.from(k, 'latin1'))) : [];
        return {
          id,
          ttlSeconds: this.store.leases.remainingSeconds(id, this.#now()),
          grantedTtlSeconds: l?.grantedTtlSeconds ?? 0,
          keys,
        };
      },
      list: async (o = {}) => {
        this.#open(o);
        return [...this.store.leases.byId.keys()];
      },
    };
  }

  /** Revokes every lease whose deadline passed (the leader does this through Raft in a cluster). */
  expireLeases(): void {
    for (const id of this.store.leases.startRevoking(this.#now())) this.store.applyLeaseRevoke(id);
  }

  #open(o: CallOptions | undefined): void {
    checkArgs.options(o);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the store client is closed');
    o?.signal?.throwIfAborted();
  }

  async get(key: Bytes, o: GetOptions = {}): Promise<KeyValue | undefined> {
    this.#open(o);
    checkArgs.get(key, o);
    return this.store.range(key, o).kvs[0];
  }

  async range(key: Bytes, o: RangeOptions = {}): Promise<RangeResult> {
    this.#open(o);
    checkArgs.range(key, o);
    return this.store.range(key, o);
  }

  async put(key: Bytes, value: Bytes, o: PutOptions = {}): Promise<PutResult> {
    this.#open(o);
    const { key: k, value: v } = checkArgs.put(key, value, o);
    // The member's check (it measures the command a member would log; nothing is written if refused).
    const { signal: _s, ...opts } = o;
    encodeRequest({ id: '', op: 'put', key: k, value: v, opts }, this.#limits);
    return this.store.applyPut(k, v, o);
  }

  async delete(key: Bytes, o: DeleteOptions = {}): Promise<DeleteResult> {
    this.#open(o);
    checkArgs.delete(key, o);
    const { signal: _s, ...opts } = o;
    encodeRequest({ id: '', op: 'delete', key: toBytes(key), opts }, this.#limits);
    return this.store.applyDelete(key, o);
  }

  async txn(t: Txn, o: CallOptions = {}): Promise<TxnResult> {
    this.#open(o);
    checkArgs.txn(t);
    encodeRequest({ id: '', op: 'txn', txn: t }, this.#limits);
    return this.store.applyTxn(t);
  }

  watch(key: Bytes, o: WatchOptions = {}): Watch {
    this.#open(o);
    checkArgs.watch(key, o);
    return this.store.hub.watch(key, o);
  }

  async compact(revision: number, o: CompactOptions = {}): Promise<void> {
    this.#open(o);
    checkArgs.compact(revision);
    this.store.applyCompact(revision);
  }

  async status(o: CallOptions = {}): Promise<StatusResult> {
    this.#open(o);
    return { revision: this.store.revision, version: 'conclave-local' };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export type { LeaseId };
