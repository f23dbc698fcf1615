/**
 * The client API of one `conclave serve` member: etcd 3.4's v3 gRPC services over any
 * `MemberBackend` (api.ts), served with @grpc/grpc-js.
 *
 * Served: KV (Range, Put, DeleteRange, Txn, Compact), Watch, Lease (Grant, Revoke, KeepAlive,
 * TimeToLive, Leases), Cluster.MemberList, Maintenance (Status, Alarm), grpc.health.v1.Health,
 * and etcd's v3lock and v3election services (v3lock.ts, v3election.ts).
 * Anything else is answered UNIMPLEMENTED by grpc-js. docs/server-api.md lists what is served,
 * what is not and why, and the error mapping. The port also serves HTTP/1.1 (listener.ts): the
 * JSON gateway (gateway.ts) calls the handlers registered here, so both speak with one voice.
 *
 * Every response header carries cluster_id, member_id, revision and raft_term, as etcd's do.
 * Requests are checked at this edge the way etcd's v3rpc layer checks them (key.go), so a bad
 * request is refused with etcd's text before it reaches the member; failures from the member are
 * mapped by errors.ts.
 *
 * Hot path (the CPU budget): handlers are registered directly (no interceptors, no service
 * wrapper), messages are encoded and decoded by protobufjs's generated code, header IDs are
 * precomputed, and a request over max-request-bytes is refused from its size without decoding.
 */
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { limits } from '../../../src/limits.js';
import { big, type Int64, num, root } from '../../../src/protocol/codec.js';
import { authRevisionOption } from '../node/commands.js';
import { authOldRevisionText } from '../node/node.js';
import type { MemberBackend } from './api.js';
import { AuthGate, asAuthPackageError, isFailure, isTxnReadOnly, registerAuth, txnRanges } from './auth.js';
import { registerCluster } from './cluster.js';
import { type ContextOptions, ServerContext } from './context.js';
import { etcdErrors, type GrpcFailure } from './errors.js';
import { startGateway } from './gateway.js';
import { acceptEtcdAuthority } from './h2-authority.js';
import { refuseOnLearner } from './learner.js';
import { KeepAliveStream, type PbKeepAliveRequest } from './lease.js';
import { type ClientListener, dispatchConnection, listenClients, toHttp2 } from './listener.js';
import { registerMaintenance } from './maintenance.js';
import type { ServerMetrics } from './metrics.js';
import type { ServiceKit, UnaryHandler } from './service-kit.js';
import { type ClientTlsOptions, listenClientsTls } from './tls.js';
import { registerElection } from './v3election.js';
import { registerLock } from './v3lock.js';
import { type PbWatchRequest, WatchStream, watchResponseSerializer } from './watch.js';
import {
  bytesOf,
  deleteBody,
  deleteOptions,
  type PbDeleteRangeRequest,
  type PbPutRequest,
  type PbRangeRequest,
  type PbRequestOp,
  type PbTxnRequest,
  putBody,
  putOptions,
  rangeBody,
  rangeOptions,
  txnBody,
  txnOf,
  wire64,
} from './wire.js';

export interface ClientServerOptions {
  /** TLS on this client URL (`https://`): certificates, client-cert auth, handshake timeout (tls.ts). */
  tls?: ClientTlsOptions;
  /** Loopback or any address to listen on (default 127.0.0.1). */
  host?: string;
  /** 0 picks a free port (see `ClientServer.port`). */
  port?: number;
  /** HTTP/2 streams one connection may have open at once (etcd: --max-concurrent-streams). */
  maxConcurrentStreams?: number;
  /** Unary calls being served at once before "etcdserver: too many requests". */
  pendingRequestsMax?: number;
  /** Watch and keep-alive streams open at once before "etcdserver: too many requests". */
  streamsMax?: number;
  /** Watches on one Watch stream. */
  watchesPerStreamMax?: number;
  /** Batches one served watch buffers while its stream is not writable, before a resync. */
  watchBufferBatchesMax?: number;
  /** Bytes of responses one Watch stream queues for HTTP/2 before its watches wait (about). */
  watchSendBytesMax?: number;
  /** Requests queued on one stream before it stops reading. */
  streamRequestsPendingMax?: number;
  /** etcd's --experimental-watch-progress-notify-interval (default 10 min; at least 100 ms). */
  progressNotifyIntervalMs?: number;
  /**
   * How often a leaderless member is noticed (etcd: one election timeout). After three checks in a
   * row without a leader, streams opened with `hasleader=true` end with "etcdserver: no leader".
   */
  leaderCheckIntervalMs?: number;
  /** etcd's --grpc-keepalive-interval (default 2 h) and --grpc-keepalive-timeout (default 20 s). */
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  /** HTTP/1.1 (JSON gateway) connections open at once on this port; more are closed at once. */
  gatewayConnectionsMax?: number;
  /** The member's metrics, served at GET /metrics and counted by the handlers (metrics.ts). */
  metrics?: ServerMetrics;
}

export interface ClientServer {
  readonly port: number;
  readonly server: grpc.Server;
  /** Streams open now (tests and diagnostics). */
  readonly openStreams: number;
  /** Watches resynced from history so far because their stream could not keep up. */
  readonly watchResyncs: number;
  /**
   * Stops accepting, ends open streams with "etcdserver: server stopped", lets unary calls in
   * flight finish (at most 5 s), then shuts down.
   */
  close(): Promise<void>;
}

