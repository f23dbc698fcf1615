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
import { resolveRange, toBytes } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { root } from '../../../src/protocol/codec.js';
import { Session } from '../../../src/session.js';
import type { Bytes, LeaseApi, LeaseId, Op, Txn, Watch } from '../../../src/types.js';
import { authFailures, type CallerInfo, isFailure } from './auth.js';
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

export type Body<Req> = (
  req: Req,
  signal: AbortSignal,
  call: grpc.ServerUnaryCall<Req, object>,
) => Promise<object>;

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
        cb(null, await body(call.request, cancelled.signal, call));
      } catch (err) {
        const denied = callerAuthFailure(err);
        if (denied) refuse(denied);
        else if (cancelled.signal.aborted)
          refuse({ code: grpc.status.CANCELLED, details: 'context canceled' });
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
export async function sessionFor(kv: KV, lease: bigint, signal: AbortSignal): Promise<Session> {
  if (lease === 0n) return Session.create(kv, { ttlSeconds: defaultSessionTtlSeconds, signal });
  if (lease < 0n) throw etcdErrors.leaseNotFound;
  try {
    return await Session.create(kv, { lease, signal });
  } catch (err) {
    if (ConclaveError.is(err, ErrorCode.LeaseNotFound)) throw etcdErrors.leaseNotFound;
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// The caller's view of the store

/**
 * A permission refused to a recipe call's own KV call. etcd's Lock and Election servers run Go's
 * recipes through an in-process client that carries the caller's credentials, so each of their
 * KV calls is checked as the caller's, and a refusal (an rpctypes error, not a gRPC status) reaches
 * the client as code Unknown with etcd's text: `Unknown: etcdserver: permission denied`.
 */
export class CallerAuthError extends ConclaveError {
  readonly failure: GrpcFailure;
  constructor(f: GrpcFailure) {
    super(
      f.code === grpc.status.PERMISSION_DENIED ? ErrorCode.PermissionDenied : ErrorCode.Unauthenticated,
      f.details,
      {
        retryable: false,
      },
    );
    this.failure = f;
  }
}

/** Nested errors searched for a CallerAuthError (recipes may wrap what a KV call threw). */
const causeDepthMax = 8;

/** The Unknown-coded answer for a refusal met by a recipe call, if `err` is (or wraps) one. */
export function callerAuthFailure(err: unknown): GrpcFailure | undefined {
  let e: unknown = err;
  for (let i = 0; i < causeDepthMax && e; i++) {
    if (e instanceof CallerAuthError) return { code: grpc.status.UNKNOWN, details: e.failure.details };
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** A watch that was refused: `ready` and the iterator reject with `err`. */
function failedWatch(err: Error): Watch {
  const ready = Promise.reject(err);
  ready.catch(() => undefined);
  return {
    ready,
    close: async () => undefined,
    [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(err) }),
    [Symbol.asyncDispose]: async () => undefined,
  };
}

/**
 * The member's KV as the caller of `call` may use it, for the recipes of the Lock and Election
 * services: while auth is enabled each call is checked as etcd checks the caller's own (read on a
 * range, write on a put or delete, the txn's compares and ops, write on every key of a lease
 * that is revoked or attached to a new key), and refused with CallerAuthError. A token that names
 * nobody is refused at once ("invalid auth token"); no credentials is the empty user, refused by
 * the first check ("user name is empty"), after the session's lease grant as in etcd. A read (a
 * get, a range, a txn of gets) is checked again after it ran, as etcd's doSerialize does. etcd's
 * servers make these calls through an in-process client that retries a call refused as "revision
 * of auth store is old" (clientv3 shouldRefreshToken): a caller with a simple token or a
 * certificate is then checked at the store's new revision, so here too; a JWT keeps the revision
 * it was issued at, so a caller with a JWT from before an auth change is refused as old.
 * With auth disabled and no token: the member's KV itself (with a token, it is still read: one
 * dropped by AuthDisable is refused, as etcd refuses it).
 */
export function callerKv(ctx: ServerContext, call: grpc.ServerUnaryCall<unknown, object>): KV {
  const kv = ctx.backend.kv;
  const gate = ctx.authGate;
  if (!gate?.active(call)) return kv;
  const first = gate.info(call);
  if (isFailure(first)) throw new CallerAuthError(first);
  let ai = first;
  /** The caller at the store's revision now, where its credentials allow (see above). */
  const current = (): CallerInfo => {
    if (!gate.staleAfterRead(ai)) return ai;
    const now = gate.info(call);
    if (isFailure(now)) throw new CallerAuthError(now);
    ai = now;
    return ai;
  };
  const deny = (key: Uint8Array, end: Uint8Array | undefined, write: boolean): void => {
    const f = gate.checkInfo(current(), key, end, write);
    if (f) throw new CallerAuthError(f);
  };
  /** `got`, read after `check` passed, unless the caller's revision moved meanwhile. */
  const read = <T>(got: T, check: () => void): T => {
    if (!gate.staleAfterRead(ai)) return got;
    if (gate.staleAfterRead(current())) throw new CallerAuthError(authFailures.AuthOldRevision);
    check();
    return got;
  };
  const readOnly = (t: Txn) => [...t.success, ...t.failure].every((op) => op.type === 'get');
  const leaseKeys = async (id: LeaseId) =>
    (await kv.lease.timeToLive(id, { keys: true }).catch(() => undefined))?.keys ?? [];
  const checkOps = (ops: readonly Op[]): void => {
    for (const op of ops) {
      if (op.type === 'txn') checkTxn(op.txn);
      else if (op.type === 'put') {
        deny(toBytes(op.key), undefined, true);
        if (op.options?.prevKv) deny(toBytes(op.key), undefined, false);
      } else {
        const r = resolveRange(op.key, op.options);
        deny(r.key, r.end, op.type === 'delete');
        if (op.type === 'delete' && op.options?.prevKv) deny(r.key, r.end, false);
      }
    }
  };
  const checkTxn = (t: Txn): void => {
    for (const c of t.compare) {
      const r = resolveRange(c.key, c);
      deny(r.key, r.end, false);
    }
    checkOps(t.success);
    checkOps(t.failure);
  };
  const lease: LeaseApi = {
    grant: (ttl, o) => kv.lease.grant(ttl, o),
    revoke: async (id, o) => {
      for (const k of await leaseKeys(id)) deny(k, undefined, true);
      return kv.lease.revoke(id, o);
    },
    keepAliveOnce: (id, o) => kv.lease.keepAliveOnce(id, o),
    timeToLive: (id, o) => kv.lease.timeToLive(id, o),
    list: (o) => kv.lease.list(o),
  };
  const range = (key: Bytes, sel: Parameters<typeof resolveRange>[1]) => {
    const r = resolveRange(key, sel);
    deny(r.key, r.end, false);
  };
  return {
    get: async (key, o) => {
      range(key, undefined);
      return read(await kv.get(key, o), () => range(key, undefined));
    },
    range: async (key, o) => {
      range(key, o);
      return read(await kv.range(key, o), () => range(key, o));
    },
    put: async (key, value, o) => {
      deny(toBytes(key), undefined, true);
      if (o?.prevKv) deny(toBytes(key), undefined, false);
      if (o?.lease !== undefined && o.lease !== 0n)
        for (const k of await leaseKeys(o.lease)) deny(k, undefined, true);
      return kv.put(key, value, o);
    },
    delete: async (key, o) => {
      const r = resolveRange(key, o);
      deny(r.key, r.end, true);
      if (o?.prevKv) deny(r.key, r.end, false);
      return kv.delete(key, o);
    },
    txn: async (t, o) => {
      checkTxn(t);
      const got = await kv.txn(t, o);
      return readOnly(t) ? read(got, () => checkTxn(t)) : got;
    },
    watch: (key, o) => {
      try {
        range(key, o);
        // Go's recipes (waitDeletes, observe) Get the range before they watch it, and that read
        // is checked again as every read is; the Conclave recipes start from a revision they
        // already hold, so the same check is made here.
        read(undefined, () => range(key, o));
      } catch (err) {
        // A refusal reaches the recipe as its watch failing (as etcd's does), not as a throw
        // from watch(): a recipe may open a watch where it does not expect one.
        return failedWatch(err as Error);
      }
      return kv.watch(key, o);
    },
    lease,
    compact: (rev, o) => kv.compact(rev, o),
    status: (o) => kv.status(o),
    // The member's KV is not the caller's to close.
    close: async () => {},
    [Symbol.asyncDispose]: async () => {},
  };
}
