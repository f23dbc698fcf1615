/**
 * TLS for `conclave serve`: client URLs (`--cert-file`, `--key-file`, `--trusted-ca-file`,
 * `--client-cert-auth`, `--client-crl-file`, `--auto-tls`) and peer URLs (the same with `--peer-`,
 * plus `--peer-cert-allowed-cn`), with etcd 3.4's meanings (etcd's `pkg/transport` TLSInfo):
 *
 * - `https://` URLs need a certificate and key (or auto-TLS); a member refuses to start otherwise.
 * - client-cert-auth: the other side must present a certificate that chains to the trusted CA
 *   (`requestCert` + `rejectUnauthorized`): no certificate, another CA, an expired or not-yet-valid
 *   certificate, or one revoked by the CRL ends the handshake before any byte reaches the member.
 * - the CRL is checked by OpenSSL during the handshake (etcd checks the serials right after it;
 *   either way the connection never carries a request).
 * - `--peer-cert-allowed-cn`: an accepted peer connection whose client certificate's Common Name
 *   differs is closed before its first frame is read (etcd checks it in VerifyPeerCertificate,
 *   i.e. on the accepting side only; so does this).
 * - auto-TLS makes a self-signed certificate with the `openssl` command (Node 20 cannot issue
 *   X.509) in `<data-dir>/fixtures/client|peer`, reused on restart, as etcd writes its own there.
 *   It encrypts but authenticates nothing: a peer dialed with auto-TLS is not verified (etcd sets
 *   InsecureSkipVerify for self-signed certificates). For tests only.
 * - Certificates, keys, CA bundles and CRLs are re-read when their files change (checked every
 *   `certReloadCheckMs`): new connections use the new files, established ones keep theirs. A file
 *   that does not load (a half-written rotation) leaves the old material in use and is logged.
 * - A handshake that does not complete within the handshake timeout is closed (Node's default is
 *   120 s; a client that opens connections and stalls would hold sockets that long).
 * - Failed handshakes are logged at most once per `handshakeLogEveryMs` per listener with a count,
 *   so a scanner cannot flood the log.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { isIP, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { listenOn } from './listener.js';

/** How often certificate files are checked for changes. */
export const certReloadCheckMs = 1000;
/** The largest certificate, key, CA bundle or CRL file read (a bound on what a path can cost). */
export const pemFileBytesMax = 4 * 1024 * 1024;
/** Default TLS handshake timeout (ms) on client and peer URLs (`--tls-handshake-timeout`). */
export const tlsHandshakeTimeoutMsDefault = 10_000;
/** Failed-handshake log lines per listener: at most one per this interval (with a count). */
export const handshakeLogEveryMs = 10_000;
/** Validity of an auto-TLS certificate (etcd: one year). */
export const autoTlsDays = 365;

/** The logger shape used here (pino's). */
export interface TlsLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** One side's TLS flags (`--cert-file` … or `--peer-cert-file` …), as given. */
export interface TlsFlags {
  readonly certFile: string;
  readonly keyFile: string;
  readonly trustedCaFile: string;
  readonly clientCertAuth: boolean;
  readonly autoTls: boolean;
  readonly crlFile: string;
  /** Peer side only: `--peer-cert-allowed-cn`. */
  readonly allowedCn?: string;
  /** `--cipher-suites` as OpenSSL's list (server/cipher-suites.ts): TLS 1.2 suites allowed. */
  readonly ciphers?: string;
}

export const noTls: TlsFlags = {
  certFile: '',
  keyFile: '',
  trustedCaFile: '',
  clientCertAuth: false,
  autoTls: false,
  crlFile: '',
};

/** Whether any TLS material or option is configured on this side. */
export function tlsConfigured(f: TlsFlags): boolean {
  return (
    f.certFile !== '' ||
    f.keyFile !== '' ||
    f.trustedCaFile !== '' ||
    f.clientCertAuth ||
    f.autoTls ||
    f.crlFile !== '' ||
    (f.allowedCn ?? '') !== ''
  );
}

/**
 * The contradictions etcd refuses (or that could only fail later), as one line each; `side` is
 * 'client' or 'peer' (flag prefix ''/'peer-'). `urls` are every URL of that side (listen and
 * advertised). Returns the first problem, or undefined.
 */
