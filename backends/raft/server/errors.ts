/**
 * Failures → etcd's exact gRPC status codes and messages, at the edge of the client API.
 *
 * Go clients (clientv3, etcdctl) map errors by message text (etcd's `api/v3rpc/rpctypes/error.go`:
 * `ErrorDesc` → the typed error), and some of them retry on particular ones, so the texts below are
 * wire facts of etcd 3.4 and must not be reworded. A `ConclaveError` from the member or the store is
 * mapped in two steps: its message is searched for one of etcd's texts first (the store already
 * speaks them: "mvcc: required revision has been compacted", "etcdserver: key not found", …), then
 * its `code` decides. The member side chooses among etcd's unavailable variants ("leader changed",
 * "request timed out", "server stopped", …) by putting etcd's text in the message.
 */
import { status as Status } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

/** A gRPC status as grpc-js handlers pass it to their callback (or emit on a stream). */
export interface GrpcFailure {
  readonly code: Status;
  readonly details: string;
}

function e(code: Status, details: string): GrpcFailure {
  return Object.freeze({ code, details });
}

/** etcd 3.4's server errors (rpctypes/error.go), the ones this server can answer. */
export const etcdErrors = {
  emptyKey: e(Status.INVALID_ARGUMENT, 'etcdserver: key is not provided'),
  keyNotFound: e(Status.INVALID_ARGUMENT, 'etcdserver: key not found'),
  valueProvided: e(Status.INVALID_ARGUMENT, 'etcdserver: value is provided'),
  leaseProvided: e(Status.INVALID_ARGUMENT, 'etcdserver: lease is provided'),
  tooManyOps: e(Status.INVALID_ARGUMENT, 'etcdserver: too many operations in txn request'),
  duplicateKey: e(Status.INVALID_ARGUMENT, 'etcdserver: duplicate key given in txn request'),
  compacted: e(Status.OUT_OF_RANGE, 'etcdserver: mvcc: required revision has been compacted'),
  futureRev: e(Status.OUT_OF_RANGE, 'etcdserver: mvcc: required revision is a future revision'),
  noSpace: e(Status.RESOURCE_EXHAUSTED, 'etcdserver: mvcc: database space exceeded'),
  leaseNotFound: e(Status.NOT_FOUND, 'etcdserver: requested lease not found'),
  leaseExist: e(Status.FAILED_PRECONDITION, 'etcdserver: lease already exists'),
  leaseTtlTooLarge: e(Status.OUT_OF_RANGE, 'etcdserver: too large lease TTL'),
  watchCanceled: e(Status.CANCELLED, 'etcdserver: watch canceled'),
  requestTooLarge: e(Status.INVALID_ARGUMENT, 'etcdserver: request is too large'),
  tooManyRequests: e(Status.RESOURCE_EXHAUSTED, 'etcdserver: too many requests'),
  permissionDenied: e(Status.PERMISSION_DENIED, 'etcdserver: permission denied'),
  invalidAuthToken: e(Status.UNAUTHENTICATED, 'etcdserver: invalid auth token'),
  authOldRevision: e(Status.INVALID_ARGUMENT, 'etcdserver: revision of auth store is old'),
  authNotEnabled: e(Status.FAILED_PRECONDITION, 'etcdserver: authentication is not enabled'),
  noLeader: e(Status.UNAVAILABLE, 'etcdserver: no leader'),
  notLeader: e(Status.FAILED_PRECONDITION, 'etcdserver: not leader'),
  leaderChanged: e(Status.UNAVAILABLE, 'etcdserver: leader changed'),
  notCapable: e(Status.UNAVAILABLE, 'etcdserver: not capable'),
  stopped: e(Status.UNAVAILABLE, 'etcdserver: server stopped'),
  timeout: e(Status.UNAVAILABLE, 'etcdserver: request timed out'),
  timeoutDueToLeaderFail: e(
    Status.UNAVAILABLE,
    'etcdserver: request timed out, possibly due to previous leader failure',
  ),
  timeoutDueToConnectionLost: e(
    Status.UNAVAILABLE,
    'etcdserver: request timed out, possibly due to connection lost',
  ),
  timeoutWaitAppliedIndex: e(
    Status.UNAVAILABLE,
    'etcdserver: request timed out, waiting for the applied index took too long',
  ),
  unhealthy: e(Status.UNAVAILABLE, 'etcdserver: unhealthy cluster'),
  corrupt: e(Status.DATA_LOSS, 'etcdserver: corrupt cluster'),
  /** Go's context errors as a Go server reports them. */
  canceled: e(Status.CANCELLED, 'context canceled'),
  deadlineExceeded: e(Status.DEADLINE_EXCEEDED, 'context deadline exceeded'),
} as const;

