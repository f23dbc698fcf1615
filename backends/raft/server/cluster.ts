/**
 * etcd's Cluster service changes on a `conclave serve` member: MemberAdd, MemberRemove,
 * MemberUpdate and MemberPromote (MemberList is served in grpc.ts). The member decides each change
 * on the leader (backends/raft/membership.ts); this file converts requests and answers and maps
 * refusals to etcd's codes and texts (rpctypes/error.go), which Go clients match by text.
 *
 * etcd's ClusterServer answers with a header that carries no revision, and with the member list
 * after the change; MemberAdd also returns the member added (with no name: it has not started).
 */
import type * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { ConclaveError } from '../../../src/errors.js';
import { big, type Int64 } from '../../../src/protocol/codec.js';
import type { MemberChange, MemberChangeResult, MemberDescription } from './api.js';
import type { GrpcFailure } from './errors.js';
import type { ServiceKit } from './service-kit.js';
import { wire64 } from './wire.js';

/** etcd's membership refusals (texts as `membership.ts` raises them) → their gRPC codes. */
const memberFailures: ReadonlyArray<readonly [string, Status]> = [
  ['etcdserver: member ID already exist', Status.FAILED_PRECONDITION],
  ['etcdserver: Peer URLs already exists', Status.FAILED_PRECONDITION],
  ['etcdserver: re-configuration failed due to not enough started members', Status.FAILED_PRECONDITION],
  ['etcdserver: given member URLs are invalid', Status.INVALID_ARGUMENT],
  ['etcdserver: member not found', Status.NOT_FOUND],
  ['etcdserver: can only promote a learner member which is in sync with leader', Status.FAILED_PRECONDITION],
  ['etcdserver: can only promote a learner member', Status.FAILED_PRECONDITION],
  ['etcdserver: too many learner members in cluster', Status.FAILED_PRECONDITION],
  ['etcdserver: unhealthy cluster', Status.UNAVAILABLE],
];

/** etcd's failure for a refused change, or undefined when `err` is not one of them. */
export function memberFailure(err: unknown): GrpcFailure | undefined {
  if (!ConclaveError.is(err)) return undefined;
  for (const [text, code] of memberFailures) if (err.message.startsWith(text)) return { code, details: text };
  return undefined;
}

export function pbMember(m: MemberDescription): object {
  return {
    ID: wire64(m.id, true),
    name: m.name,
    peerURLs: m.peerUrls,
    clientURLs: m.clientUrls,
    isLearner: m.isLearner,
  };
}

const notServed: GrpcFailure = {
  code: Status.UNIMPLEMENTED,
  details: 'etcdserver: membership changes are not served by this member',
};

/** Registers MemberAdd, MemberRemove, MemberUpdate and MemberPromote. */
export function registerCluster(k: ServiceKit): void {
  const { ctx, backend } = k;
  const cluster = backend.cluster;
  const body =
    (withMember: boolean) =>
    (r: MemberChangeResult): object => ({
      // etcd's ClusterServer header: cluster and member IDs and the term, no revision.
      header: ctx.header(0),
      ...(withMember && r.member ? { member: pbMember(r.member) } : {}),
      members: r.members.map(pbMember),
    });
  const addBody = body(true);
  const listBody = body(false);

  const change = async (
    call: grpc.ServerUnaryCall<unknown, object>,
    cb: grpc.sendUnaryData<object>,
    c: () => MemberChange,
    toBody: (r: MemberChangeResult) => object,
  ): Promise<void> => {
    if (!k.admit(call, cb)) return;
    if (!cluster) return k.fail(cb, notServed);
    // etcd's checkMembershipOperationPermission: with auth enabled, only the root role may change
    // the membership ("user name is empty" without credentials, else "permission denied").
    const denied = ctx.authGate?.admin(call);
    if (denied) return k.fail(cb, denied);
    ctx.inflight++;
    try {
      cb(null, toBody(await cluster.memberChange(c())));
    } catch (err) {
      k.fail(cb, memberFailure(err) ?? ctx.failure(err));
    } finally {
      ctx.inflight--;
    }
  };

  const urls = (v: unknown): string[] => (Array.isArray(v) ? v.map(String) : []);

  k.unary('/etcdserverpb.Cluster/MemberAdd', k.type('MemberAddRequest'), k.type('MemberAddResponse'), ((
    call: grpc.ServerUnaryCall<{ peerURLs?: string[]; isLearner?: boolean }, object>,
    cb: grpc.sendUnaryData<object>,
  ) =>
    change(
      call,
      cb,
      () => ({
        op: 'add',
        peerUrls: urls(call.request.peerURLs),
        isLearner: call.request.isLearner === true,
      }),
      addBody,
    )) as never);

  k.unary(
    '/etcdserverpb.Cluster/MemberRemove',
    k.type('MemberRemoveRequest'),
    k.type('MemberRemoveResponse'),
    ((call: grpc.ServerUnaryCall<{ ID?: Int64 }, object>, cb: grpc.sendUnaryData<object>) =>
      change(call, cb, () => ({ op: 'remove', id: big(call.request.ID, true) }), listBody)) as never,
  );

  k.unary(
    '/etcdserverpb.Cluster/MemberUpdate',
    k.type('MemberUpdateRequest'),
    k.type('MemberUpdateResponse'),
    ((
      call: grpc.ServerUnaryCall<{ ID?: Int64; peerURLs?: string[] }, object>,
      cb: grpc.sendUnaryData<object>,
    ) =>
      change(
        call,
        cb,
        () => ({ op: 'update', id: big(call.request.ID, true), peerUrls: urls(call.request.peerURLs) }),
        listBody,
      )) as never,
  );

  k.unary(
    '/etcdserverpb.Cluster/MemberPromote',
    k.type('MemberPromoteRequest'),
    k.type('MemberPromoteResponse'),
    ((call: grpc.ServerUnaryCall<{ ID?: Int64 }, object>, cb: grpc.sendUnaryData<object>) =>
      change(call, cb, () => ({ op: 'promote', id: big(call.request.ID, true) }), listBody)) as never,
  );
}