/** Defaults of the bounds (every one has a name ending in Max in the options). */
export const clientServerDefaults = {
  maxConcurrentStreams: 1024,
  pendingRequestsMax: 10_000,
  streamsMax: 10_000,
  watchesPerStreamMax: limits.watchesPerStreamMax,
  watchBufferBatchesMax: 128,
  watchSendBytesMax: 4 * 1024 * 1024,
  streamRequestsPendingMax: 1024,
  progressNotifyIntervalMs: 10 * 60_000,
  leaderCheckIntervalMs: 1000,
  keepaliveIntervalMs: 2 * 3600_000,
  keepaliveTimeoutMs: 20_000,
} as const;

/** How long `close()` waits for calls in flight before cutting them. */
const closeGraceMs = 5000;

/** etcd: consecutive leader checks without a leader before hasleader streams are canceled. */
const noLeaderChecksMax = 3;

const TOO_LARGE = Object.freeze({ tooLarge: true });

type Handler = UnaryHandler;

function type(name: string): protobuf.Type {
  return root.lookupType(`etcdserverpb.${name}`);
}

function encoder(t: protobuf.Type): (m: object) => Buffer {
  return (m) => {
    const u = t.encode(m as Record<string, unknown>).finish();
    return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  };
}

/** A decoder; with `maxBytes`, a larger message is not decoded and becomes TOO_LARGE. */
function decoder(t: protobuf.Type, maxBytes?: number): (b: Buffer) => object {
  if (maxBytes === undefined) return (b) => t.decode(b);
  return (b) => (b.length > maxBytes ? TOO_LARGE : t.decode(b));
}

/** grpc.health.v1: HealthCheckRequest { string service = 1 }, HealthCheckResponse { ServingStatus status = 1 }. */
const health = protobuf.Root.fromJSON({
  nested: {
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: { fields: { service: { type: 'string', id: 1 } } },
                HealthCheckResponse: { fields: { status: { type: 'int32', id: 1 } } },
              },
            },
          },
        },
      },
    },
  },
});
const SERVING = 1;

function fail(cb: grpc.sendUnaryData<object>, f: GrpcFailure): void {
  cb({ code: f.code, details: f.details } as grpc.ServiceError);
}

