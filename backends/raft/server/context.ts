/**
 * What every service of the client API shares: the member, its response headers, the bounds, and
 * the set of open streams (for `hasleader` cancellation, progress notifications and shutdown).
 */
import type { Metadata } from '@grpc/grpc-js';
import type { MemberBackend } from './api.js';
import { type GrpcFailure, toGrpcFailure } from './errors.js';
import { type Wire64, wire64 } from './wire.js';

/** A response header as protobufjs encodes it (etcd's `ResponseHeader`). */
export interface PbHeader {
  clusterId: Wire64;
  memberId: Wire64;
  revision: number;
  raftTerm: number;
}

/** An open server stream the server may have to end (no leader, shutdown). */
export interface OpenStream {
  /** Ends the stream with this status (idempotent). */
  fail(f: GrpcFailure): void;
  /** Whether the client asked for a leader (metadata `hasleader=true`). */
  readonly requireLeader: boolean;
}

export interface ContextOptions {
  /** `--max-request-bytes`: a request larger than this is refused with "request is too large". */
  readonly maxRequestBytes: number;
  readonly maxTxnOps: number;
  /** Unary calls in flight at this server before "etcdserver: too many requests". */
  readonly pendingRequestsMax: number;
  /** Watch and keep-alive streams open at this server before "etcdserver: too many requests". */
  readonly streamsMax: number;
  /** Watches on one Watch stream. */
  readonly watchesPerStreamMax: number;
  /** Batches a served watch buffers for a slow stream before it is resynced from history. */
  readonly watchBufferBatchesMax: number;
  /** Bytes of responses a Watch stream queues for HTTP/2 before its watches wait for half. */
  readonly watchSendBytesMax: number;
  /** Requests received on one stream and not yet handled before the stream stops reading. */
  readonly streamRequestsPendingMax: number;
}

export class ServerContext {
  readonly backend: MemberBackend;
  readonly o: ContextOptions;
  readonly clusterId: Wire64;
  readonly memberId: Wire64;
  readonly streams = new Set<OpenStream>();
  /** Unary calls being served now (bounded by `o.pendingRequestsMax`). */
  inflight = 0;
  /** Watches resynced from history after their stream fell behind (diagnostics, tests). */
  watchResyncs = 0;
  /** Permission checks when auth is enabled (server/auth.ts); set by the gRPC server. */
  authGate: import('./auth.js').AuthGate | undefined;

  constructor(backend: MemberBackend, o: ContextOptions) {
    this.backend = backend;
    this.o = o;
    this.clusterId = wire64(backend.info.clusterId, true);
    this.memberId = wire64(backend.info.memberId, true);
  }

  /** A full response header at `revision` (the current term read now). */
  header(revision: number): PbHeader {
    return {
      clusterId: this.clusterId,
      memberId: this.memberId,
      revision,
      raftTerm: this.backend.info.raftTerm(),
    };
  }

  /** A header at this member's current revision (etcd's `header.fill` with no revision set). */
  currentHeader(): PbHeader {
    return this.header(this.backend.info.revision());
  }

  failure(err: unknown): GrpcFailure {
    return toGrpcFailure(err, this.backend.info.leaderId() !== 0n);
  }

  /** etcd's interceptors: metadata `hasleader=true` on a member without a leader → "no leader". */
  leaderMissing(md: Metadata): boolean {
    if (this.backend.info.leaderId() !== 0n) return false;
    return requiresLeader(md);
  }
}

export function requiresLeader(md: Metadata): boolean {
  const v = md.get('hasleader');
  return v.length > 0 && v[0] === 'true';
}
