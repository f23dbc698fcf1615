/**
 * connect(url | options) → KV. The backends are loaded with dynamic import so that `conclave`
 * itself imports no backend code until one is asked for (a user of one backend loads nothing of
 * the other).
 *
 * URLs:
 *   etcd://host:port[,host:port…]      etcd over plaintext gRPC
 *   etcds://host:port[,host:port…]     etcd over TLS (system roots unless `tls` options are given)
 * A URL never carries credentials: userinfo (`etcd://alice:pw@host`) and query strings on etcd URLs
 * are refused, and every message shows the URL redacted (`etcd://alice:***@host`).
 *   embedded:                          an in-process single-node Raft store (memory)
 *   embedded:?nodes=3                  an in-process 3-node Raft cluster
 *   embedded:?dir=./data               a single durable node in ./data
 */
import { ConclaveError, ErrorCode } from './errors.js';
import type { KV } from './kv.js';

/** TLS settings of an etcd connection (`https://` or `etcds://` endpoints). */
export interface TlsOptions {
  /** PEM CA bundle to verify the server with (default: system roots). */
  ca?: Uint8Array | string;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: Uint8Array | string;
  /** The PEM private key of `cert`. */
  key?: Uint8Array | string;
  /** Override the name checked against the server certificate. */
  serverName?: string;
}

/** Options of a connection to real etcd (`connect('etcd://…')` or `connectEtcd`). */
export interface EtcdConnectOptions {
  /** Selects the etcd backend. */
  backend: 'etcd';
  /**
   * `host:port`, `http://host:port` (plaintext) or `https://host:port` (TLS) strings. The scheme
   * decides the transport: `https://` uses TLS even without `tls` options (system roots), a bare
   * `host:port` uses TLS when `tls` is given. Mixed schemes, `https://` with `tls: false`, `http://`
   * with `tls` options, and credentials in an endpoint are `invalid-argument`.
   */
  endpoints: string[];
  /** TLS options (TLS on), or `false` (plaintext; refused with `https://` endpoints). */
  tls?: TlsOptions | false;
  /**
   * `auth` over plaintext to a non-loopback endpoint: `'warn'` (default) emits one process warning
   * (code `CONCLAVE_PLAINTEXT_AUTH`); `'refuse'` makes connect() reject `invalid-argument`.
   */
  plaintextAuth?: 'warn' | 'refuse';
  /**
   * etcd username/password authentication (both non-empty, else `invalid-argument`). `connect()`
   * fetches a token first and rejects `unauthenticated` if etcd refuses the credentials; calls and
   * streams carry the token, and an expired one is replaced transparently (README, "Authentication").
   * Against an etcd with auth disabled the client goes on without a token. The password is never
   * logged nor put into an error message.
   */
  auth?: { username: string; password: string };
  /**
   * Deadline of every call in ms, retries included (default 10 s; etcdctl uses 5 s). It also bounds
   * a watch's creation and a lease keep-alive. A caller's signal can end a call earlier, never later.
   */
  callTimeoutMs?: number;
  /**
   * etcd's DialTimeout: connect() reaches a member within this many ms (default 3 s; endpoints are
   * tried in parallel) or rejects — `unavailable` naming each endpoint and why, or `tls-failure`.
   */
  dialTimeoutMs?: number;
  /**
   * Resolve connect() without reaching etcd (no dial; the first call connects). Refused credentials
   * and TLS failures then surface on the first call instead of at connect().
   */
  lazy?: boolean;
  /**
   * Largest response accepted, in bytes (default 16 MiB; etcd's Go client accepts 2 GiB). A larger
   * one fails `response-too-large`: read in pages with `limit`, or raise this.
   */
  maxReceiveBytes?: number;
  /**
   * Bytes one watch buffers for a consumer that is not reading before it ends with
   * `watch-overflow` (default 8 MiB; `bufferBatchesMax` bounds the batches too).
   */
  watchBufferBytesMax?: number;
  /**
   * Bytes all watches of the client buffer together (default 64 MiB). Past half of it the watch
   * stream is paused (flow control) until the consumers drained to a quarter; a batch past the
   * whole bound overflows its watch.
   */
  watchBuffersBytesMax?: number;
  /**
   * A watch stream paused longer than this (default 5 s) overflows the watch holding the most
   * bytes: etcd multiplexes a client's watches on one stream, so one consumer that never reads
   * must not stall the others.
   */
  watchPausedMsMax?: number;
}

/** Options of an in-process Raft store (`connect('embedded:…')`). */
export interface EmbeddedConnectOptions {
  /** Selects the embedded Raft backend. */
  backend: 'embedded';
  /** Members of the in-process cluster (default 1). */
  nodes?: number;
  /** Directory for durable storage; memory-only when absent. */
  dataDir?: string;
}

/** The options `connect()` takes: for etcd or for the embedded store. */
export type ConnectOptions = EtcdConnectOptions | EmbeddedConnectOptions;

/**
 * A URL or endpoint as it may be shown in a message or log: the password of any userinfo and the
 * value of every query parameter replaced by `***` (`etcd://alice:***@host:2379?password=***`).
 */
