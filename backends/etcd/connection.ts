/**
 * Endpoints, channels and unary calls with failover. One gRPC client (channel) per endpoint,
 * created lazily; calls go to the current endpoint and move to the next one on a connection
 * failure. Safe calls (reads, keep-alives, status, and writes that certainly never left this
 * process) are retried with backoff up to `limits.retryAttemptsMax`; a write whose outcome is
 * unknown is never retried (it surfaces as `indeterminate`).
 *
 * With `auth`, every call and stream carries the current token as metadata `token` (auth.ts). A
 * call refused for a stale token is re-sent once after a (shared) re-authentication, writes
 * included: etcd refuses such a call before applying it.
 */
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { limits } from '../../src/limits.js';
import { decoder, encoder, methods, pb } from '../../src/protocol/codec.js';
import {
  AuthTokens,
  type Credentials,
  checkCredentials,
  isAuthNotEnabled,
  isStaleTokenError,
} from './auth.js';
import { checkDecodedSize } from './decode-guard.js';
import { checkPlaintextAuth, resolveTransport } from './endpoints.js';
import {
  clientCertAlert,
  clientCertProblem,
  grpcReason,
  isClosedAtHandshake,
  isGrpcError,
  isPreSendFailure,
  isTlsFailure,
  mapGrpcError,
} from './errors.js';
import type { EtcdConnectOptions } from './options.js';

export interface Method<Res> {
  readonly path: string;
  readonly serialize: (m: object) => Buffer;
  readonly deserialize: (b: Buffer) => Res;
  readonly responseType: protobuf.Type;
}

export function method<Res>(path: string, req: protobuf.Type, res: protobuf.Type): Method<Res> {
  return { path, serialize: encoder(req), deserialize: decoder<Res>(res), responseType: res };
}

const authenticateMethod = method<{ token?: string }>(
  methods.authenticate,
  pb.AuthenticateRequest,
  pb.AuthenticateResponse,
);

export interface CallPolicy {
  /** Reads and idempotent calls: retry on any connection failure. */
  readonly safe: boolean;
  readonly what: string;
}

/**
 * Defaults of the connect options that bound time and memory (docs/errors.md, docs/security.md).
 * etcd's Go client has no default call deadline (contexts) and etcdctl uses 5 s per command; its
 * DialTimeout has no default and etcdctl uses 2 s. Its receive limit is 2 GiB (math.MaxInt32):
 * etcd's server never sends more than one response per request and a Range can be large. Ours is
 * 16 MiB: a response is decoded into objects several times its wire size, and a client that
 * trusts any server must not let one response cost gigabytes; a larger range is read in pages
 * (`limit`) or with a raised `maxReceiveBytes`.
 */
export const etcdClientDefaults = {
  callTimeoutMs: 10_000,
  dialTimeoutMs: 3_000,
  maxReceiveBytes: 16 * 1024 * 1024,
  /** Per watch, for a consumer that is not reading (watch.ts). */
  watchBufferBytesMax: 8 * 1024 * 1024,
  /** All watches of one client together; the stream pauses at half of it. */
  watchBuffersBytesMax: 64 * 1024 * 1024,
  /** A paused watch stream longer than this overflows the watch holding the most bytes. */
  watchPausedMsMax: 5_000,
} as const;

type NumericOption =
  | 'callTimeoutMs'
  | 'maxReceiveBytes'
  | 'dialTimeoutMs'
  | 'watchBufferBytesMax'
  | 'watchBuffersBytesMax'
  | 'watchPausedMsMax';

/** Largest request we send: etcd refuses more than --max-request-bytes (1.5 MiB by default) + 512 KiB of gRPC overhead anyway. */
const sendBytesMax = 16 * 1024 * 1024;

const channelOptions: grpc.ChannelOptions = {
  'grpc.max_send_message_length': sendBytesMax,
  // Pings find a dead peer while calls or streams are open. Not on an idle connection: etcd's
  // server enforces keepalive with PermitWithoutStream=false (and a 5 s minimum interval), so
  // pings without a call are "bad pings" and it answers them with GOAWAY (too_many_pings).
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 0,
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2_000,
};

