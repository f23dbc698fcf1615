/**
 * What a learner serves, as etcd 3.4 decides it (its gRPC interceptors, api/v3rpc/interceptor.go
 * and util.go `isRPCSupportedForLearner`): while this member is a learner, every unary call other
 * than Maintenance.Status and a serializable KV.Range, and every streaming call (Watch, lease
 * keep-alive, Snapshot, Election.Observe), is refused with UNAVAILABLE "etcdserver: rpc not
 * supported for learner". A learner's store may lag the leader's, and it is not part of any
 * quorum: clients (etcd's clientv3 balancer included) move on to another endpoint on this error.
 *
 * The check wraps grpc-js's handler map once, after every service registered (as the metrics do),
 * so it covers the services in their own files and the JSON gateway, which calls the same handlers.
 * Per call it costs one Set lookup (`isLearner`) while this member is a voter.
 */
import type * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import type { GrpcFailure } from './errors.js';

/** etcd 3.4's ErrGRPCNotSupportedForLearner (rpctypes/error.go): code and text are wire facts. */
export const notSupportedForLearner: GrpcFailure = Object.freeze({
  code: Status.UNAVAILABLE,
  details: 'etcdserver: rpc not supported for learner',
});

/** Whether etcd 3.4 serves this unary call on a learner. */
export function servedOnLearner(path: string, request: unknown): boolean {
  if (path === '/etcdserverpb.Maintenance/Status') return true;
  if (path === '/etcdserverpb.KV/Range')
    return (request as { serializable?: boolean } | null | undefined)?.serializable === true;
  return false;
}

interface HandlerEntry {
  func: unknown;
  type: string;
}

/**
 * Wraps every handler registered on `server` so that, while `isLearner()` holds, the calls etcd
 * refuses on a learner are refused before they run. Call once, after every service is registered
 * and before the metrics wrap the handlers (so refusals are counted under their code).
 */
export function refuseOnLearner(server: object, isLearner: () => boolean): void {
  const handlers = (server as { handlers?: Map<string, HandlerEntry> }).handlers;
  if (!(handlers instanceof Map)) return;
  for (const [path, h] of handlers) {
    const inner = h.func as (...a: unknown[]) => unknown;
    if (h.type === 'unary') {
      h.func = (call: grpc.ServerUnaryCall<unknown, object>, cb: grpc.sendUnaryData<object>) => {
        if (isLearner() && !servedOnLearner(path, call.request))
          return cb({ code: notSupportedForLearner.code, details: notSupportedForLearner.details });
        return inner(call, cb);
      };
    } else if (h.type === 'clientStream') {
      h.func = (call: grpc.ServerReadableStream<unknown, object>, cb: grpc.sendUnaryData<object>) => {
        if (isLearner())
          return cb({ code: notSupportedForLearner.code, details: notSupportedForLearner.details });
        return inner(call, cb);
      };
    } else {
      // etcd 3.4's stream interceptor refuses every stream on a learner.
      h.func = (call: grpc.ServerWritableStream<unknown, object>) => {
        if (isLearner()) {
          call.emit('error', { code: notSupportedForLearner.code, details: notSupportedForLearner.details });
          return;
        }
        return inner(call);
      };
    }
  }
}
