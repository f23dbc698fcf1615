/**
 * Endpoints and transport security, decided once at connect() and never silently downgraded.
 *
 * The scheme decides, as in etcd's Go client (clientv3 uses TLS for `https://` endpoints and
 * plaintext for `http://`; a bare `host:port` uses TLS when TLS options were given):
 *   - `https://` or `etcds://` endpoints → TLS (the system roots unless `tls.ca` is given);
 *   - `http://` or `etcd://` endpoints   → plaintext;
 *   - bare `host:port`                   → TLS when `tls` is an object or another endpoint says
 *                                          `https://`, plaintext otherwise.
 * Where etcd's Go client would quietly pick one, Conclave refuses (`invalid-argument`): endpoints
 * that mix plaintext and TLS schemes, `https://` with `tls: false`, and `http://` with TLS options
 * (the caller believed the connection was protected).
 *
 * Secrets never travel in endpoints: userinfo (`http://alice:pw@host`) and query strings are
 * refused, and the message shows them redacted (redactUrl).
 */

import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { redactUrl } from '../../src/redact.js';
import type { EtcdConnectOptions, TlsOptions } from './options.js';

export interface Endpoint {
  /** `host:port` as gRPC dials it (IPv6 in brackets). */
  readonly address: string;
  /** The host names a loopback address (127.0.0.0/8, ::1, localhost). */
  readonly loopback: boolean;
}

export interface Transport {
  readonly endpoints: readonly Endpoint[];
  /** TLS options to use, or undefined for plaintext. */
  readonly tls: TlsOptions | undefined;
}

const plainSchemes = new Set(['http', 'etcd']);
const tlsSchemes = new Set(['https', 'etcds']);