/** A counting semaphore bounding in-flight calls (limits.inFlightCallsMax). */
class Gate {
  #free: number;
  readonly #waiters: Array<() => void> = [];
  constructor(n: number) {
    this.#free = n;
  }
  acquire(): Promise<void> | undefined {
    if (this.#free > 0) {
      this.#free--;
      return undefined;
    }
    return new Promise((r) => this.#waiters.push(r));
  }
  release(): void {
    const w = this.#waiters.shift();
    if (w) w();
    else this.#free++;
  }
}

export class Connection {
  readonly endpoints: readonly string[];
  readonly #credentials: grpc.ChannelCredentials;
  readonly #clients = new Map<string, grpc.Client>();
  readonly #callTimeoutMs: number;
  readonly #maxReceiveBytes: number;
  readonly #gate = new Gate(limits.inFlightCallsMax);
  readonly #auth: AuthTokens | undefined;
  #current = 0;
  #closed = false;
  /** The TLS options' CA and client certificate, to explain a refused client certificate. */
  #tlsCerts: { ca?: Uint8Array | string; cert?: Uint8Array | string } | undefined;

  constructor(opts: EtcdConnectOptions) {
    const transport = resolveTransport(opts);
    const credentials = checkCredentials(Object.hasOwn(opts, 'auth') ? opts.auth : undefined);
    checkPlaintextAuth(opts, transport, credentials !== undefined);
    this.#auth = credentials && new AuthTokens(credentials, (c) => this.#fetchToken(c));
    this.endpoints = transport.endpoints.map((e) => e.address);
    this.#callTimeoutMs = positiveInt(opts, 'callTimeoutMs', etcdClientDefaults.callTimeoutMs);
    this.#maxReceiveBytes = positiveInt(opts, 'maxReceiveBytes', etcdClientDefaults.maxReceiveBytes);
    const tls = transport.tls;
    this.secure = tls !== undefined;
    // TLS verifies the server's chain against `tls.ca` or, without it, grpc-js's roots (Node's
    // bundled Mozilla list, or the file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names), and its name
    // against the endpoint's host (or tls.serverName). Nothing here turns verification off.
    this.#credentials = tls
      ? grpc.credentials.createSsl(
          tls.ca === undefined ? null : Buffer.from(tls.ca),
          tls.key === undefined ? null : Buffer.from(tls.key),
          tls.cert === undefined ? null : Buffer.from(tls.cert),
        )
      : grpc.credentials.createInsecure();
    if (tls?.serverName) this.#serverName = tls.serverName;
    if (tls?.cert !== undefined) this.#tlsCerts = { cert: tls.cert, ...(tls.ca ? { ca: tls.ca } : {}) };
  }

  /**
   * A connection closed at the TLS handshake with no reason given, explained by what is wrong
   * with the client certificate where that can be seen here (see clientCertProblem): a Node
   * server (conclave serve) refuses a certificate that way; etcd sends an alert, which
   * mapGrpcError names.
   */
  #certRefusal(err: unknown): { text: string; final: boolean } | undefined {
    if (this.#tlsCerts === undefined || !isClosedAtHandshake(err)) return undefined;
    return clientCertProblem(this.#tlsCerts);
  }

  /** `mapped` (the failure of `what`), with the client certificate's problem if it explains it. */
  #explained(err: unknown, mapped: ConclaveError, what: string): ConclaveError {
    const cert = this.#certRefusal(err);
    if (!cert) return mapped;
    if (cert.final)
      return new ConclaveError(
        ErrorCode.TlsFailure,
        `${what}: the server closed the connection at the TLS handshake: ${cert.text}; use a valid certificate signed by the CA the server trusts for clients`,
        { cause: err },
      );
    return new ConclaveError(
      mapped.code,
      `${mapped.message} (the server closed the connection at the TLS handshake; if it checks client certificates: ${cert.text})`,
      { cause: err, retryable: mapped.retryable },
    );
  }

  /** TLS is on for every endpoint. */
  readonly secure: boolean;

  readonly #deserializers = new Map<string, (b: Buffer) => unknown>();

  /**
   * `m`'s decoder behind the decoded-size bound (decode-guard.ts: 4 × maxReceiveBytes). A refused
   * response fails the call (or breaks the stream) with grpc-js's parse error carrying the reason.
   */
  deserializer<Res>(m: Method<Res>): (b: Buffer) => Res {
    let d = this.#deserializers.get(m.path);
    if (!d) {
      const budget = 4 * this.#maxReceiveBytes;
      d = (b: Buffer) => {
        checkDecodedSize(m.responseType, b, budget);
        return m.deserialize(b);
      };
      this.#deserializers.set(m.path, d);
    }
    return d as (b: Buffer) => Res;
  }

