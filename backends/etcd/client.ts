/** EtcdKV: the KV contract over etcd's v3 gRPC API. */

import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { big, type Int64, int64, methods, num, pb } from '../../src/protocol/codec.js';
import type {
  Bytes,
  CallOptions,
  CompactOptions,
  DeleteOptions,
  DeleteResult,
  GetOptions,
  KeyValue,
  LeaseApi,
  LeaseGrant,
  LeaseGrantOptions,
  LeaseId,
  LeaseKeepAliveResult,
  LeaseTimeToLive,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  StatusResult,
  Txn,
  TxnResult,
  Watch,
  WatchOptions,
} from '../../src/types.js';
import { checkArgs } from '../../src/validate.js';
import { Connection, method } from './connection.js';
import {
  deleteRequest,
  deleteResult,
  type PbDeleteResponse,
  type PbHeader,
  type PbPutResponse,
  type PbRangeResponse,
  type PbTxnResponse,
  putRequest,
  putResult,
  rangeRequest,
  rangeResult,
  txnRequest,
  txnResult,
} from './convert.js';
import { KeepAliveStream } from './keepalive.js';
import type { EtcdConnectOptions } from './options.js';
import { EtcdWatch, WatchHub } from './watch.js';

const m = {
  range: method<PbRangeResponse>(methods.range, pb.RangeRequest, pb.RangeResponse),
  put: method<PbPutResponse>(methods.put, pb.PutRequest, pb.PutResponse),
  deleteRange: method<PbDeleteResponse>(methods.deleteRange, pb.DeleteRangeRequest, pb.DeleteRangeResponse),
  txn: method<PbTxnResponse>(methods.txn, pb.TxnRequest, pb.TxnResponse),
  compact: method<{ header?: PbHeader }>(methods.compact, pb.CompactionRequest, pb.CompactionResponse),
  leaseGrant: method<{ ID?: Int64; TTL?: Int64; error?: string; header?: PbHeader }>(
    methods.leaseGrant,
    pb.LeaseGrantRequest,
    pb.LeaseGrantResponse,
  ),
  leaseRevoke: method<{ header?: PbHeader }>(
    methods.leaseRevoke,
    pb.LeaseRevokeRequest,
    pb.LeaseRevokeResponse,
  ),
  leaseTimeToLive: method<{ ID?: Int64; TTL?: Int64; grantedTTL?: Int64; keys?: Uint8Array[] }>(
    methods.leaseTimeToLive,
    pb.LeaseTimeToLiveRequest,
    pb.LeaseTimeToLiveResponse,
  ),
  leaseLeases: method<{ leases?: Array<{ ID?: Int64 }> }>(
    methods.leaseLeases,
    pb.LeaseLeasesRequest,
    pb.LeaseLeasesResponse,
  ),
  status: method<{
    header?: PbHeader;
    version?: string;
    dbSize?: Int64;
    leader?: Int64;
    raftIndex?: Int64;
    raftTerm?: Int64;
  }>(methods.status, pb.StatusRequest, pb.StatusResponse),
};

function txnHasWrites(t: Txn): boolean {
  const ops = [...(t.success ?? []), ...(t.failure ?? [])];
  return ops.some(
    (o) => o.type === 'put' || o.type === 'delete' || (o.type === 'txn' && txnHasWrites(o.txn)),
  );
}

export class EtcdKV implements KV {
  readonly #conn: Connection;
  readonly #watches: WatchHub;
  readonly #keepAlive: KeepAliveStream;
  #closed = false;
  /**
   * Settles once the first token was fetched (with `auth`) and the leader's endpoint was looked
   * for. Rejects only when etcd refused the credentials (or the client was closed meanwhile).
   */
  readonly #ready: Promise<void>;
  readonly lease: LeaseApi;

