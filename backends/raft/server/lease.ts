/**
 * Lease.LeaseKeepAlive: a bidirectional stream of renewals (etcd's api/v3rpc/lease.go). Each
 * request is answered in order with the lease's TTL after the renewal; an unknown (or expired)
 * lease is answered with TTL 0, not an error, as etcd does. Any other failure (no leader, timeout)
 * ends the stream with etcd's status. The header is taken before the renewal (etcd fills it first).
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { big, type Int64 } from '../../../src/protocol/codec.js';
import { type OpenStream, requiresLeader, type ServerContext } from './context.js';
import type { GrpcFailure } from './errors.js';
import { wire64 } from './wire.js';

export interface PbKeepAliveRequest {
  ID?: Int64;
}

export class KeepAliveStream implements OpenStream {
  readonly requireLeader: boolean;
  readonly #ctx: ServerContext;
  readonly #call: ServerDuplexStream<PbKeepAliveRequest, object>;
  readonly #pending: PbKeepAliveRequest[] = [];
  #handling = false;
  #readPaused = false;
  #done = false;
  /** Resolves a wait for 'drain': also when the stream closes, so the handler ends. */
  #drained: (() => void) | undefined;

  constructor(ctx: ServerContext, call: ServerDuplexStream<PbKeepAliveRequest, object>) {
    this.#ctx = ctx;
    this.#call = call;
    this.requireLeader = requiresLeader(call.metadata);
    call.on('data', (req: PbKeepAliveRequest) => this.#onRequest(req));
    // etcd: the client closing its side ends the stream.
    call.on('end', () => this.#finish());
    call.on('cancelled', () => this.#close());
    call.on('error', () => this.#close());
    call.on('close', () => this.#close());
  }

  fail(f: GrpcFailure): void {
    if (this.#done) return;
    this.#close();
    this.#call.emit('error', { code: f.code, details: f.details });
  }

  #close(): void {
    if (this.#done) return;
    this.#done = true;
    this.#pending.length = 0;
    this.#drained?.();
    this.#ctx.streams.delete(this);
  }

  /** The client half-closed: answer what was asked, then end with OK. */
  #finish(): void {
    if (this.#done) return;
    if (this.#handling || this.#pending.length > 0) {
      this.#pending.push(END);
      if (!this.#handling) void this.#handleAll();
      return;
    }
    this.#close();
    this.#call.end();
  }

  #onRequest(req: PbKeepAliveRequest): void {
    if (this.#done) return;
    this.#pending.push(req);
    if (!this.#readPaused && this.#pending.length >= this.#ctx.o.streamRequestsPendingMax) {
      this.#readPaused = true;
      this.#call.pause();
    }
    if (!this.#handling) void this.#handleAll();
  }

  async #handleAll(): Promise<void> {
    this.#handling = true;
    const ctx = this.#ctx;
    try {
      while (!this.#done) {
        const req = this.#pending.shift();
        if (!req) break;
        if (req === END) {
          this.#close();
          this.#call.end();
          return;
        }
        if (this.#readPaused && this.#pending.length < ctx.o.streamRequestsPendingMax / 2) {
          this.#readPaused = false;
          this.#call.resume();
        }
        const id = big(req.ID);
        const header = ctx.currentHeader();
        let ttl = 0;
        if (id > 0n) {
          try {
            ttl = Math.max(0, (await ctx.backend.kv.lease.keepAliveOnce(id)).ttlSeconds);
          } catch (err) {
            if (!ConclaveError.is(err, ErrorCode.LeaseNotFound)) throw err;
          }
        }
        if (this.#done) return;
        const msg: Record<string, unknown> = id === 0n ? { header } : { header, ID: wire64(id) };
        if (ttl > 0) msg.TTL = ttl;
        if (!this.#call.write(msg))
          await new Promise<void>((r) => {
            this.#drained = r;
            this.#call.once('drain', r);
          });
      }
    } catch (err) {
      this.fail(ctx.failure(err));
    } finally {
      this.#handling = false;
    }
  }
}

/** Marks the client's half-close in the queue, so it is handled after the requests before it. */
const END: PbKeepAliveRequest = Object.freeze({});