export function checkTlsFlags(
  side: 'client' | 'peer',
  f: TlsFlags,
  urls: readonly string[],
): string | undefined {
  const p = side === 'peer' ? 'peer-' : '';
  const https = urls.filter((u) => u.startsWith('https://'));
  const http = urls.filter((u) => u.startsWith('http://'));
  if ((f.certFile === '') !== (f.keyFile === ''))
    return `--${p}cert-file and --${p}key-file go together (a certificate and its private key)`;
  const material = f.certFile !== '' || f.autoTls;
  if (https.length > 0 && !material)
    return `${side} URL ${https[0]} is https:// but no certificate is given: set --${p}cert-file and --${p}key-file (or --${p}auto-tls, for tests only)`;
  if (https.length === 0 && tlsConfigured(f))
    return `--${p}cert-file/--${p}key-file/--${p}trusted-ca-file/--${p}client-cert-auth/--${p}auto-tls are set but every ${side} URL is http:// (${http[0] ?? 'none'}): use https:// URLs, or drop the TLS flags`;
  if (side === 'peer' && https.length > 0 && http.length > 0)
    return `peer URLs mix https:// (${https[0]}) and http:// (${http[0]}): every member's peer URLs use one scheme`;
  if (f.clientCertAuth && f.trustedCaFile === '')
    return `--${p}client-cert-auth needs --${p}trusted-ca-file (the CA that signs the certificates to accept)`;
  if (f.crlFile !== '' && !f.clientCertAuth)
    return `--${p === '' ? 'client-' : p}crl-file is checked only with --${p}client-cert-auth: set it too`;
  if ((f.allowedCn ?? '') !== '' && !f.clientCertAuth)
    return '--peer-cert-allowed-cn needs --peer-client-cert-auth (a peer without a certificate has no CN)';
  if (side === 'peer' && f.autoTls && f.certFile === '' && f.clientCertAuth)
    return '--peer-auto-tls makes self-signed certificates no CA can vouch for: it cannot be combined with --peer-client-cert-auth; give --peer-cert-file/--peer-key-file signed by --peer-trusted-ca-file instead';
  return undefined;
}