function invalid(message: string): never {
  throw new ConclaveError(ErrorCode.InvalidArgument, message, { details: { argument: 'endpoints' } });
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

interface Parsed {
  readonly address: string;
  readonly host: string;
  /** true for a TLS scheme, false for a plaintext one, undefined for a bare host:port. */
  readonly secure: boolean | undefined;
}

function parseOne(e: unknown): Parsed {
  if (typeof e !== 'string' || e.length === 0) {
    invalid('endpoints: each endpoint must be a non-empty string such as "127.0.0.1:2379"');
  }
  const shown = redactUrl(e);
  const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(e);
  let rest = e;
  let secure: boolean | undefined;
  if (m) {
    const scheme = m[1]!.toLowerCase();
    if (plainSchemes.has(scheme)) secure = false;
    else if (tlsSchemes.has(scheme)) secure = true;
    else invalid(`endpoints: "${shown}" has scheme "${scheme}"; use http://, https:// or host:port`);
    rest = m[2]!;
  }
  const authorityEnd = rest.search(/[/?#]/);
  const authority = authorityEnd < 0 ? rest : rest.slice(0, authorityEnd);
  const tail = authorityEnd < 0 ? '' : rest.slice(authorityEnd);
  if (e.includes('@')) {
    invalid(
      `endpoints: "${shown}" carries credentials; they are not accepted in endpoints (they would be ` +
        'logged and shown in errors): pass auth: { username, password } instead',
    );
  }
  if (tail !== '' && tail !== '/') {
    invalid(`endpoints: "${shown}" has a path or query; an endpoint is [http(s)://]host:port`);
  }
  const hp = /^(\[[0-9a-f:.]+\]|[^:/\s[\]]+):(\d{1,5})$/i.exec(authority);
  if (!hp || Number(hp[2]) > 65535) {
    invalid(`endpoints: "${shown}" is not [http(s)://]host:port`);
  }
  return { address: authority, host: hp[1]!, secure };
}

/** Parses and checks the endpoints and the TLS choice of `opts` (see the module comment). */
export function resolveTransport(opts: EtcdConnectOptions): Transport {
  if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) {
    invalid('endpoints: must be a non-empty array of host:port (or http(s)://host:port)');
  }
  const parsed = opts.endpoints.map(parseOne);
  const tlsOpt = Object.hasOwn(opts, 'tls') ? opts.tls : undefined;
  if (tlsOpt !== undefined && tlsOpt !== false && (typeof tlsOpt !== 'object' || tlsOpt === null)) {
    invalid('tls: must be an object of TLS options, or false for plaintext');
  }
  const plain = parsed.filter((p) => p.secure === false);
  const secure = parsed.filter((p) => p.secure === true);
  if (plain.length > 0 && secure.length > 0) {
    invalid(
      `endpoints: mixes plaintext (${plain[0]!.address} by http://) and TLS ` +
        `(${secure[0]!.address} by https://) endpoints; one client uses one transport for all of them`,
    );
  }
  if (secure.length > 0 && tlsOpt === false) {
    invalid(`endpoints: ${secure[0]!.address} is https:// but tls is false; drop one of them`);
  }
  if (plain.length > 0 && typeof tlsOpt === 'object') {
    invalid(
      `endpoints: ${plain[0]!.address} is http:// (plaintext) but TLS options were given; ` +
        'use https:// to connect with TLS, or drop tls',
    );
  }
  const useTls = secure.length > 0 || typeof tlsOpt === 'object';
  const tls = useTls ? checkTls(typeof tlsOpt === 'object' ? tlsOpt : {}) : undefined;
  return {
    endpoints: parsed.map((p) => ({ address: p.address, loopback: isLoopbackHost(p.host) })),
    tls,
  };
}

function pem(name: string, v: unknown): void {
  if (v !== undefined && typeof v !== 'string' && !(v instanceof Uint8Array)) {
    throw new ConclaveError(ErrorCode.InvalidArgument, `tls.${name}: must be PEM text (string or bytes)`, {
      details: { argument: `tls.${name}` },
    });
  }
}

/** Own properties only; a client certificate needs its key and the reverse. */
function checkTls(t: TlsOptions): TlsOptions {
  const own = (k: keyof TlsOptions) => (Object.hasOwn(t, k) ? t[k] : undefined);
  const out: {
    ca?: Uint8Array | string;
    cert?: Uint8Array | string;
    key?: Uint8Array | string;
    serverName?: string;
  } = {};
  const ca = own('ca');
  const cert = own('cert');
  const key = own('key');
  const serverName = own('serverName');
  pem('ca', ca);
  pem('cert', cert);
  pem('key', key);
  if ((cert === undefined) !== (key === undefined)) {
    const [has, lacks] = cert === undefined ? ['key', 'cert'] : ['cert', 'key'];
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `tls.${lacks}: tls.${has} was given without tls.${lacks}; mutual TLS needs both the client certificate and its key`,
      { details: { argument: `tls.${lacks}` } },
    );
  }
  if (serverName !== undefined && (typeof serverName !== 'string' || serverName.length === 0)) {
    throw new ConclaveError(ErrorCode.InvalidArgument, 'tls.serverName: must be a non-empty string', {
      details: { argument: 'tls.serverName' },
    });
  }
  if (ca !== undefined) out.ca = ca;
  if (cert !== undefined) out.cert = cert;
  if (key !== undefined) out.key = key;
  if (serverName !== undefined) out.serverName = serverName as string;
  return out;
}

/** The code of the process warning for credentials sent over plaintext to a non-loopback address. */
export const plaintextAuthWarningCode = 'CONCLAVE_PLAINTEXT_AUTH';
let plaintextAuthWarned = false;

/**
 * `auth` over plaintext to a non-loopback endpoint sends the password (Authenticate) and the token
 * (every call) in the clear. etcd's own clients allow it, so by default Conclave allows it too but
 * says so once per process (`process.emitWarning`, code CONCLAVE_PLAINTEXT_AUTH);
 * `plaintextAuth: 'refuse'` turns it into an `invalid-argument` at connect().
 */
export function checkPlaintextAuth(opts: EtcdConnectOptions, t: Transport, hasAuth: boolean): void {
  if (!hasAuth || t.tls !== undefined) return;
  const exposed = t.endpoints.filter((e) => !e.loopback).map((e) => e.address);
  if (exposed.length === 0) return;
  const mode = Object.hasOwn(opts, 'plaintextAuth') ? opts.plaintextAuth : undefined;
  if (mode !== undefined && mode !== 'warn' && mode !== 'refuse') {
    invalid(
      `plaintextAuth: must be 'warn' or 'refuse', got ${typeof mode === 'string' ? `"${mode}"` : typeof mode}`,
    );
  }
  const what =
    `auth over plaintext to ${exposed.join(', ')}: the password and the auth token cross the ` +
    'network unencrypted; use https:// endpoints (TLS)';
  if (mode === 'refuse') {
    throw new ConclaveError(ErrorCode.InvalidArgument, `${what}, or drop plaintextAuth: 'refuse'`, {
      details: { argument: 'plaintextAuth' },
    });
  }
  if (plaintextAuthWarned) return;
  plaintextAuthWarned = true;
  process.emitWarning(`${what} (plaintextAuth: 'refuse' makes this an error)`, {
    code: plaintextAuthWarningCode,
  });
}