/**
 * etcd's texts searched for in a failure's message, most specific first (the timeout variants
 * before the plain one). The text without its "etcdserver: " prefix is what is searched, so a store
 * error that says "mvcc: required revision has been compacted" is found too.
 */
const byText: ReadonlyArray<readonly [string, GrpcFailure]> = [
  etcdErrors.timeoutDueToLeaderFail,
  etcdErrors.timeoutDueToConnectionLost,
  etcdErrors.timeoutWaitAppliedIndex,
  etcdErrors.timeout,
  etcdErrors.compacted,
  etcdErrors.futureRev,
  etcdErrors.noSpace,
  etcdErrors.leaseNotFound,
  etcdErrors.leaseExist,
  etcdErrors.leaseTtlTooLarge,
  etcdErrors.tooManyOps,
  etcdErrors.duplicateKey,
  etcdErrors.keyNotFound,
  etcdErrors.emptyKey,
  etcdErrors.valueProvided,
  etcdErrors.leaseProvided,
  etcdErrors.requestTooLarge,
  etcdErrors.tooManyRequests,
  etcdErrors.leaderChanged,
  etcdErrors.noLeader,
  etcdErrors.stopped,
  etcdErrors.unhealthy,
  etcdErrors.corrupt,
  etcdErrors.permissionDenied,
  etcdErrors.invalidAuthToken,
  etcdErrors.authOldRevision,
].map((f) => [f.details.replace(/^etcdserver: /, ''), f] as const);

/** Conclave's own phrasings of unavailability → etcd's variant (the member's RaftNode says these). */
const unavailableByText: ReadonlyArray<readonly [RegExp, GrpcFailure]> = [
  [/leader(ship)? (changed|transfer)/i, etcdErrors.leaderChanged],
  [/timed out|not confirmed within|not applied within/i, etcdErrors.timeout],
  [/stopped|closed|shutting down/i, etcdErrors.stopped],
];

/**
 * The gRPC status for a failure. `leaderKnown`: whether this member knows a leader now (a bare
 * `unavailable` without one is etcd's "no leader"; with one, a request that did not complete is
 * etcd's "request timed out").
 */
export function toGrpcFailure(err: unknown, leaderKnown: boolean): GrpcFailure {
  if (!(err instanceof ConclaveError)) {
    // etcd's togRPCError: anything unclassified is codes.Unknown with the error's text.
    return { code: Status.UNKNOWN, details: err instanceof Error ? err.message : String(err) };
  }
  const msg = err.message;
  for (const [text, failure] of byText) if (msg.includes(text)) return failure;
  switch (err.code) {
    case ErrorCode.Compacted:
      return etcdErrors.compacted;
    case ErrorCode.FutureRevision:
      return etcdErrors.futureRev;
    case ErrorCode.LeaseNotFound:
      return etcdErrors.leaseNotFound;
    case ErrorCode.TooManyOps:
      return etcdErrors.tooManyOps;
    case ErrorCode.DuplicateKey:
      return etcdErrors.duplicateKey;
    case ErrorCode.RequestTooLarge:
      return etcdErrors.requestTooLarge;
    case ErrorCode.TooManyRequests:
      return etcdErrors.tooManyRequests;
    case ErrorCode.PermissionDenied:
      return etcdErrors.permissionDenied;
    case ErrorCode.Unauthenticated:
      return etcdErrors.invalidAuthToken;
    case ErrorCode.Corrupt:
      return etcdErrors.corrupt;
    case ErrorCode.Closed:
      return etcdErrors.stopped;
    case ErrorCode.Aborted:
      return etcdErrors.canceled;
    case ErrorCode.DeadlineExceeded:
      return etcdErrors.deadlineExceeded;
    // A proposal that did not apply in time: etcd's ErrTimeout (the client cannot know the outcome).
    case ErrorCode.Indeterminate:
      return etcdErrors.timeout;
    // A request that reached a member which is no longer the leader (a forwarded lease call):
    // etcd's clients retry "leader changed" and "no leader"; its FAILED_PRECONDITION "not leader"
    // is for peer calls and would end a client's call for good.
    case ErrorCode.NotLeader:
      return leaderKnown ? etcdErrors.leaderChanged : etcdErrors.noLeader;
    case ErrorCode.Unavailable: {
      for (const [re, failure] of unavailableByText) if (re.test(msg)) return failure;
      return leaderKnown ? etcdErrors.timeout : etcdErrors.noLeader;
    }
    case ErrorCode.InvalidArgument:
      return { code: Status.INVALID_ARGUMENT, details: msg };
    default:
      return { code: Status.UNKNOWN, details: msg };
  }
}