  constructor(opts: EtcdConnectOptions) {
    this.#conn = new Connection(opts);
    this.#watches = new WatchHub(this.#conn, Connection.watchBounds(opts));
    this.#keepAlive = new KeepAliveStream(this.#conn);
    const lazy = Object.hasOwn(opts, 'lazy') && opts.lazy === true;
    const dialTimeoutMs = Connection.dialTimeoutMs(opts);
    this.#ready = lazy
      ? Promise.resolve()
      : this.#conn
          .dial(m.status, dialTimeoutMs)
          .then(() => this.#authenticate())
          .then(() =>
            this.#conn.preferLeader(async (i) => {
              const r = await this.#conn.unaryAt(m.status, {}, i, AbortSignal.timeout(1000));
              return { memberId: big(r.header?.memberId, true), leader: big(r.leader, true) };
            }),
          );
    this.#ready.catch(() => undefined);
    this.lease = {
      grant: (ttl, o) => this.#leaseGrant(ttl, o),
      revoke: (id, o) => this.#leaseRevoke(id, o),
      keepAliveOnce: (id, o) => this.#leaseKeepAliveOnce(id, o),
      timeToLive: (id, o) => this.#leaseTimeToLive(id, o),
      list: (o) => this.#leaseList(o),
    };
  }

  /**
   * Resolves once a member answered within dialTimeoutMs (unless `lazy`), the client holds a token
   * (with `auth`), and it has looked for the leader's endpoint (connectEtcd awaits it). Rejects, and
   * closes the client, when no member could be reached (`unavailable`), a TLS handshake failed
   * (`tls-failure`), or etcd refused the credentials (`unauthenticated`).
   */
  async ready(): Promise<void> {
    try {
      await this.#ready;
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /**
   * Fetches the first token. Refused credentials reject (connect fails `unauthenticated`); a
   * failure to reach etcd does not: the first call authenticates again, so connecting with `auth`
   * needs a reachable etcd no more than connecting without it.
   */
  async #authenticate(): Promise<void> {
    try {
      await this.#conn.refreshToken(undefined);
    } catch (err) {
      const refused =
        err instanceof ConclaveError &&
        (err.code === ErrorCode.Unauthenticated ||
          err.code === ErrorCode.PermissionDenied ||
          err.code === ErrorCode.InvalidArgument ||
          err.code === ErrorCode.TlsFailure ||
          err.code === ErrorCode.Closed);
      if (refused) throw err;
    }
  }

  get endpoints(): readonly string[] {
    return this.#conn.endpoints;
  }

  #open(opts: CallOptions | undefined): void {
    checkArgs.options(opts);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the etcd client is closed');
  }

  async get(key: Bytes, opts: GetOptions = {}): Promise<KeyValue | undefined> {
    this.#open(opts);
    checkArgs.get(key, opts);
    const r = await this.#conn.unary(
      m.range,
      rangeRequest(key, opts),
      { safe: true, what: 'get' },
      opts.signal,
    );
    const kv = r.kvs?.[0];
    return kv ? rangeResult({ kvs: [kv] }).kvs[0] : undefined;
  }

  async range(key: Bytes, opts: RangeOptions = {}): Promise<RangeResult> {
    this.#open(opts);
    checkArgs.range(key, opts);
    return rangeResult(
      await this.#conn.unary(m.range, rangeRequest(key, opts), { safe: true, what: 'range' }, opts.signal),
    );
  }

  async put(key: Bytes, value: Bytes, opts: PutOptions = {}): Promise<PutResult> {
    this.#open(opts);
    const { key: k } = checkArgs.put(key, value, opts);
    const r = await this.#conn.unary(
      m.put,
      putRequest(k, value, opts),
      { safe: false, what: 'put' },
      opts.signal,
    );
    return putResult(r, !!opts.prevKv);
  }

  async delete(key: Bytes, opts: DeleteOptions = {}): Promise<DeleteResult> {
    this.#open(opts);
    checkArgs.delete(key, opts);
    return deleteResult(
      await this.#conn.unary(
        m.deleteRange,
        deleteRequest(key, opts),
        { safe: false, what: 'delete' },
        opts.signal,
      ),
    );
  }

  async txn(t: Txn, opts: CallOptions = {}): Promise<TxnResult> {
    this.#open(opts);
    checkArgs.txn(t);
    const safe = !txnHasWrites(t);
    return txnResult(await this.#conn.unary(m.txn, txnRequest(t), { safe, what: 'txn' }, opts.signal), t);
  }

  watch(key: Bytes, opts: WatchOptions = {}): Watch {
    this.#open(opts);
    checkArgs.watch(key, opts);
    const w = new EtcdWatch(this.#watches, key, opts);
    this.#watches.add(w);
    return w;
  }

  async compact(revision: number, opts: CompactOptions = {}): Promise<void> {
    this.#open(opts);
    checkArgs.compact(revision);
    // Compaction is idempotent in effect (a repeat fails with `compacted`), so it is safe to retry.
    await this.#conn.unary(
      m.compact,
      { revision, physical: !!opts.physical },
      { safe: true, what: 'compact' },
      opts.signal,
    );
  }

  async status(opts: CallOptions = {}): Promise<StatusResult> {
    this.#open(opts);
    const r = await this.#conn.unary(m.status, {}, { safe: true, what: 'status' }, opts.signal);
    return {
      revision: num(r.header?.revision),
      version: r.version ?? '',
      memberId: big(r.header?.memberId, true),
      leader: big(r.leader, true),
      raftTerm: num(r.raftTerm),
      raftIndex: num(r.raftIndex),
      dbSizeBytes: num(r.dbSize),
    };
  }

  async #leaseGrant(ttlSeconds: number, opts: LeaseGrantOptions = {}): Promise<LeaseGrant> {
    this.#open(opts);
    const id = checkArgs.leaseGrant(ttlSeconds, opts);
    // A grant with a server-chosen id is not idempotent; with an explicit id a repeat fails cleanly.
    const r = await this.#conn.unary(
      m.leaseGrant,
      { TTL: ttlSeconds, ID: int64(id) },
      { safe: id !== 0n, what: 'lease grant' },
      opts.signal,
    );
    if (r.error) throw new ConclaveError(ErrorCode.Internal, `lease grant: ${r.error}`);
    return { id: big(r.ID), ttlSeconds: num(r.TTL) };
  }

  async #leaseRevoke(id: LeaseId, opts: CallOptions = {}): Promise<{ revision: number }> {
    this.#open(opts);
    checkArgs.leaseId(id);
    // Revoking twice is harmless (the second reports lease-not-found), so it is retried.
    const r = await this.#conn.unary(
      m.leaseRevoke,
      { ID: int64(id) },
      { safe: true, what: 'lease revoke' },
      opts.signal,
    );
    return { revision: num(r.header?.revision) };
  }

  async #leaseKeepAliveOnce(id: LeaseId, opts: CallOptions = {}): Promise<LeaseKeepAliveResult> {
    this.#open(opts);
    checkArgs.leaseId(id);
    return this.#keepAlive.keepAliveOnce(id, opts.signal);
  }

  async #leaseTimeToLive(id: LeaseId, opts: CallOptions & { keys?: boolean } = {}): Promise<LeaseTimeToLive> {
    this.#open(opts);
    checkArgs.leaseId(id);
    const r = await this.#conn.unary(
      m.leaseTimeToLive,
      { ID: int64(id), keys: !!opts.keys },
      { safe: true, what: 'lease timeToLive' },
      opts.signal,
    );
    return {
      id: big(r.ID),
      ttlSeconds: num(r.TTL),
      grantedTtlSeconds: num(r.grantedTTL),
      keys: (r.keys ?? []).map((k) => toBytes(k)),
    };
  }

  async #leaseList(opts: CallOptions = {}): Promise<LeaseId[]> {
    this.#open(opts);
    const r = await this.#conn.unary(m.leaseLeases, {}, { safe: true, what: 'lease list' }, opts.signal);
    return (r.leases ?? []).map((l) => big(l.ID));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watches.close();
    this.#keepAlive.close();
    this.#conn.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