function readPem(file: string, flag: string): Buffer {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (err) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${flag}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  if (size > pemFileBytesMax)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${flag}: ${file} is ${size} bytes, more than ${pemFileBytesMax}: is it the right file?`,
    );
  return readFileSync(file);
}

/**
 * A CRL file as OpenSSL's PEM: etcd reads `--client-crl-file` with Go's x509.ParseCRL, which takes
 * PEM or DER (etcd's own fixture `revoke.crl` is DER); Node's `crl` option takes PEM only, so a
 * file that is not PEM is wrapped as one (a file that is neither then fails to load, as in etcd).
 */
export function crlAsPem(b: Buffer): Buffer {
  if (b.includes('-----BEGIN')) return b;
  const lines = b.toString('base64').match(/.{1,64}/g) ?? [];
  return Buffer.from(`-----BEGIN X509 CRL-----\n${lines.join('\n')}\n-----END X509 CRL-----\n`);
}

function stamp(file: string): string {
  try {
    const s = statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return 'missing';
  }
}

interface Material {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
  readonly crl: Buffer | undefined;
}

/**
 * The certificate, key, CA bundle and CRL of one side, re-read when their files change. `verify`
 * false (auto-TLS) means a peer this side dials is not verified.
 */
export class TlsMaterial {
  readonly side: 'client' | 'peer';
  readonly flags: TlsFlags;
  readonly selfSigned: boolean;
  readonly #files: { cert: string; key: string; ca: string; crl: string };
  readonly #log: TlsLogger;
  #m: Material;
  #context: tls.SecureContext;
  #stamps: string;
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #listeners = new Set<() => void>();

  private constructor(
    side: 'client' | 'peer',
    flags: TlsFlags,
    files: { cert: string; key: string; ca: string; crl: string },
    selfSigned: boolean,
    log: TlsLogger,
  ) {
    this.side = side;
    this.flags = flags;
    this.selfSigned = selfSigned;
    this.#files = files;
    this.#log = log;
    this.#stamps = this.#stampAll();
    this.#m = this.#read();
    this.#context = this.#build(this.#m);
  }

  /**
   * Loads one side's material (generating the auto-TLS certificate in `<dataDir>/fixtures/<side>`
   * first when asked and no files are given). Throws `invalid-argument` naming the flag and file
   * when something does not load or the key does not match the certificate.
   */
  static async open(o: {
    side: 'client' | 'peer';
    flags: TlsFlags;
    dataDir: string;
    hosts: readonly string[];
    log: TlsLogger;
  }): Promise<TlsMaterial> {
    const f = o.flags;
    if (f.certFile === '' && f.autoTls) {
      const dir = join(o.dataDir, 'fixtures', o.side);
      const files = await autoTlsCert(dir, o.hosts);
      o.log.warn(
        { side: o.side, dir },
        `--${o.side === 'peer' ? 'peer-' : ''}auto-tls: using a self-signed certificate (encrypts, authenticates nothing; for tests only)`,
      );
      return new TlsMaterial(o.side, f, { ...files, ca: f.trustedCaFile, crl: f.crlFile }, true, o.log);
    }
    return new TlsMaterial(
      o.side,
      f,
      { cert: f.certFile, key: f.keyFile, ca: f.trustedCaFile, crl: f.crlFile },
      false,
      o.log,
    );
  }

  #flag(what: 'cert' | 'key' | 'ca' | 'crl'): string {
    const p = this.side === 'peer' ? 'peer-' : '';
    return {
      cert: `--${p}cert-file`,
      key: `--${p}key-file`,
      ca: `--${p}trusted-ca-file`,
      crl: this.side === 'peer' ? '--peer-crl-file' : '--client-crl-file',
    }[what];
  }

  #stampAll(): string {
    const f = this.#files;
    return [f.cert, f.key, f.ca, f.crl].map((x) => (x === '' ? '' : stamp(x))).join('|');
  }

  #read(): Material {
    const f = this.#files;
    return {
      cert: readPem(f.cert, this.#flag('cert')),
      key: readPem(f.key, this.#flag('key')),
      ca: f.ca === '' ? undefined : readPem(f.ca, this.#flag('ca')),
      crl: f.crl === '' ? undefined : crlAsPem(readPem(f.crl, this.#flag('crl'))),
    };
  }

  #build(m: Material): tls.SecureContext {
    try {
      return tls.createSecureContext(this.contextOptions(m));
    } catch (err) {
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `${this.#flag('cert')}/${this.#flag('key')}/${this.#flag('ca')}: the TLS files do not load: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  /** Secure-context options for the current files. */
  contextOptions(m: Material = this.#m): tls.SecureContextOptions {
    return {
      cert: m.cert,
      key: m.key,
      ...(m.ca ? { ca: m.ca } : {}),
      ...(m.crl ? { crl: m.crl } : {}),
      ...(this.flags.ciphers ? { ciphers: this.flags.ciphers } : {}),
      minVersion: 'TLSv1.2',
    };
  }

  /** The secure context for new connections (replaced when the files change). */
  get context(): tls.SecureContext {
    return this.#context;
  }

  /** Calls `cb` after each successful reload; starts the file check on first use. */
  onReload(cb: () => void): void {
    this.#listeners.add(cb);
    this.#timer ??= setInterval(() => this.checkFiles(), certReloadCheckMs);
    this.#timer.unref();
  }

  /** Re-reads the files if any changed; keeps the old material when the new does not load. */
  checkFiles(): boolean {
    const now = this.#stampAll();
    if (now === this.#stamps) return false;
    this.#stamps = now;
    let m: Material;
    let ctx: tls.SecureContext;
    try {
      m = this.#read();
      ctx = this.#build(m);
    } catch (err) {
      this.#log.error(
        { side: this.side, err: (err as Error).message },
        'changed TLS files do not load: still using the previous ones',
      );
      return false;
    }
    this.#m = m;
    this.#context = ctx;
    this.#log.info({ side: this.side }, 'TLS files changed: reloaded (new connections use them)');
    for (const cb of this.#listeners) cb();
    return true;
  }

  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }
}

/** Kinds of failed handshake tracked separately for logging (beyond: counted under 'other'). */
export const handshakeFailureKindsMax = 32;

/**
 * Counts failed handshakes and logs at most one line per kind (CERT_HAS_EXPIRED, NO_CERT, …) per
 * `handshakeLogEveryMs`, with how many were not logged since: a scanner cannot flood the log, and
 * each distinct reason still shows up.
 */
export class HandshakeFailures {
  count = 0;
  readonly #kinds = new Map<string, { last: number; suppressed: number }>();
  readonly #log: TlsLogger;
  readonly #what: string;

  constructor(log: TlsLogger, what: string) {
    this.#log = log;
    this.#what = what;
  }

  note(kind: string, reason: string, remote: string | undefined): void {
    this.count++;
    let k = this.#kinds.get(kind);
    if (!k) {
      if (this.#kinds.size >= handshakeFailureKindsMax) kind = 'other';
      k = this.#kinds.get(kind) ?? { last: Number.NEGATIVE_INFINITY, suppressed: 0 };
      this.#kinds.set(kind, k);
    }
    const now = performance.now();
    if (now - k.last < handshakeLogEveryMs) {
      k.suppressed++;
      return;
    }
    k.last = now;
    this.#log.warn(
      { remote, kind, reason, ...(k.suppressed > 0 ? { moreSinceLastLine: k.suppressed } : {}) },
      `refused a TLS handshake on the ${this.#what}`,
    );
    k.suppressed = 0;
  }
}

export interface TlsServerOptions {
  readonly material: TlsMaterial;
  readonly handshakeTimeoutMs: number;
  readonly log: TlsLogger;
  /** Names the listener in log lines ('client URL 127.0.0.1:2379', 'peer URL …'). */
  readonly what: string;
  /** ALPN protocols offered (client URLs: h2 and http/1.1). */
  readonly alpn?: readonly string[];
  /** Called with each socket whose handshake (and CN check) passed. */
  readonly onSecure: (s: tls.TLSSocket) => void;
}

/**
 * A TLS server over the side's material: verifies client certificates when client-cert-auth is on,
 * checks `--peer-cert-allowed-cn`, bounds the handshake, logs refusals (rate-limited), and swaps
 * in reloaded files for new connections.
 */
export function createTlsServer(o: TlsServerOptions): tls.Server & { failures: HandshakeFailures } {
  const m = o.material;
  const f = m.flags;
  const failures = new HandshakeFailures(o.log, o.what);
  const server = tls.createServer({
    ...m.contextOptions(),
    requestCert: f.clientCertAuth,
    // With a certificate required, OpenSSL ends a handshake that brings none with an alert
    // ("certificate required"); one that does not verify (another CA, expired, revoked) Node
    // closes right after the handshake, before 'secureConnection': nothing is ever read from it.
    // The reason is on the socket (`authorizationError`) when 'tlsClientError' reports it.
    rejectUnauthorized: f.clientCertAuth,
    handshakeTimeout: o.handshakeTimeoutMs,
    noDelay: true,
    ...(o.alpn ? { ALPNProtocols: [...o.alpn] } : {}),
  });
  m.onReload(() => server.setSecureContext(m.contextOptions()));
  server.on('tlsClientError', (err: NodeJS.ErrnoException, s) => {
    const remote = s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : undefined;
    const refused = (s as tls.TLSSocket & { authorizationError?: string }).authorizationError;
    if (refused) failures.note(String(refused), `client certificate refused: ${String(refused)}`, remote);
    else if (/peer did not return a certificate/.test(err.message))
      failures.note('NO_CERT', 'no client certificate (client-cert-auth requires one)', remote);
    else failures.note(err.code ?? 'TLS_ERROR', err.message.split('\n')[0]!, remote);
    s.destroy();
  });
  server.on('secureConnection', (s) => {
    s.on('error', () => undefined);
    const remote = `${s.remoteAddress}:${s.remotePort}`;
    if (f.clientCertAuth && !s.authorized) {
      // Not reached (rejectUnauthorized above); a guard should Node's behaviour ever change.
      failures.note(String(s.authorizationError), 'client certificate not verified', remote);
      s.destroy();
      return;
    }
    const cn = f.allowedCn ?? '';
    if (cn !== '') {
      const got = s.getPeerCertificate()?.subject?.CN;
      if (got !== cn) {
        failures.note(
          'CN_NOT_ALLOWED',
          `the peer certificate's CN "${String(got ?? '').slice(0, 64)}" is not --peer-cert-allowed-cn "${cn}"`,
          remote,
        );
        s.destroy();
        return;
      }
    }
    o.onSecure(s);
  });
  return Object.assign(server, { failures });
}

/**
 * Dials `host:port` over TLS with the side's material as the client certificate (verifying the
 * server against the CA, and its name against `host`; a self-signed auto-TLS side does not
 * verify). The socket emits 'secureConnect' once the handshake passed.
 */
export function tlsDial(m: TlsMaterial, host: string, port: number): tls.TLSSocket {
  const raw = tcpConnect({ host, port, noDelay: true });
  return tls.connect({
    socket: raw,
    host,
    ...(isIP(host) === 0 ? { servername: host } : {}),
    secureContext: m.context,
    rejectUnauthorized: !m.selfSigned,
  });
}

/** The transport seam (transport/tcp.ts): a TLS server and a TLS dialer over the peer material. */
export function peerTls(m: TlsMaterial, log: TlsLogger, handshakeTimeoutMs: number) {
  return {
    createServer: (what: string, onSecure: (s: Socket) => void): Server =>
      createTlsServer({ material: m, handshakeTimeoutMs, log, what, onSecure }),
    connect: (host: string, port: number): Socket => tlsDial(m, host, port),
  };
}

/**
 * A self-signed certificate and key for auto-TLS in `dir` (reused when both files exist, as etcd
 * reuses its fixtures), made with `openssl req -x509`: EC P-256, `autoTlsDays` days, subject
 * alternative names for `hosts` (IP addresses as IP, names as DNS) and localhost.
 */
export async function autoTlsCert(
  dir: string,
  hosts: readonly string[],
): Promise<{ cert: string; key: string }> {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  if (stamp(cert) !== 'missing' && stamp(key) !== 'missing') return { cert, key };
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const names = new Set(['DNS:localhost', 'IP:127.0.0.1']);
  for (const h of hosts) names.add(isIP(h) ? `IP:${h}` : `DNS:${h}`);
  await new Promise<void>((resolve, reject) => {
    execFile(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        String(autoTlsDays),
        '-subj',
        '/O=conclave auto-tls/CN=conclave',
        '-addext',
        `subjectAltName=${[...names].join(',')}`,
      ],
      { timeout: 30_000 },
      (err, _out, stderr) =>
        err
          ? reject(
              new ConclaveError(
                ErrorCode.InvalidArgument,
                (err as NodeJS.ErrnoException).code === 'ENOENT'
                  ? 'auto-TLS needs the openssl command on PATH (or give certificate files)'
                  : `auto-TLS: openssl failed: ${String(stderr).trim().split('\n')[0] ?? err.message}`,
              ),
            )
          : resolve(),
    );
  });
  return { cert, key };
}

