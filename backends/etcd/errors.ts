/**
 * gRPC status → ConclaveError, at the edge of the etcd backend. etcd reports most of its
 * semantic errors as a gRPC status whose details start with "etcdserver: "; we match those
 * strings (they are stable wire behaviour of etcd 3.x) and fall back to the gRPC code.
 */
import { type ServiceError, status as Status } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';

const byMessage: ReadonlyArray<[RegExp, ErrorCode, boolean?]> = [
  [/required revision has been compacted/, ErrorCode.Compacted],
  [/required revision is a future revision/, ErrorCode.FutureRevision],
  [/requested lease not found/, ErrorCode.LeaseNotFound],
  [/too many operations in txn request/, ErrorCode.TooManyOps],
  [/duplicate key given in txn request/, ErrorCode.DuplicateKey],
  [/request is too large/, ErrorCode.RequestTooLarge],
  [/too many requests/, ErrorCode.TooManyRequests],
  [/key not found/, ErrorCode.InvalidArgument],
  [/key is not provided/, ErrorCode.InvalidArgument],
  [/value is provided/, ErrorCode.InvalidArgument],
  [/lease provided/, ErrorCode.InvalidArgument],
  [/no leader/, ErrorCode.Unavailable],
  [/not capable/, ErrorCode.Unavailable],
  [/permission denied/, ErrorCode.PermissionDenied],
  // Bad credentials, no token, an expired token, or one issued before a permission change.
  [
    /invalid auth token|user name is empty|authentication failed|revision of auth store is old/,
    ErrorCode.Unauthenticated,
  ],
];

/** Errors that mean the request never left this process or was refused before any effect. */
export function isPreSendFailure(err: ServiceError): boolean {
  if (err.code !== Status.UNAVAILABLE) return false;
  const d = err.details ?? '';
  return /No connection established|ECONNREFUSED|Name resolution failed|connect ETIMEDOUT|EHOSTUNREACH|Waiting for LB pick/i.test(
    d,
  );
}

export function isGrpcError(err: unknown): err is ServiceError {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof (err as { code: unknown }).code === 'number' &&
    'details' in err
  );
}

/**
 * Maps a gRPC failure. `mayHaveApplied`: the call was a write that reached the wire, so an
 * unavailable/deadline failure leaves its outcome unknown → `indeterminate`, never retryable.
 */
export function mapGrpcError(err: unknown, what: string, mayHaveApplied: boolean): ConclaveError {
  if (err instanceof ConclaveError) return err;
  if (!isGrpcError(err)) {
    return new ConclaveError(
      ErrorCode.Internal,
      `${what}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
  const details = err.details ?? err.message;
  for (const [re, code] of byMessage) {
    if (re.test(details)) return new ConclaveError(code, `${what}: ${details}`, { cause: err });
  }
  switch (err.code) {
    case Status.UNAVAILABLE:
    case Status.DEADLINE_EXCEEDED: {
      if (mayHaveApplied && !isPreSendFailure(err)) {
        return new ConclaveError(
          ErrorCode.Indeterminate,
          `${what}: the connection failed after the request was sent; it may or may not have been applied (${details})`,
          { cause: err, retryable: false },
        );
      }
      const code = err.code === Status.UNAVAILABLE ? ErrorCode.Unavailable : ErrorCode.DeadlineExceeded;
      return new ConclaveError(code, `${what}: ${details}`, { cause: err });
    }
    case Status.INVALID_ARGUMENT:
    case Status.FAILED_PRECONDITION:
    case Status.OUT_OF_RANGE:
      return new ConclaveError(ErrorCode.InvalidArgument, `${what}: ${details}`, { cause: err });
    case Status.NOT_FOUND:
      return new ConclaveError(ErrorCode.InvalidArgument, `${what}: ${details}`, { cause: err });
    case Status.RESOURCE_EXHAUSTED:
      return new ConclaveError(ErrorCode.TooManyRequests, `${what}: ${details}`, { cause: err });
    case Status.PERMISSION_DENIED:
      return new ConclaveError(ErrorCode.PermissionDenied, `${what}: ${details}`, { cause: err });
    case Status.UNAUTHENTICATED:
      return new ConclaveError(ErrorCode.Unauthenticated, `${what}: ${details}`, { cause: err });
    case Status.CANCELLED:
      return new ConclaveError(ErrorCode.Aborted, `${what}: cancelled`, { cause: err });
    default:
      return new ConclaveError(ErrorCode.Internal, `${what}: ${details} (gRPC code ${err.code})`, {
        cause: err,
      });
  }
}
