/**
 * errors.ts: failures from a member map to etcd's exact gRPC code and text, first by etcd's text in
 * the message, then by the error's code (the member's own phrasings of unavailability included).
 */
import { status as S } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { etcdErrors, toGrpcFailure } from '../../backends/raft/server/errors.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';

const E = (code: ErrorCode, msg: string, o?: { compactRevision?: number }) => new ConclaveError(code, msg, o);

describe('toGrpcFailure', () => {
  it.each([
    [
      E(ErrorCode.Compacted, 'mvcc: required revision has been compacted', { compactRevision: 5 }),
      true,
      etcdErrors.compacted,
    ],
    [E(ErrorCode.Compacted, 'watch: the start revision was compacted'), true, etcdErrors.compacted],
    [E(ErrorCode.FutureRevision, 'mvcc: required revision is a future revision'), true, etcdErrors.futureRev],
    [E(ErrorCode.LeaseNotFound, 'lease: requested lease not found'), true, etcdErrors.leaseNotFound],
    [E(ErrorCode.InvalidArgument, 'lease already exists'), true, etcdErrors.leaseExist],
    [E(ErrorCode.InvalidArgument, 'etcdserver: key not found'), true, etcdErrors.keyNotFound],
    [E(ErrorCode.TooManyOps, 'txn: 129 ops'), true, etcdErrors.tooManyOps],
    [E(ErrorCode.DuplicateKey, 'txn: key twice'), true, etcdErrors.duplicateKey],
    [E(ErrorCode.RequestTooLarge, 'request of 2 MiB'), true, etcdErrors.requestTooLarge],
    [
      E(ErrorCode.TooManyRequests, 'member 1: more than 10000 requests pending'),
      true,
      etcdErrors.tooManyRequests,
    ],
    [E(ErrorCode.TooManyRequests, 'etcdserver: mvcc: database space exceeded'), true, etcdErrors.noSpace],
    // Unavailability: etcd's variant from the message, else from whether a leader is known.
    [
      E(ErrorCode.Unavailable, 'etcdserver: request timed out, possibly due to previous leader failure'),
      true,
      etcdErrors.timeoutDueToLeaderFail,
    ],
    [
      E(ErrorCode.Unavailable, 'leadership changed while the read was pending; retry'),
      true,
      etcdErrors.leaderChanged,
    ],
    [E(ErrorCode.Unavailable, 'member 2: read not confirmed within 5000 ms'), true, etcdErrors.timeout],
    [E(ErrorCode.Unavailable, 'member 2 is stopped'), true, etcdErrors.stopped],
    [E(ErrorCode.Unavailable, 'member 2: proposal dropped'), false, etcdErrors.noLeader],
    [E(ErrorCode.Unavailable, 'member 2: proposal dropped'), true, etcdErrors.timeout],
    [E(ErrorCode.NotLeader, 'etcdserver: not leader; retry'), false, etcdErrors.noLeader],
    [E(ErrorCode.NotLeader, 'etcdserver: not leader; retry'), true, etcdErrors.leaderChanged],
    [
      E(ErrorCode.Indeterminate, 'member 1: the request was proposed but not applied within 5000 ms'),
      true,
      etcdErrors.timeout,
    ],
    [E(ErrorCode.Closed, 'the store was closed'), true, etcdErrors.stopped],
    [E(ErrorCode.Corrupt, 'wal: bad crc'), true, etcdErrors.corrupt],
    [E(ErrorCode.PermissionDenied, 'no'), true, etcdErrors.permissionDenied],
    [E(ErrorCode.Unauthenticated, 'no token'), true, etcdErrors.invalidAuthToken],
    [E(ErrorCode.Aborted, 'aborted'), true, etcdErrors.canceled],
    [E(ErrorCode.DeadlineExceeded, 'late'), true, etcdErrors.deadlineExceeded],
  ])('%s (leader known: %s)', (err, leaderKnown, want) => {
    expect(toGrpcFailure(err, leaderKnown)).toEqual(want);
  });

  it('keeps other messages: invalid arguments as INVALID_ARGUMENT, the rest as UNKNOWN (etcd togRPCError)', () => {
    expect(toGrpcFailure(E(ErrorCode.InvalidArgument, 'ttlSeconds: must be > 0'), true)).toEqual({
      code: S.INVALID_ARGUMENT,
      details: 'ttlSeconds: must be > 0',
    });
    expect(toGrpcFailure(E(ErrorCode.Internal, 'boom'), true)).toEqual({ code: S.UNKNOWN, details: 'boom' });
    expect(toGrpcFailure(new TypeError('bad'), true)).toEqual({ code: S.UNKNOWN, details: 'bad' });
  });

  it('uses etcd 3.4 codes for its texts', () => {
    expect(etcdErrors.compacted.code).toBe(S.OUT_OF_RANGE);
    expect(etcdErrors.leaseNotFound.code).toBe(S.NOT_FOUND);
    expect(etcdErrors.noLeader.code).toBe(S.UNAVAILABLE);
    expect(etcdErrors.requestTooLarge.code).toBe(S.INVALID_ARGUMENT);
    expect(etcdErrors.tooManyRequests.code).toBe(S.RESOURCE_EXHAUSTED);
    expect(etcdErrors.leaseExist.code).toBe(S.FAILED_PRECONDITION);
  });
});
