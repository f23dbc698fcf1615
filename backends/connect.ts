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
import { ConclaveError, ErrorCode } from '../src/errors.js';
import type { KV } from '../src/kv.js';
import { redactUrl } from '../src/redact.js';
import type { EtcdConnectOptions } from './etcd/options.js';
import type { EmbeddedConnectOptions } from './raft/embedded.js';

export type { EtcdConnectOptions, TlsOptions } from './etcd/options.js';
export type { EmbeddedConnectOptions } from './raft/embedded.js';

/** The options `connect()` takes: for etcd or for the embedded store. */
export type ConnectOptions = EtcdConnectOptions | EmbeddedConnectOptions;

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
    // Loaded lazily: an application using one backend loads none of the other's code.
    const mod = await import('./etcd/index.js');
    return mod.connectEtcd(opts);
  }
  if (opts.backend === 'embedded') {
    // Loaded lazily: an application using one backend loads none of the other's code.
    const mod = await import('./raft/index.js');
    return mod.connectEmbedded(opts);
  }
  throw new ConclaveError(
    ErrorCode.InvalidArgument,
    `connect: unknown backend "${String((opts as { backend: unknown }).backend)}" (etcd or embedded)`,
  );
}
