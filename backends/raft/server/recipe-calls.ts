/**
 * What the server-side recipe services (v3lock.ts, v3election.ts) share: registering a unary
 * method with its own message types, the per-call admission etcd's interceptors do, a signal that
 * fires when the client cancels, and the session a request's lease stands for.
 *
 * etcd serves these services by running its Go client's concurrency recipes against itself
 * (`etcdserver/api/v3lock`, `v3election`: `concurrency.NewSession(c, WithLease(req.Lease))`,
 * then `Orphan()`); here Conclave's own recipes run against the member's KV, in this process.
 */
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { root } from '../../../src/protocol/codec.js';
import { Session } from '../../../src/session.js';
import type { ServerContext } from './context.js';
import { etcdErrors, type GrpcFailure } from './errors.js';

export function pbType(name: string): protobuf.Type {
  return root.lookupType(`etcdserverpb.${name}`);
}

export function encoderOf(t: protobuf.Type): (m: object) => Buffer {
  return (m) => {
    const u = t.encode(m as Record<string, unknown>).finish();
    return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  };
}

/** etcd's TTL for a session it grants itself when a request names no lease (concurrency's default). */
export const defaultSessionTtlSeconds = 60;

/** A plain Go error returned by an etcd handler: grpc-go answers it with code Unknown and its text. */
export function goError(text: string): GrpcFailure {
  return { code: grpc.status.UNKNOWN, details: text };
}

export type Body<Req> = (req: Req, signal: AbortSignal) => Promise<object>;

/**
 * Registers `path` (e.g. `/v3lockpb.Lock/Lock`) as a unary method answered by `body`. The call is
 * admitted as the KV calls are (hasleader with no leader, `pendingRequestsMax`), counted in
 * flight until it settles, and `signal` fires when the client cancels or the deadline passes (the
 * body must then stop waiting and leave nothing behind). A `GrpcFailure` thrown by the body is
 * answered as is; anything else is mapped like the KV calls' failures.
 */
export function registerUnary<Req>(
  server: grpc.Server,
  ctx: ServerContext,
  path: string,
  req: protobuf.Type,
  res: protobuf.Type,
  body: Body<Req>,
): void {
  server.register(
    path,
    (async (call: grpc.ServerUnaryCall<Req, object>, cb: grpc.sendUnaryData<object>) => {
      const refuse = (f: GrpcFailure) => cb({ code: f.code, details: f.details } as grpc.ServiceError);
      if (ctx.leaderMissing(call.metadata)) return refuse(etcdErrors.noLeader);
      if (ctx.inflight >= ctx.o.pendingRequestsMax) return refuse(etcdErrors.tooManyRequests);
      const cancelled = new AbortController();
      const onCancel = () =>
        cancelled.abort(new ConclaveError(ErrorCode.Aborted, 'the client cancelled the call'));
      // The JSON gateway calls this handler with a plain call object (no events).
      const events = typeof call.once === 'function';
      if (events) call.once('cancelled', onCancel);
      ctx.inflight++;
      try {
        cb(null, await body(call.request, cancelled.signal));
      } catch (err) {
        if (cancelled.signal.aborted) refuse({ code: grpc.status.CANCELLED, details: 'context canceled' });
        else if (isGrpcFailure(err)) refuse(err);
        else refuse(ctx.failure(err));
      } finally {
        ctx.inflight--;
        if (events) call.removeListener('cancelled', onCancel);
      }
    }) as grpc.UntypedHandleCall,
    encoderOf(res),
    (b: Buffer) => req.decode(b),
    'unary',
  );
}

export function isGrpcFailure(err: unknown): err is GrpcFailure {
  return (
    typeof err === 'object' &&
    err !== null &&
    !(err instanceof Error) &&
    typeof (err as GrpcFailure).code === 'number' &&
    typeof (err as GrpcFailure).details === 'string'
  );
}

/**
 * The session a request's lease stands for: the client's lease adopted (a lease that is unknown
 * or expired fails with etcd's "requested lease not found"), or, for lease 0, a new lease of
 * `defaultSessionTtlSeconds` (as etcd's NewSession grants one). The caller orphans it when the
 * recipe call is done: the lease stays the client's to keep alive (or to let expire), as etcd's
 * services leave it. While the call waits (a lock held by someone else, a campaign behind
 * others) the session keeps the lease alive: a client waiting on an open call is alive; when it
 * cancels, the wait ends and the session is orphaned.
 */
export async function sessionFor(ctx: ServerContext, lease: bigint, signal: AbortSignal): Promise<Session> {
  const kv = ctx.backend.kv;
  if (lease === 0n) return Session.create(kv, { ttlSeconds: defaultSessionTtlSeconds, signal });
  if (lease < 0n) throw etcdErrors.leaseNotFound;
  try {
    return await Session.create(kv, { lease, signal });
  } catch (err) {
    if (ConclaveError.is(err, ErrorCode.LeaseNotFound)) throw etcdErrors.leaseNotFound;
    throw err;
  }
}