/** Starts serving `backend` on `host:port`; resolves once bound. */
export async function startClientServer(
  backend: MemberBackend,
  opts: ClientServerOptions = {},
): Promise<ClientServer> {
  const d = clientServerDefaults;
  const o: ContextOptions = {
    maxRequestBytes: backend.limits.maxRequestBytes,
    maxTxnOps: backend.limits.maxTxnOps,
    pendingRequestsMax: opts.pendingRequestsMax ?? d.pendingRequestsMax,
    streamsMax: opts.streamsMax ?? d.streamsMax,
    watchesPerStreamMax: opts.watchesPerStreamMax ?? d.watchesPerStreamMax,
    watchBufferBatchesMax: opts.watchBufferBatchesMax ?? d.watchBufferBatchesMax,
    watchSendBytesMax: opts.watchSendBytesMax ?? d.watchSendBytesMax,
    streamRequestsPendingMax: opts.streamRequestsPendingMax ?? d.streamRequestsPendingMax,
  };
  const ctx = new ServerContext(backend, o);
  // Permission checks (auth.ts): one property read per call while auth is disabled.
  const gate = new AuthGate(backend.auth);
  ctx.authGate = gate;
  const { kv, info } = backend;
  const maxReq = o.maxRequestBytes;

  const server = new grpc.Server({
    // etcd: MaxRecvMsgSize = max-request-bytes + grpcOverheadBytes (512 KiB); larger messages are
    // refused by gRPC itself (RESOURCE_EXHAUSTED), smaller ones over the limit by us with etcd's text.
    'grpc.max_receive_message_length': maxReq + 512 * 1024,
    'grpc.max_send_message_length': 2 ** 31 - 1,
    'grpc.max_concurrent_streams': opts.maxConcurrentStreams ?? d.maxConcurrentStreams,
    'grpc.keepalive_time_ms': opts.keepaliveIntervalMs ?? d.keepaliveIntervalMs,
    'grpc.keepalive_timeout_ms': opts.keepaliveTimeoutMs ?? d.keepaliveTimeoutMs,
    // Per-call bookkeeping nobody reads here.
    'grpc.enable_channelz': 0,
  });

  const unary = (
    path: string,
    req: protobuf.Type,
    res: protobuf.Type,
    handler: Handler,
    checkSize = false,
  ): void => {
    server.register(
      path,
      handler as grpc.UntypedHandleCall,
      encoder(res),
      decoder(req, checkSize ? maxReq : undefined),
      'unary',
    );
  };

  /** Common entry checks of a unary call; returns false (after answering) when it must not run. */
  const admit = (call: grpc.ServerUnaryCall<unknown, object>, cb: grpc.sendUnaryData<object>): boolean => {
    if (call.request === TOO_LARGE) {
      fail(cb, etcdErrors.requestTooLarge);
      return false;
    }
    if (ctx.leaderMissing(call.metadata)) {
      fail(cb, etcdErrors.noLeader);
      return false;
    }
    if (ctx.inflight >= o.pendingRequestsMax) {
      fail(cb, etcdErrors.tooManyRequests);
      return false;
    }
    return true;
  };

  /**
   * Answers an admitted call from `work`, counted in `inflight` until it settles: the body
   * `toBody` makes of its result, or etcd's code and text for any failure, including one thrown
   * while converting the request. `toBody` functions are made once here, not per request.
   */
  const answer = async <R>(
    cb: grpc.sendUnaryData<object>,
    work: () => Promise<R>,
    toBody: (r: R) => object,
  ): Promise<void> => {
    ctx.inflight++;
    try {
      cb(null, toBody(await work()));
    } catch (err) {
      fail(cb, ctx.failure(err));
    } finally {
      ctx.inflight--;
    }
  };
  /** A KV body with the header at the revision its result names. */
  const withHeader =
    <R extends { revision: number }>(body: (r: R) => { header?: unknown }) =>
    (r: R): object => {
      const b = body(r);
      b.header = ctx.header(r.revision);
      return b;
    };
  const rangeAnswer = withHeader(rangeBody);
  const putAnswer = withHeader(putBody);
  const deleteAnswer = withHeader(deleteBody);
  const txnAnswer = withHeader(txnBody);
  const currentHeaderAnswer = (): object => ({ header: ctx.currentHeader() });
  const revokeAnswer = (r: { revision: number }): object => ({ header: ctx.header(r.revision) });
  const grantAnswer = (g: { id: bigint; ttlSeconds: number }): object => ({
    header: ctx.currentHeader(),
    ID: wire64(g.id),
    TTL: g.ttlSeconds,
  });
  const leasesAnswer = (ids: readonly bigint[]): object => ({
    header: ctx.currentHeader(),
    leases: ids.map((id) => ({ ID: wire64(id) })),
  });

  // ---- KV ------------------------------------------------------------------------------------

  /**
   * With auth enabled, `o` marked with the auth revision the caller was checked at (before the
   * check: the check reads the same or a newer store, and a change in between makes the write
   * refused at apply, never let through), so the member refuses the write at apply if an auth
   * change applied before it (etcd's apply-time ErrAuthOldRevision). Unchanged with auth disabled.
   */
  const checkedAt = <O extends object>(o: O, at: number | undefined): O =>
    at === undefined ? o : Object.assign(o, { [authRevisionOption]: at });
  const authOldRevision = () =>
    new ConclaveError(ErrorCode.Unauthenticated, authOldRevisionText, { retryable: false });

  const T = {
    RangeRequest: type('RangeRequest'),
    RangeResponse: type('RangeResponse'),
    PutRequest: type('PutRequest'),
    PutResponse: type('PutResponse'),
    DeleteRangeRequest: type('DeleteRangeRequest'),
    DeleteRangeResponse: type('DeleteRangeResponse'),
    TxnRequest: type('TxnRequest'),
    TxnResponse: type('TxnResponse'),
    CompactionRequest: type('CompactionRequest'),
    CompactionResponse: type('CompactionResponse'),
    WatchRequest: type('WatchRequest'),
    WatchResponse: type('WatchResponse'),
    LeaseGrantRequest: type('LeaseGrantRequest'),
    LeaseGrantResponse: type('LeaseGrantResponse'),
    LeaseRevokeRequest: type('LeaseRevokeRequest'),
    LeaseRevokeResponse: type('LeaseRevokeResponse'),
    LeaseKeepAliveRequest: type('LeaseKeepAliveRequest'),
    LeaseKeepAliveResponse: type('LeaseKeepAliveResponse'),
    LeaseTimeToLiveRequest: type('LeaseTimeToLiveRequest'),
    LeaseTimeToLiveResponse: type('LeaseTimeToLiveResponse'),
    LeaseLeasesRequest: type('LeaseLeasesRequest'),
    LeaseLeasesResponse: type('LeaseLeasesResponse'),
    MemberListRequest: type('MemberListRequest'),
    MemberListResponse: type('MemberListResponse'),
    AlarmRequest: type('AlarmRequest'),
    AlarmResponse: type('AlarmResponse'),
    StatusRequest: type('StatusRequest'),
    StatusResponse: type('StatusResponse'),
  };

  unary('/etcdserverpb.KV/Range', T.RangeRequest, T.RangeResponse, (async (
    call: grpc.ServerUnaryCall<PbRangeRequest, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    const r = call.request;
    const key = bytesOf(r.key);
    if (key.length === 0) return fail(cb, etcdErrors.emptyKey);
    if (gate.active(call)) {
      const ai = gate.info(call);
      if (isFailure(ai)) return fail(cb, ai);
      const denied = gate.checkInfo(ai, key, bytesOf(r.rangeEnd), false);
      if (denied) return fail(cb, denied);
      // etcd's doSerialize: an auth change that applied while the read waited voids the check.
      return answer(
        cb,
        async () => {
          const got = await kv.range(key, rangeOptions(r));
          if (gate.staleAfterRead(ai)) throw authOldRevision();
          return got;
        },
        rangeAnswer,
      );
    }
    return answer(cb, () => kv.range(key, rangeOptions(r)), rangeAnswer);
  }) as Handler);

  unary(
    '/etcdserverpb.KV/Put',
    T.PutRequest,
    T.PutResponse,
    (async (call: grpc.ServerUnaryCall<PbPutRequest, object>, cb: grpc.sendUnaryData<object>) => {
      if (!admit(call, cb)) return;
      const r = call.request;
      const key = bytesOf(r.key);
      if (key.length === 0) return fail(cb, etcdErrors.emptyKey);
      const value = bytesOf(r.value);
      if (r.ignoreValue && value.length > 0) return fail(cb, etcdErrors.valueProvided);
      const lease = big(r.lease);
      if (r.ignoreLease && lease !== 0n) return fail(cb, etcdErrors.leaseProvided);
      // The contract has no negative lease ids; etcd has none it would find either.
      if (lease < 0n) return fail(cb, etcdErrors.leaseNotFound);
      let at: number | undefined;
      if (gate.active(call)) {
        const ai = gate.info(call);
        if (isFailure(ai)) return fail(cb, ai);
        at = ai.rev;
        const denied = gate.checkAllInfo(ai, [
          [key, undefined, true],
          ...(r.prevKv ? ([[key, undefined, false]] as const) : []),
        ]);
        if (denied) return fail(cb, denied);
        // etcd 3.4 (apply_auth.go Put, checkLeasePuts): attaching a lease needs write permission
        // on every key the lease already holds (else the caller could not revoke what it joined).
        if (lease !== 0n && gate.on) {
          const held = await leaseKeys(lease);
          const refused = gate.checkAllInfo(
            ai,
            held.map((k) => [k, undefined, true] as const),
          );
          if (refused) return fail(cb, refused);
        }
      }
      return answer(cb, () => kv.put(key, value, checkedAt(putOptions(r), at)), putAnswer);
    }) as Handler,
    true,
  );

  unary(
    '/etcdserverpb.KV/DeleteRange',
    T.DeleteRangeRequest,
    T.DeleteRangeResponse,
    (async (call: grpc.ServerUnaryCall<PbDeleteRangeRequest, object>, cb: grpc.sendUnaryData<object>) => {
      if (!admit(call, cb)) return;
      const r = call.request;
      const key = bytesOf(r.key);
      if (key.length === 0) return fail(cb, etcdErrors.emptyKey);
      let at: number | undefined;
      if (gate.active(call)) {
        const ai = gate.info(call);
        if (isFailure(ai)) return fail(cb, ai);
        at = ai.rev;
        const end = bytesOf(r.rangeEnd);
        const denied = gate.checkAllInfo(ai, [
          [key, end, true],
          ...(r.prevKv ? ([[key, end, false]] as const) : []),
        ]);
        if (denied) return fail(cb, denied);
      }
      return answer(cb, () => kv.delete(key, checkedAt(deleteOptions(r), at)), deleteAnswer);
    }) as Handler,
    true,
  );

  unary(
    '/etcdserverpb.KV/Txn',
    T.TxnRequest,
    T.TxnResponse,
    (async (call: grpc.ServerUnaryCall<PbTxnRequest, object>, cb: grpc.sendUnaryData<object>) => {
      if (!admit(call, cb)) return;
      const r = call.request;
      const refused = checkTxnRequest(r, o.maxTxnOps);
      if (refused) return fail(cb, refused);
      if (gate.active(call)) {
        const ai = gate.info(call);
        if (isFailure(ai)) return fail(cb, ai);
        const denied = gate.checkAllInfo(ai, txnRanges(r));
        if (denied) return fail(cb, denied);
        // etcd serves a txn of reads only as a Range (doSerialize: checked again after the read).
        if (isTxnReadOnly(r))
          return answer(
            cb,
            async () => {
              const got = await kv.txn(txnOf(r), checkedAt({}, ai.rev));
              if (gate.staleAfterRead(ai)) throw authOldRevision();
              return got;
            },
            txnAnswer,
          );
        return answer(cb, () => kv.txn(txnOf(r), checkedAt({}, ai.rev)), txnAnswer);
      }
      return answer(cb, () => kv.txn(txnOf(r), {}), txnAnswer);
    }) as Handler,
    true,
  );

  unary('/etcdserverpb.KV/Compact', T.CompactionRequest, T.CompactionResponse, (async (
    call: grpc.ServerUnaryCall<{ revision?: Int64; physical?: boolean }, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    const bad = gate.badToken(call);
    if (bad) return fail(cb, bad);
    const rev = num(call.request.revision);
    // etcd (mvcc kvstore.compact): a revision at or below the compacted one is "compacted"; one
    // above the current revision is "future revision". etcd's compacted revision starts at -1, so
    // revision 0 on a store never compacted is accepted and changes nothing (no key has history
    // below revision 1): answered after a linearizable read, so that a compaction this member has
    // not applied yet is seen. (etcd then remembers a compaction at 0 and refuses a second one;
    // this store does not tell the two apart and accepts it again: docs/server-api.md.)
    if (rev < 0) return fail(cb, etcdErrors.compacted);
    if (rev === 0)
      return answer(
        cb,
        async () => {
          await kv.get(new Uint8Array([0])); // linearizable: this member has applied what was committed
          if ((backend.info.compactRevision?.() ?? 0) > 0)
            throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted');
        },
        currentHeaderAnswer,
      );
    return answer(
      cb,
      () => kv.compact(rev, call.request.physical ? { physical: true } : {}),
      currentHeaderAnswer,
    );
  }) as Handler);

  // ---- Auth (auth.ts) ------------------------------------------------------------------------

  registerAuth(server, ctx, gate, backend.auth, (err) => ctx.failure(err));

  // ---- Watch ---------------------------------------------------------------------------------

  const watchEncode = watchResponseSerializer(T.WatchResponse);
  const sizeOf = (m: object): number => T.WatchResponse.encode(m as Record<string, unknown>).len;
  server.register(
    '/etcdserverpb.Watch/Watch',
    ((call: grpc.ServerDuplexStream<PbWatchRequest, object>) => {
      if (!openStream(call)) return;
      ctx.streams.add(new WatchStream(ctx, call, sizeOf));
    }) as grpc.UntypedHandleCall,
    watchEncode,
    decoder(T.WatchRequest),
    'bidi',
  );

  /** Stream admission: hasleader with no leader, and the stream bound. */
  function openStream(call: grpc.ServerDuplexStream<unknown, object>): boolean {
    const f = ctx.leaderMissing(call.metadata)
      ? etcdErrors.noLeader
      : ctx.streams.size >= o.streamsMax
        ? etcdErrors.tooManyRequests
        : undefined;
    if (!f) return true;
    call.emit('error', { code: f.code, details: f.details });
    return false;
  }

  // ---- Lease ---------------------------------------------------------------------------------

  unary(
    '/etcdserverpb.Lease/LeaseGrant',
    T.LeaseGrantRequest,
    T.LeaseGrantResponse,
    (async (
      call: grpc.ServerUnaryCall<{ TTL?: Int64; ID?: Int64 }, object>,
      cb: grpc.sendUnaryData<object>,
    ) => {
      if (!admit(call, cb)) return;
      // etcd 3.4 checks no permission to grant a lease (any caller may, anonymous too), but a
      // token it does not know is refused, as for every request it proposes.
      const bad = gate.badToken(call);
      if (bad) return fail(cb, bad);
      const ttl = num(call.request.TTL);
      const id = big(call.request.ID);
      // etcd's lessor: MaxLeaseTTL is 9,000,000,000 s; a TTL below the minimum is raised to it.
      if (ttl > limits.leaseTtlSecondsMax) return fail(cb, etcdErrors.leaseTtlTooLarge);
      if (id < 0n)
        return fail(cb, {
          code: grpc.status.INVALID_ARGUMENT,
          details: 'etcdserver: lease ID must be positive (this server does not grant negative IDs)',
        });
      return answer(cb, () => kv.lease.grant(Math.max(1, ttl), id === 0n ? {} : { id }), grantAnswer);
    }) as Handler,
    true,
  );

  /** The keys attached to a lease now (none when it is unknown). */
  const leaseKeys = async (id: bigint): Promise<readonly Uint8Array[]> =>
    (await kv.lease.timeToLive(id, { keys: true }).catch(() => undefined))?.keys ?? [];

  unary('/etcdserverpb.Lease/LeaseRevoke', T.LeaseRevokeRequest, T.LeaseRevokeResponse, (async (
    call: grpc.ServerUnaryCall<{ ID?: Int64 }, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    const id = big(call.request.ID);
    // etcd: no lease has ID 0 (NoLease) or a negative one: "requested lease not found".
    if (id <= 0n) return fail(cb, etcdErrors.leaseNotFound);
    let at: number | undefined;
    if (gate.active(call)) {
      // etcd 3.4 (apply_auth.go LeaseRevoke): write permission on every key attached to the lease.
      const ai = gate.info(call);
      if (isFailure(ai)) return fail(cb, ai);
      at = ai.rev;
      if (gate.on) {
        const denied = gate.checkAllInfo(
          ai,
          (await leaseKeys(id)).map((k) => [k, undefined, true] as const),
        );
        if (denied) return fail(cb, denied);
      }
    }
    return answer(cb, () => kv.lease.revoke(id, checkedAt({}, at)), revokeAnswer);
  }) as Handler);

  unary('/etcdserverpb.Lease/LeaseTimeToLive', T.LeaseTimeToLiveRequest, T.LeaseTimeToLiveResponse, (async (
    call: grpc.ServerUnaryCall<{ ID?: Int64; keys?: boolean }, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    const id = big(call.request.ID);
    const wid = wire64(id);
    // etcd answers an unknown lease with TTL -1 (not an error); ID 0 is left out as etcd leaves it.
    if (id <= 0n)
      return cb(
        null,
        id === 0n
          ? { header: ctx.currentHeader(), TTL: -1 }
          : { header: ctx.currentHeader(), ID: wid, TTL: -1 },
      );
    ctx.inflight++;
    try {
      const t = await kv.lease.timeToLive(id, { keys: !!call.request.keys });
      const header = ctx.currentHeader();
      if (t.ttlSeconds < 0) cb(null, { header, ID: wid, TTL: -1 });
      else cb(null, { header, ID: wid, TTL: t.ttlSeconds, grantedTTL: t.grantedTtlSeconds, keys: t.keys });
    } catch (err) {
      if (ConclaveError.is(err, ErrorCode.LeaseNotFound))
        cb(null, { header: ctx.currentHeader(), ID: wid, TTL: -1 });
      else fail(cb, ctx.failure(err));
    } finally {
      ctx.inflight--;
    }
  }) as Handler);

  unary('/etcdserverpb.Lease/LeaseLeases', T.LeaseLeasesRequest, T.LeaseLeasesResponse, (async (
    call: grpc.ServerUnaryCall<object, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    return answer(cb, () => kv.lease.list(), leasesAnswer);
  }) as Handler);

  server.register(
    '/etcdserverpb.Lease/LeaseKeepAlive',
    ((call: grpc.ServerDuplexStream<PbKeepAliveRequest, object>) => {
      if (!openStream(call)) return;
      ctx.streams.add(new KeepAliveStream(ctx, call));
    }) as grpc.UntypedHandleCall,
    encoder(T.LeaseKeepAliveResponse),
    decoder(T.LeaseKeepAliveRequest),
    'bidi',
  );

  // ---- Cluster, Maintenance, Health ----------------------------------------------------------

  unary('/etcdserverpb.Cluster/MemberList', T.MemberListRequest, T.MemberListResponse, ((
    call: grpc.ServerUnaryCall<object, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    // etcd's ClusterServer header carries no revision.
    cb(null, {
      header: ctx.header(0),
      members: info.members().map((m) => ({
        ID: wire64(m.id, true),
        name: m.name,
        peerURLs: m.peerUrls,
        clientURLs: m.clientUrls,
        isLearner: m.isLearner,
      })),
    });
  }) as Handler);

  const alarmNames = { nospace: 1, corrupt: 2 } as const;
  const alarmTexts = { nospace: 'NOSPACE', corrupt: 'CORRUPT' } as const;

  unary('/etcdserverpb.Maintenance/Alarm', T.AlarmRequest, T.AlarmResponse, (async (
    call: grpc.ServerUnaryCall<{ action?: number; alarm?: number; memberID?: Int64 }, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    // etcd 3.4 proposes Alarm through Raft and returns the auth package's error as it is.
    const bad = gate.badToken(call);
    if (bad) return fail(cb, asAuthPackageError(bad));
    const action = call.request.action ?? 0;
    const want = call.request.alarm ?? 0;
    const pb = (list: readonly { memberId: bigint; alarm: 'nospace' | 'corrupt' }[]) =>
      list
        .filter((a) => want === 0 || alarmNames[a.alarm] === want)
        .map((a) => ({ memberID: wire64(a.memberId, true), alarm: alarmNames[a.alarm] }));
    const admin = backend.maintenance;
    // etcd's AlarmRequest: GET lists every member's alarms of the type (NONE: all);
    // ACTIVATE/DEACTIVATE change one member's alarm through Raft, answering with it (nothing
    // when a DEACTIVATE found none). The quota raises NOSPACE again on the next write if the
    // store is still past it, as etcd's does.
    if (action === 0)
      return answer(
        cb,
        async () => (admin ? admin.alarmList() : (info.alarms?.() ?? [])),
        (l) => ({
          header: ctx.currentHeader(),
          alarms: pb(l),
        }),
      );
    const kind =
      want === alarmNames.nospace ? 'nospace' : want === alarmNames.corrupt ? 'corrupt' : undefined;
    if ((action === 1 || action === 2) && (!admin || kind === undefined))
      return cb(null, { header: ctx.currentHeader(), alarms: [] });
    if (action === 1 && kind === 'corrupt')
      return fail(cb, {
        code: grpc.status.UNIMPLEMENTED,
        details:
          'etcdserver: activating CORRUPT is not supported by conclave serve (it has no corruption check to clear it)',
      });
    if (action === 1 || action === 2)
      return answer(
        cb,
        () => admin!.alarm(action === 1 ? 'activate' : 'deactivate', big(call.request.memberID, true), kind!),
        (a) => ({ header: ctx.currentHeader(), alarms: a ? pb([a]) : [] }),
      );
    fail(cb, { code: grpc.status.INVALID_ARGUMENT, details: `etcdserver: unknown alarm action ${action}` });
  }) as Handler);

  unary('/etcdserverpb.Maintenance/Status', T.StatusRequest, T.StatusResponse, ((
    call: grpc.ServerUnaryCall<object, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if (!admit(call, cb)) return;
    const leader = info.leaderId();
    const errors: string[] = [];
    if (leader === 0n) errors.push(etcdErrors.noLeader.details);
    for (const a of info.alarms?.() ?? [])
      errors.push(`memberID:${a.memberId} alarm:${alarmTexts[a.alarm]} `);
    const db = info.dbSizeBytes();
    const self = info.members().find((m) => m.id === info.memberId);
    cb(null, {
      header: ctx.currentHeader(),
      version: info.version,
      dbSize: db,
      leader: wire64(leader, true),
      raftIndex: info.raftIndex(),
      raftTerm: info.raftTerm(),
      raftAppliedIndex: info.raftAppliedIndex(),
      errors,
      dbSizeInUse: db,
      isLearner: !!self?.isLearner,
    });
  }) as Handler);

  const kit: ServiceKit = {
    server,
    ctx,
    backend,
    type,
    encoder,
    decoder: (t) => decoder(t),
    unary,
    admit,
    answer,
    fail,
  };
  registerCluster(kit);
  registerMaintenance(kit);

  const hReq = health.lookupType('grpc.health.v1.HealthCheckRequest');
  const hRes = health.lookupType('grpc.health.v1.HealthCheckResponse');
  // etcd registers only the empty service name as SERVING (grpc.go); others are NOT_FOUND.
  unary('/grpc.health.v1.Health/Check', hReq, hRes, ((
    call: grpc.ServerUnaryCall<{ service?: string }, object>,
    cb: grpc.sendUnaryData<object>,
  ) => {
    if ((call.request.service ?? '') !== '')
      return fail(cb, { code: grpc.status.NOT_FOUND, details: 'unknown service' });
    cb(null, { status: SERVING });
  }) as Handler);
  server.register(
    '/grpc.health.v1.Health/Watch',
    ((call: grpc.ServerWritableStream<{ service?: string }, object>) => {
      // Go's health server: an unknown service is reported SERVICE_UNKNOWN (3) and the stream stays open.
      call.write({ status: (call.request.service ?? '') === '' ? SERVING : 3 });
    }) as grpc.UntypedHandleCall,
    encoder(hRes),
    decoder(hReq),
    'serverStream',
  );

  // ---- etcd's server-side recipes: Lock (v3lock.ts) and Election (v3election.ts) -------------

  registerLock(server, ctx);
  registerElection(server, ctx);

  // ---- Timers: progress notifications and the leader monitor (one each for the whole server) --

  const progressMs = Math.max(100, opts.progressNotifyIntervalMs ?? d.progressNotifyIntervalMs);
  const progressTimer = setInterval(() => {
    for (const s of ctx.streams) if (s instanceof WatchStream) s.progressTick();
  }, progressMs);
  progressTimer.unref();
  let noLeaderChecks = 0;
  const leaderTimer = setInterval(() => {
    noLeaderChecks = info.leaderId() === 0n ? noLeaderChecks + 1 : 0;
    if (noLeaderChecks < noLeaderChecksMax) return;
    for (const s of [...ctx.streams]) if (s.requireLeader) s.fail(etcdErrors.noLeader);
  }, opts.leaderCheckIntervalMs ?? d.leaderCheckIntervalMs);
  leaderTimer.unref();

  // One port for gRPC and the JSON gateway (listener.ts): HTTP/2 connections are handed to
  // grpc-js, HTTP/1.x ones to the gateway's HTTP server.
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // On a learner, only what etcd 3.4 serves there (learner.ts); wrapped inside the metrics.
  refuseOnLearner(server, () => info.isLearner?.() === true);
  // Every method registered above (here and in the service files) counted by code, once.
  opts.metrics?.instrument(server);
  const gateway = startGateway(server, backend, {
    maxRequestBytes: maxReq,
    ...(opts.gatewayConnectionsMax !== undefined ? { connectionsMax: opts.gatewayConnectionsMax } : {}),
    ...(opts.metrics ? { metrics: opts.metrics } : {}),
  });
  const host = opts.host ?? '127.0.0.1';
  let listener: ClientListener;
  try {
    // acceptEtcdAuthority: Go clients' `:authority: http://host:port` (h2-authority.ts).
    const sinks = {
      http2: acceptEtcdAuthority(
        toHttp2((s) => injector.injectConnection(s)),
        (d) => injector.injectConnection(d),
      ),
      http1: gateway.connection,
    };
    // https:// client URLs: a TLS server in front (tls.ts), ALPN or the same sniffing after it.
    listener = opts.tls
      ? await listenClientsTls(host, opts.port ?? 0, sinks, dispatchConnection, opts.tls)
      : await listenClients(host, opts.port ?? 0, sinks);
  } catch (err) {
    clearInterval(progressTimer);
    clearInterval(leaderTimer);
    injector.destroy();
    await gateway.close();
    throw err;
  }
  const port = listener.port;

  sizeWindows(server);

  let closing: Promise<void> | undefined;
  return {
    port,
    server,
    get openStreams() {
      return ctx.streams.size;
    },
    get watchResyncs() {
      return ctx.watchResyncs;
    },
    close() {
      closing ??= (async () => {
        await listener.close();
        await gateway.close();
        clearInterval(progressTimer);
        clearInterval(leaderTimer);
        for (const s of [...ctx.streams]) s.fail(etcdErrors.stopped);
        // Calls in flight finish (the member answers or fails them); a call still open after the
        // grace period is cut, so a stuck request cannot hold the process up.
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, closeGraceMs);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
      })();
      return closing;
    },
  };
}

