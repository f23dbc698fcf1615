/**
 * connect(url | options) → KV. The backends are loaded with dynamic import so that `conclave`
 * itself imports no backend code until one is asked for (DESIGN.md §1).
 *
 * URLs:
 *   etcd://host:port[,host:port…]      etcd over plaintext gRPC
 *   etcds://host:port[,host:port…]     etcd over TLS (system roots unless `tls` options are given)
 *   embedded:                          an in-process single-node Raft store (memory)
 *   embedded:?nodes=3                  an in-process 3-node Raft cluster
 *   embedded:?dir=./data               a single durable node in ./data
 */
import { ConclaveError, ErrorCode } from './errors.js';
import type { KV } from './kv.js';

export interface TlsOptions {
  /** PEM CA bundle to verify the server with (default: system roots). */
  ca?: Uint8Array | string;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: Uint8Array | string;
  key?: Uint8Array | string;
  /** Override the name checked against the server certificate. */
  serverName?: string;
}

export interface EtcdConnectOptions {
  backend: 'etcd';
  /** `host:port` or `http(s)://host:port` strings. */
  endpoints: string[];
  tls?: TlsOptions;
  /**
   * etcd username/password authentication (both non-empty, else `invalid-argument`). `connect()`
   * fetches a token first and rejects `unauthenticated` if etcd refuses the credentials; calls and
   * streams carry the token, and an expired one is replaced transparently (README, "Authentication").
   * Against an etcd with auth disabled the client goes on without a token. The password is never
   * logged nor put into an error message.
   */
  auth?: { username: string; password: string };
  /** Per-call deadline in ms when the caller gave no signal (default 30 s). */
  callTimeoutMs?: number;
  /** Dial timeout for one endpoint in ms (default 3 s). */
  dialTimeoutMs?: number;
}

export interface EmbeddedConnectOptions {
  backend: 'embedded';
  /** Members of the in-process cluster (default 1). */
  nodes?: number;
  /** Directory for durable storage; memory-only when absent. */
  dataDir?: string;
}

export type ConnectOptions = EtcdConnectOptions | EmbeddedConnectOptions;

export function parseConnectUrl(url: string): ConnectOptions {
  if (typeof url !== 'string' || url.length === 0) {
    throw new TypeError(
      'connect: expected a URL such as "etcd://127.0.0.1:2379" or "embedded:", or an options object',
    );
  }
  const m = /^([a-z]+):(.*)$/i.exec(url);
  const scheme = m?.[1]?.toLowerCase();
  const rest = m?.[2] ?? '';
  if (scheme === 'etcd' || scheme === 'etcds') {
    const hosts = rest.replace(/^\/\//, '').replace(/\/.*$/, '');
    const endpoints = hosts
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h.length > 0);
    if (endpoints.length === 0) {
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `connect: "${url}" names no endpoint; use etcd://host:port[,host:port]`,
      );
    }
    for (const e of endpoints) {
      if (!/^(\[[0-9a-f:]+\]|[^:/\s]+):\d{1,5}$/i.test(e)) {
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          `connect: endpoint "${e}" in "${url}" is not host:port`,
        );
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
    `connect: unsupported URL "${url}"; use etcd://host:port[,host:port], etcds://…, or embedded:[?nodes=N][&dir=PATH]`,
  );
}

/** Connects to a backend and returns the KV contract. */
export async function connect(target: string | ConnectOptions): Promise<KV> {
  const opts = typeof target === 'string' ? parseConnectUrl(target) : target;
  if (typeof opts !== 'object' || opts === null)
    throw new TypeError('connect: expected a URL string or an options object');
  if (opts.backend === 'etcd') {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) {
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'connect: endpoints must be a non-empty array of host:port',
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