/** Where a client-URL connection goes once its protocol is known (listener.ts's sinks). */
export interface TlsSinks {
  http2(socket: Socket, head: Buffer): void;
  http1(socket: Socket, head: Buffer): void;
}

export interface ClientTlsOptions {
  readonly material: TlsMaterial;
  readonly handshakeTimeoutMs: number;
  readonly log: TlsLogger;
}

/**
 * A TLS listener for a client URL: gRPC and the JSON gateway on one port over TLS, as etcd serves
 * them. ALPN decides first (`h2` → gRPC, `http/1.1` → gateway). The server prefers `http/1.1`
 * when a client offers both: gRPC clients (grpc-go, grpc-js) offer `h2` alone, while curl offers
 * both and must reach the gateway, which is HTTP/1.1 here (etcd serves its gateway over HTTP/2
 * too). A client that offers no ALPN is sorted by its first bytes (`sniff`, listener.ts's
 * `dispatchConnection`). Resolves once bound; fails `unavailable` when the address cannot be.
 */
export async function listenClientsTls(
  host: string,
  port: number,
  sinks: TlsSinks,
  sniff: (s: Socket, sinks: TlsSinks) => void,
  o: ClientTlsOptions,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  // The material (and its file check) belongs to the caller, shared by every client URL.
  const empty = Buffer.alloc(0);
  // Node's HTTP/2 server drops a TLS socket whose ALPN is not h2 (it would fall back to
  // HTTP/1); one sorted as HTTP/2 by its bytes is marked h2 before it is handed over.
  const sniffed: TlsSinks = {
    http2: (s, head) => {
      (s as tls.TLSSocket & { alpnProtocol: string | false }).alpnProtocol = 'h2';
      sinks.http2(s, head);
    },
    http1: (s, head) => sinks.http1(s, head),
  };
  const server = createTlsServer({
    material: o.material,
    handshakeTimeoutMs: o.handshakeTimeoutMs,
    log: o.log,
    what: `client URL ${host}:${port}`,
    alpn: ['http/1.1', 'h2'],
    onSecure: (s) => {
      if (s.alpnProtocol === 'h2') sinks.http2(s, empty);
      else if (s.alpnProtocol === 'http/1.1') sinks.http1(s, empty);
      else sniff(s, sniffed);
    },
  });
  await listenOn(server, host, port, 'clients');
  server.on('error', () => undefined);
  const addr = server.address() as { port: number };
  return {
    server,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}