/** HTTP/2 receive windows of a client connection: per stream and for the whole connection. */
export const http2StreamWindowBytes = 1024 * 1024;
export const http2ConnectionWindowBytes = 16 * 1024 * 1024;

/**
 * Node's HTTP/2 default windows are 64 KiB per stream and per connection, and grpc-js offers no
 * server option for them: 128 puts of 1 KiB in flight on one connection would wait for window
 * updates. Every session of this server gets larger ones (grpc-go, which etcd uses, grows its
 * windows by bandwidth-delay estimation up to 16 MiB). grpc-js keeps its HTTP/2 servers in a
 * private map; if that ever changes, the defaults stay and nothing else does.
 */
function sizeWindows(server: grpc.Server): void {
  const h2 = (server as unknown as { http2Servers?: Map<unknown, unknown> }).http2Servers;
  if (!(h2 instanceof Map)) return;
  for (const s of h2.keys()) {
    (s as import('node:http2').Http2Server).on('session', (session) => {
      try {
        session.settings({ initialWindowSize: http2StreamWindowBytes });
        session.setLocalWindowSize(http2ConnectionWindowBytes);
      } catch {
        // A session closing as it opens: nothing to size.
      }
    });
  }
}

/**
 * etcd's checkTxnRequest (v3rpc/key.go): at most `maxTxnOps` compares and ops per branch (a nested
 * txn gets what its parent leaves), no empty key, no empty RequestOp ("key not found"); then
 * checkIntervals: no key put twice, or put and deleted, in one branch (nested branches included).
 */