export function redactUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:(?:\/\/)?)([\s\S]*)$/i.exec(url);
  const head = m ? m[1]! : '';
  let rest = m ? m[2]! : url;
  // Userinfo ends at the last '@' (a password may hold '/', '?', '#' or '@'); over-redacting a
  // query value that holds an '@' is the safe mistake.
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const colon = rest.indexOf(':');
    const user = colon >= 0 && colon < at ? rest.slice(0, colon) : '';
    rest = `${user === '' || /[/?#]/.test(user) ? '' : `${user}:`}***${rest.slice(at)}`;
  }
  return head + rest.replace(/([?&;][^=&;#]*)=[^&;#]*/g, '$1=***');
}

function invalidUrl(message: string): never {
  throw new ConclaveError(ErrorCode.InvalidArgument, message, { details: { argument: 'url' } });
}

/**
 * The options a connect URL stands for (`etcd://host:port[,host:port…]`, `etcds://…`, `embedded:`,
 * `embedded:?nodes=3&dir=…`); `invalid-argument` for anything else. Credentials in a URL are
 * refused, and messages show it redacted.
 */
export function parseConnectUrl(url: string): ConnectOptions {
  if (typeof url !== 'string' || url.length === 0) {
    invalidUrl(
      'connect: expected a URL such as "etcd://127.0.0.1:2379" or "embedded:", or an options object',
    );
  }
  const shown = redactUrl(url);
  const m = /^([a-z]+):(.*)$/i.exec(url);
  const scheme = m?.[1]?.toLowerCase();
  const rest = m?.[2] ?? '';
  if (scheme === 'etcd' || scheme === 'etcds') {
    const afterSlashes = rest.replace(/^\/\//, '');
    if (afterSlashes.includes('@')) {
      invalidUrl(
        `connect: "${shown}" carries credentials; a URL must not (it would be logged and shown in ` +
          'errors): pass { backend: "etcd", endpoints, auth: { username, password } } instead',
      );
    }
    const authorityEnd = afterSlashes.search(/[/?#]/);
    const hosts = authorityEnd < 0 ? afterSlashes : afterSlashes.slice(0, authorityEnd);
    const tail = authorityEnd < 0 ? '' : afterSlashes.slice(authorityEnd);
    if (tail !== '' && tail !== '/') {
      invalidUrl(
        `connect: "${shown}" has a path or query; etcd URLs take none (credentials go in the auth option)`,
      );
    }
    const endpoints = hosts
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h.length > 0);
    if (endpoints.length === 0) {
      invalidUrl(`connect: "${shown}" names no endpoint; use etcd://host:port[,host:port]`);
    }
    for (const e of endpoints) {
      if (!/^(\[[0-9a-f:]+\]|[^:/\s]+):\d{1,5}$/i.test(e)) {
        invalidUrl(`connect: endpoint "${e}" in "${shown}" is not host:port`);
      }
    }
    return scheme === 'etcds' ? { backend: 'etcd', endpoints, tls: {} } : { backend: 'etcd', endpoints };
  }
  if (scheme === 'embedded') {
    const q = rest.replace(/^\/\//, '');
    const params = new URLSearchParams(q.startsWith('?') ? q.slice(1) : q);
    const out: EmbeddedConnectOptions = { backend: 'embedded' };
    for (const [k, v] of params) {
      if (k === 'nodes') {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > 9) {
          throw new ConclaveError(
            ErrorCode.InvalidArgument,
            `connect: nodes must be an integer from 1 to 9, got "${v}"`,
          );
        }
        out.nodes = n;
      } else if (k === 'dir') {
        if (v.length === 0)
          throw new ConclaveError(ErrorCode.InvalidArgument, 'connect: dir must not be empty');
        out.dataDir = v;
      } else {
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          `connect: unknown embedded parameter "${k}" (known: nodes, dir)`,
        );
      }
    }
    return out;
  }
  throw new ConclaveError(
    ErrorCode.InvalidArgument,
    `connect: unsupported URL "${shown}"; use etcd://host:port[,host:port], etcds://…, or embedded:[?nodes=N][&dir=PATH]`,
  );
}

/** Connects to a backend and returns the KV contract. */
export async function connect(target: string | ConnectOptions): Promise<KV> {
  const opts = typeof target === 'string' ? parseConnectUrl(target) : target;
  if (typeof opts !== 'object' || opts === null)
    invalidUrl('connect: expected a URL string or an options object');
  if (opts.backend === 'etcd') {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) {
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'connect: endpoints must be a non-empty array of host:port',
        { details: { argument: 'endpoints' } },
      );
    }
    // biome-ignore lint/style/noRestrictedImports: the one sanctioned, lazy edge from src/ to a backend.
    const mod = await import('../backends/etcd/index.js');
    return mod.connectEtcd(opts);
  }
  if (opts.backend === 'embedded') {
    // biome-ignore lint/style/noRestrictedImports: the one sanctioned, lazy edge from src/ to a backend.
    const mod = await import('../backends/raft/index.js');
    return mod.connectEmbedded(opts);
  }
  throw new ConclaveError(
    ErrorCode.InvalidArgument,
    `connect: unknown backend "${String((opts as { backend: unknown }).backend)}" (etcd or embedded)`,
  );
}
