/**
 * Lease keep-alives over ONE shared bidirectional LeaseKeepAlive stream per client. Each
 * `keepAliveOnce(id)` writes a request and waits for the next response for that id. A TTL of 0 or
 * less in the reply means the lease is unknown or expired (etcd's way of saying so on this stream).
 */
import type * as grpc from '@grpc/grpc-js';
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { big, type Int64, int64, methods, num, pb } from '../../src/protocol/codec.js';
import type { LeaseKeepAliveResult } from '../../src/types.js';
import { type Connection, method } from './connection.js';
import { mapGrpcError } from './errors.js';

interface PbKeepAliveResponse {
  ID?: Int64;
  TTL?: Int64;
}

const keepAliveMethod = method<PbKeepAliveResponse>(
  methods.leaseKeepAlive,
  pb.LeaseKeepAliveRequest,
  pb.LeaseKeepAliveResponse,
);

/** Pending keep-alives per lease id are few (one per Session); bound them anyway. */
const pendingPerLeaseMax = 64;

interface Pending {
  resolve(r: LeaseKeepAliveResult): void;
  reject(e: unknown): void;
}

export class KeepAliveStream {
  readonly #conn: Connection;
  #stream: grpc.ClientDuplexStream<object, PbKeepAliveResponse> | undefined;
  #streamIndex = 0;
  readonly #pending = new Map<bigint, Pending[]>();

  constructor(conn: Connection) {
    this.#conn = conn;
  }

  keepAliveOnce(id: bigint, signal: AbortSignal | undefined): Promise<LeaseKeepAliveResult> {
    signal?.throwIfAborted();
    return new Promise<LeaseKeepAliveResult>((resolve, reject) => {
      const list = this.#pending.get(id) ?? [];
      if (list.length >= pendingPerLeaseMax) {
        reject(
          new ConclaveError(
            ErrorCode.TooManyRequests,
            `lease keep-alive: more than ${pendingPerLeaseMax} pending for one lease`,
          ),
        );
        return;
      }
      const onAbort = () => {
        const l = this.#pending.get(id);
        const i = l?.indexOf(p) ?? -1;
        if (l && i >= 0) l.splice(i, 1);
        reject(abortReason(signal!));
      };
      const p: Pending = {
        resolve: (r) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(r);
        },
        reject: (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      list.push(p);
      this.#pending.set(id, list);
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        this.#ensure().write({ ID: int64(id) });
      } catch (err) {
        list.splice(list.indexOf(p), 1);
        p.reject(mapGrpcError(err, 'lease keep-alive', false));
      }
    });
  }

  #ensure(): grpc.ClientDuplexStream<object, PbKeepAliveResponse> {
    if (this.#stream) return this.#stream;
    this.#streamIndex = this.#conn.currentIndex;
    const s = this.#conn
      .client(this.#streamIndex)
      .makeBidiStreamRequest(
        keepAliveMethod.path,
        keepAliveMethod.serialize,
        keepAliveMethod.deserialize,
        this.#conn.streamMetadata(),
      );
    s.on('data', (r: PbKeepAliveResponse) => {
      const id = big(r.ID);
      const list = this.#pending.get(id);
      const p = list?.shift();
      if (list && list.length === 0) this.#pending.delete(id);
      p?.resolve({ id, ttlSeconds: Math.max(0, num(r.TTL)) });
    });
    const broken = (err: unknown) => {
      if (this.#stream !== s) return;
      this.#stream = undefined;
      this.#conn.failover(this.#streamIndex);
      // A keep-alive is idempotent: callers (Session) retry; report a retryable failure.
      const e = new ConclaveError(ErrorCode.Unavailable, 'lease keep-alive stream broke', { cause: err });
      for (const list of this.#pending.values()) for (const p of list) p.reject(e);
      this.#pending.clear();
    };
    s.on('error', broken);
    s.on('end', () => broken(undefined));
    this.#stream = s;
    return s;
  }

  close(): void {
    const s = this.#stream;
    this.#stream = undefined;
    s?.cancel();
    const e = new ConclaveError(ErrorCode.Closed, 'the etcd client was closed');
    for (const list of this.#pending.values()) for (const p of list) p.reject(e);
    this.#pending.clear();
  }
}