export function checkTxnRequest(r: PbTxnRequest, maxTxnOps: number): GrpcFailure | undefined {
  const f = checkOps(r, maxTxnOps);
  if (f) return f;
  if (duplicateWrites(r.success ?? []) || duplicateWrites(r.failure ?? [])) return etcdErrors.duplicateKey;
  return undefined;
}

function checkOps(r: PbTxnRequest, maxTxnOps: number): GrpcFailure | undefined {
  const compare = r.compare ?? [];
  const success = r.success ?? [];
  const failure = r.failure ?? [];
  const opc = Math.max(compare.length, success.length, failure.length);
  if (opc > maxTxnOps) return etcdErrors.tooManyOps;
  for (const c of compare) if (bytesOf(c.key).length === 0) return etcdErrors.emptyKey;
  for (const list of [success, failure]) {
    for (const op of list) {
      const f = checkOp(op, maxTxnOps - opc);
      if (f) return f;
    }
  }
  return undefined;
}

function checkOp(op: PbRequestOp, maxTxnOps: number): GrpcFailure | undefined {
  if (op.requestRange) return bytesOf(op.requestRange.key).length === 0 ? etcdErrors.emptyKey : undefined;
  if (op.requestPut) {
    const p = op.requestPut;
    if (bytesOf(p.key).length === 0) return etcdErrors.emptyKey;
    if (p.ignoreValue && bytesOf(p.value).length > 0) return etcdErrors.valueProvided;
    if (p.ignoreLease && big(p.lease) !== 0n) return etcdErrors.leaseProvided;
    return undefined;
  }
  if (op.requestDeleteRange)
    return bytesOf(op.requestDeleteRange.key).length === 0 ? etcdErrors.emptyKey : undefined;
  if (op.requestTxn) return checkOps(op.requestTxn, maxTxnOps);
  return etcdErrors.keyNotFound;
}