  #serverName: string | undefined;

  /** The per-call deadline (callTimeoutMs): every unary call and every stream request gets one. */
  get callTimeoutMs(): number {
    return this.#callTimeoutMs;
  }

  /** The watch buffer bounds of the connect options, checked. */
  static watchBounds(opts: EtcdConnectOptions): {
    watchBufferBytesMax: number;
    watchBuffersBytesMax: number;
    watchPausedMsMax: number;
  } {
    const d = etcdClientDefaults;
    return {
      watchBufferBytesMax: positiveInt(opts, 'watchBufferBytesMax', d.watchBufferBytesMax),
      watchBuffersBytesMax: positiveInt(opts, 'watchBuffersBytesMax', d.watchBuffersBytesMax),
      watchPausedMsMax: positiveInt(opts, 'watchPausedMsMax', d.watchPausedMsMax),
    };
  }

  /** Connect option `dialTimeoutMs`, checked. */
  static dialTimeoutMs(opts: EtcdConnectOptions): number {
    return positiveInt(opts, 'dialTimeoutMs', etcdClientDefaults.dialTimeoutMs);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The client of the current endpoint (created on first use). */
  client(index = this.#current): grpc.Client {
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the etcd client is closed');
    const ep = this.endpoints[index % this.endpoints.length]!;
    let c = this.#clients.get(ep);
    if (!c) {
      const o: grpc.ChannelOptions = {
        ...channelOptions,
        'grpc.max_receive_message_length': this.#maxReceiveBytes,
      };
      if (this.#serverName) o['grpc.ssl_target_name_override'] = this.#serverName;
      c = new grpc.Client(ep, this.#credentials, o);
      this.#clients.set(ep, c);
    }
    return c;
  }

  /**
   * Points the connection at the Raft leader's endpoint when it can find it (each member's Status
   * names the leader, and its header names the member): writes and linearizable reads sent to a
   * follower are forwarded to the leader, which costs a hop. Best-effort and bounded: one Status per
   * endpoint; on any failure the current endpoint stays.
   */
  async preferLeader(
    status: (index: number) => Promise<{ memberId: bigint; leader: bigint }>,
  ): Promise<void> {
    if (this.endpoints.length < 2) return;
    try {
      const first = await status(this.#current);
      if (first.leader === 0n || first.leader === first.memberId) return;
      for (let i = 0; i < this.endpoints.length; i++) {
        if (i === this.#current) continue;
        const s = await status(i).catch(() => undefined);
        if (s && s.memberId === first.leader) {
          this.#current = i;
          return;
        }
      }
    } catch {
      // Leave the endpoint as it is: failover handles unreachable members.
    }
  }

  get currentIndex(): number {
    return this.#current;
  }

  /** Move to the next endpoint after a failure seen on `failedIndex` (no-op if someone already moved). */
  failover(failedIndex: number): void {
    if (this.#current === failedIndex) this.#current = (failedIndex + 1) % this.endpoints.length;
  }

  /** One attempt on one endpoint, no retry (used by preferLeader and dial). */
  unaryAt<Res>(
    m: Method<Res>,
    req: object,
    index: number,
    signal?: AbortSignal,
    deadline?: number,
  ): Promise<Res> {
    return this.#once(m, req, index, this.#auth?.token, signal, deadline);
  }

  /**
   * etcd's DialTimeout: within `timeoutMs`, reach a member (any gRPC answer to `probe` will do:
   * an HTTP/2 connection was made and a server answered) or reject. Endpoints are tried in
   * parallel; refused connections are retried until the deadline, a TLS failure is final for its
   * endpoint. The first endpoint that answers becomes the current one. Rejects `tls-failure` when
   * some endpoint failed its TLS handshake (a configuration error, not a passing fault), else
   * `unavailable`; the message names every endpoint and why it failed.
   */
  async dial<Res>(probe: Method<Res>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const stop = new AbortController();
    const reasons: Array<{ endpoint: string; reason: string; tls: boolean }> = [];
    const tryEndpoint = async (index: number): Promise<number> => {
      let last: { reason: string; tls: boolean } = { reason: 'no attempt', tls: false };
      for (let attempt = 0; ; attempt++) {
        if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the etcd client is closed');
        try {
          await this.#once(probe, {}, index, undefined, stop.signal, deadline);
          return index;
        } catch (err) {
          if (stop.signal.aborted || this.#closed) throw err;
          if (!isGrpcError(err)) throw err;
          const cert = this.#certRefusal(err);
          const tls = isTlsFailure(err) || cert?.final === true;
          const reached =
            !tls &&
            err.code !== grpc.status.UNAVAILABLE &&
            err.code !== grpc.status.DEADLINE_EXCEEDED &&
            err.code !== grpc.status.CANCELLED;
          // Any other status came from a server: the member is reachable.
          if (reached) return index;
          last =
            err.code === grpc.status.DEADLINE_EXCEEDED
              ? {
                  reason: isPreSendFailure(err)
                    ? `no connection within ${timeoutMs} ms (nothing answered the gRPC/HTTP2 handshake)`
                    : `no answer within ${timeoutMs} ms`,
                  tls: false,
                }
              : {
                  reason: cert
                    ? `${grpcReason(err)}: the server closed the connection at the TLS handshake; ${cert.text}`
                    : grpcReason(err),
                  tls,
                };
          const backoff = Math.min(500, 50 * 2 ** attempt);
          if (tls || Date.now() + backoff >= deadline) break;
          await sleep(backoff, stop.signal).catch(() => undefined);
        }
      }
      reasons[index] = { endpoint: this.endpoints[index]!, ...last };
      throw last;
    };
    try {
      const index = await Promise.any(this.endpoints.map((_, i) => tryEndpoint(i)));
      this.#current = index;
    } catch {
      if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the etcd client is closed');
      const list = reasons.filter((r) => r !== undefined);
      const tls = list.some((r) => r.tls);
      const text = list.map((r) => `${r.endpoint}: ${r.reason}`).join('; ');
      const details = { endpoints: list.map((r) => ({ endpoint: r.endpoint, reason: r.reason })) };
      if (tls) {
        const alert = list.map((r) => clientCertAlert(r.reason)).find((x) => x !== undefined);
        throw new ConclaveError(
          ErrorCode.TlsFailure,
          alert
            ? `connect: the TLS handshake was refused: ${alert} (${text}); check tls.cert and tls.key against the CA the server trusts for clients (etcd: --trusted-ca-file)`
            : `connect: the TLS handshake failed (${text}); check tls.ca (or the system roots), the server certificate's name and validity, and the client certificate`,
          { details },
        );
      }
      throw new ConclaveError(
        ErrorCode.Unavailable,
        `connect: no etcd endpoint could be reached within ${timeoutMs} ms (${text}); check that etcd runs there, or pass lazy: true to connect without reaching it`,
        { details },
      );
    } finally {
      stop.abort();
    }
  }

  async unary<Res>(
    m: Method<Res>,
    req: object,
    policy: CallPolicy,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    signal?.throwIfAborted();
    const wait = this.#gate.acquire();
    if (wait) await wait;
    try {
      return await this.#call(m, req, policy, signal, this.#auth);
    } finally {
      this.#gate.release();
    }
  }

  /** The retry loop of one call; with `auth`, each attempt carries the current token. */
  async #call<Res>(
    m: Method<Res>,
    req: object,
    policy: CallPolicy,
    signal: AbortSignal | undefined,
    auth: AuthTokens | undefined,
  ): Promise<Res> {
    // One deadline for the whole call, retries included (callTimeoutMs).
    const deadline = Date.now() + this.#callTimeoutMs;
    let attempt = 0;
    let reauthenticated = false;
    while (true) {
      if (auth && !auth.settled) await auth.refresh(undefined, signal);
      const token = auth?.token;
      const index = this.#current;
      try {
        return await this.#once(m, req, index, token, signal, deadline);
      } catch (err) {
        if (signal?.aborted) throw abortReason(signal);
        if (auth && !reauthenticated && isStaleTokenError(err) && !this.#closed) {
          // Refused before any effect (see auth.ts): fetch a fresh token once and re-send.
          reauthenticated = true;
          await auth.refresh(token, signal);
          continue;
        }
        attempt++;
        const backoff = Math.min(1000, 50 * 2 ** attempt);
        const retry =
          this.#certRefusal(err)?.final !== true &&
          this.#shouldRetry(err, policy) &&
          attempt < limits.retryAttemptsMax &&
          !this.#closed &&
          Date.now() + backoff < deadline;
        if (!retry) throw this.#explained(err, mapGrpcError(err, policy.what, !policy.safe), policy.what);
        if (isGrpcError(err) && err.code === grpc.status.UNAVAILABLE) this.failover(index);
        await sleep(backoff, signal);
      }
    }
  }

  /**
   * Authenticate (no token, outside the in-flight gate so callers holding the gate can wait for
   * it). Resolves undefined when the server has auth disabled. Authenticate only creates a token,
   * so it is retried like a read.
   */
  async #fetchToken(c: Credentials): Promise<string | undefined> {
    try {
      const r = await this.#call(
        authenticateMethod,
        { name: c.username, password: c.password },
        { safe: true, what: `authenticate as user "${c.username}"` },
        AbortSignal.timeout(this.#callTimeoutMs),
        undefined,
      );
      if (!r.token) {
        throw new ConclaveError(
          ErrorCode.Unauthenticated,
          `authenticate as user "${c.username}": etcd returned no token`,
        );
      }
      return r.token;
    } catch (err) {
      if (isAuthNotEnabled(err)) return undefined;
      if (err instanceof ConclaveError) throw err;
      throw new ConclaveError(
        ErrorCode.DeadlineExceeded,
        `authenticate as user "${c.username}": no answer within ${this.#callTimeoutMs} ms`,
        { cause: err },
      );
    }
  }

  /** Whether `auth` was given. */
  get hasAuth(): boolean {
    return this.#auth !== undefined;
  }

  /** The token calls and new streams carry now (undefined without auth or before the first one). */
  get token(): string | undefined {
    return this.#auth?.token;
  }

  /**
   * Fetches a token unless one newer than `stale` is held or on its way (one Authenticate shared
   * by all callers). Without `auth` it does nothing. EtcdKV.ready() calls it with `stale` undefined.
   */
  async refreshToken(stale: string | undefined, signal?: AbortSignal): Promise<void> {
    if (this.#auth) await this.#auth.refresh(stale, signal);
  }

  /**
   * Retried inside the call (with backoff, within its deadline): failures that certainly had no
   * effect and may pass — etcd shed load or had no leader to propose to, or no connection was made
   * — and, for safe calls, any connection failure. Never a TLS failure or a size refusal: those
   * do not pass by repeating.
   */
  #shouldRetry(err: unknown, policy: CallPolicy): boolean {
    if (!isGrpcError(err)) return false;
    const d = err.details ?? '';
    if (isTlsFailure(err)) return false;
    if (/etcdserver: no leader|etcdserver: too many requests/.test(d)) return true;
    if (err.code === grpc.status.RESOURCE_EXHAUSTED) return false;
    if (err.code === grpc.status.DEADLINE_EXCEEDED) return false;
    if (err.code !== grpc.status.UNAVAILABLE) return false;
    return policy.safe || isPreSendFailure(err);
  }

  #once<Res>(
    m: Method<Res>,
    req: object,
    index: number,
    token: string | undefined,
    signal: AbortSignal | undefined,
    deadline: number = Date.now() + this.#callTimeoutMs,
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const md = new grpc.Metadata();
      if (token !== undefined) md.set('token', token);
      const call = this.client(index).makeUnaryRequest(
        m.path,
        m.serialize,
        this.deserializer(m),
        req,
        md,
        { deadline },
        (err, res) => {
          signal?.removeEventListener('abort', onAbort);
          if (err) reject(err);
          else resolve(res as Res);
        },
      );
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Metadata for opening a stream: `hasleader` (etcd's clientv3 attaches it so a member without a
   * leader refuses the stream) and the current token. A stream keeps the token it was opened with,
   * so a stream re-opened after a break or a refusal carries the fresh one.
   */
  streamMetadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('hasleader', 'true');
    const token = this.#auth?.token;
    if (token !== undefined) md.set('token', token);
    return md;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#auth?.forget();
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
  }
}

function positiveInt(opts: EtcdConnectOptions, name: NumericOption, dflt: number): number {
  const v = Object.hasOwn(opts, name) ? opts[name] : undefined;
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name}: must be a positive integer, got ${String(v)}`,
      {
        details: { argument: name },
      },
    );
  }
  return v;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortReason(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
