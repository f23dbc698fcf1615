/**
 * Lease keep-alives over ONE shared bidirectional LeaseKeepAlive stream per client. Each
 * `keepAliveOnce(id)` writes a request and waits for the next response for that id. A TTL of 0 or
 * less in the reply means the lease is unknown or expired (etcd's way of saying so on this stream).
 *
 * Every keep-alive has a deadline (callTimeoutMs): one that gets no answer in time fails
 * `deadline-exceeded` (retryable: a keep-alive is idempotent) and the stream is replaced, since a
 * stream that swallows one request will swallow the next. A stream that ends with a stale-token
 * refusal ("invalid auth token") is re-opened only after a fresh token was fetched.
 */
import type * as grpc from '@grpc/grpc-js';
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { big, type Int64, int64, methods, num, pb } from '../../src/protocol/codec.js';
import type { LeaseKeepAliveResult } from '../../src/types.js';
import { isStaleTokenError } from './auth.js';
import { type Connection, method } from './connection.js';
import { isGrpcError, mapGrpcError } from './errors.js';

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
  /** The caller gave up (aborted) after the request was written: its answer is dropped. */
  abandoned?: boolean;
}

type Stream = grpc.ClientDuplexStream<object, PbKeepAliveResponse>;

export class KeepAliveStream {
  readonly #conn: Connection;
  #stream: Stream | undefined;
  #streamIndex = 0;
  /** The token the current stream was opened with. */
  #streamToken: string | undefined;
  /** The last stream ended refusing this token: fetch a fresh one before opening the next. */
  #staleToken: { token: string | undefined } | undefined;
  readonly #pending = new Map<bigint, Pending[]>();

  constructor(conn: Connection) {
    this.#conn = conn;
  }

  async keepAliveOnce(id: bigint, signal: AbortSignal | undefined): Promise<LeaseKeepAliveResult> {
    signal?.throwIfAborted();
    const stale = this.#staleToken;
    if (stale && !this.#stream) {
      await this.#conn.refreshToken(
        stale.token,
        AbortSignal.any([AbortSignal.timeout(this.#conn.callTimeoutMs), ...(signal ? [signal] : [])]),
      );
      if (this.#staleToken === stale) this.#staleToken = undefined;
    }
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
      const unlist = () => {
        const l = this.#pending.get(id);
        const i = l?.indexOf(p) ?? -1;
        if (l && i >= 0) l.splice(i, 1);
        if (l && l.length === 0) this.#pending.delete(id);
      };
      const onAbort = () => {
        // The request is on the stream and etcd answers every request in order: its answer is
        // still coming. The entry stays in line, abandoned, so that answer is dropped rather than
        // taken as a later keep-alive's (whose TTL the Session dates from its own, later send).
        // Its timer keeps running: if the answer never comes, the stream is replaced as usual.
        p.abandoned = true;
        reject(abortReason(signal!));
      };
      const timeoutMs = this.#conn.callTimeoutMs;
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        unlist();
        reject(
          new ConclaveError(
            ErrorCode.DeadlineExceeded,
            `lease keep-alive: no answer within ${timeoutMs} ms (callTimeoutMs); the stream is re-opened`,
          ),
        );
        this.#replace(stream);
      }, timeoutMs);
      const p: Pending = {
        resolve: (r) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          if (!p.abandoned) resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          if (!p.abandoned) reject(e);
        },
      };
      list.push(p);
      this.#pending.set(id, list);
      signal?.addEventListener('abort', onAbort, { once: true });
      let stream: Stream | undefined;
      try {
        stream = this.#ensure();
        stream.write({ ID: int64(id) });
      } catch (err) {
        unlist();
        p.reject(mapGrpcError(err, 'lease keep-alive', false));
      }
    });
  }

  /** Drops a stream that stopped answering; pending keep-alives on it fail retryable. */
  #replace(s: Stream | undefined): void {
    if (!s || this.#stream !== s) return;
    this.#stream = undefined;
    s.removeAllListeners('data');
    s.on('error', () => undefined);
    s.cancel();
    const e = new ConclaveError(
      ErrorCode.Unavailable,
      'lease keep-alive stream stopped answering; re-opened',
    );
    for (const list of this.#pending.values()) for (const p of list) p.reject(e);
    this.#pending.clear();
  }

  #ensure(): Stream {
    if (this.#stream) return this.#stream;
    this.#streamIndex = this.#conn.currentIndex;
    this.#streamToken = this.#conn.token;
    const s = this.#conn
      .client(this.#streamIndex)
      .makeBidiStreamRequest(
        keepAliveMethod.path,
        keepAliveMethod.serialize,
        this.#conn.deserializer(keepAliveMethod),
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
      if (isStaleTokenError(err)) {
        // etcd refused the stream's token: the next stream must carry a fresh one.
        this.#staleToken = { token: this.#streamToken };
      } else if (!isGrpcError(err) || err.code !== 1 /* CANCELLED */) {
        this.#conn.failover(this.#streamIndex);
      }
      // A keep-alive is idempotent: callers (Session) retry; report a retryable failure.
      const e =
        err === undefined
          ? new ConclaveError(ErrorCode.Unavailable, 'lease keep-alive stream ended')
          : isStaleTokenError(err)
            ? new ConclaveError(
                ErrorCode.Unavailable,
                "lease keep-alive: etcd refused the stream's auth token; the next keep-alive re-authenticates",
                { cause: err },
              )
            : new ConclaveError(
                ErrorCode.Unavailable,
                `lease keep-alive stream broke: ${mapGrpcError(err, 'lease keep-alive', false).message}`,
                { cause: err },
              );
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