interface Interval {
  start: string;
  end: string;
  point: boolean;
}

const latin1 = (b: Uint8Array): string =>
  Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');

function hits(dels: readonly Interval[], k: string): boolean {
  for (const d of dels) {
    if (d.point ? k === d.start : k >= d.start && k < d.end) return true;
  }
  return false;
}

/**
 * etcd's checkIntervals for one branch: returns true when a key is written twice. Puts of a
 * nested txn's success and failure branches may repeat each other (only one runs), but not a key
 * written elsewhere in the enclosing branch.
 */
function duplicateWrites(reqs: readonly PbRequestOp[]): boolean {
  return collect(reqs) === undefined;
}

function collect(reqs: readonly PbRequestOp[]): { puts: Set<string>; dels: Interval[] } | undefined {
  const dels: Interval[] = [];
  for (const r of reqs) {
    const d = r.requestDeleteRange;
    if (!d) continue;
    const end = bytesOf(d.rangeEnd);
    const start = latin1(bytesOf(d.key));
    // etcd builds the interval from the raw range end, so an end of "\0" (every key from `start`)
    // makes an interval no put falls in: kept as is, to refuse exactly what etcd refuses.
    if (end.length === 0) dels.push({ start, end: '', point: true });
    else dels.push({ start, end: latin1(end), point: false });
  }
  const puts = new Set<string>();
  for (const r of reqs) {
    const t = r.requestTxn;
    if (!t) continue;
    const then = collect(t.success ?? []);
    const els = collect(t.failure ?? []);
    if (!then || !els) return undefined;
    for (const k of then.puts) {
      if (puts.has(k) || hits(dels, k)) return undefined;
      puts.add(k);
    }
    for (const k of els.puts) {
      if (puts.has(k) && !then.puts.has(k)) return undefined;
      if (hits(dels, k)) return undefined;
      puts.add(k);
    }
    dels.push(...then.dels, ...els.dels);
  }
  for (const r of reqs) {
    const p = r.requestPut;
    if (!p) continue;
    const k = latin1(bytesOf(p.key));
    if (puts.has(k) || hits(dels, k)) return undefined;
    puts.add(k);
  }
  return { puts, dels };
}
