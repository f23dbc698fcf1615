/**
 * etcd's JWT auth tokens (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`), as etcd
 * 3.4's auth/jwt.go and auth/options.go define them:
 *
 * - A token is a JWT signed with the member's private key, claims `{username, revision, exp}`
 *   (`exp` = now + ttl, in seconds). Tokens are stateless: any member holding the key verifies
 *   them, nothing enters the log, and a restarted member still accepts tokens issued before.
 * - Sign methods: RS256/384/512, PS256/384/512 (RSA keys), ES256/384/512 (EC keys), HS256/384/512
 *   (the `priv-key` file's bytes are the shared secret). `pub-key` may be a public key or a
 *   certificate; with only `pub-key`, the member verifies tokens but cannot issue them (etcd's
 *   verify-only mode). `ttl` is a Go duration (default 5m).
 * - Verification refuses another algorithm than the configured one, a bad signature, and an
 *   expired `exp` (as the Go JWT library: valid while now <= exp).
 */
import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  constants as cryptoConstants,
  sign as cryptoSign,
  verify as cryptoVerify,
  type KeyObject,
  timingSafeEqual,
} from 'node:crypto';
import { readFileSync } from 'node:fs';

/** Bytes of a token this member will try to verify (a JWT of three small claims is < 1 KiB). */
export const jwtTokenBytesMax = 8192;

type Family = 'RS' | 'PS' | 'ES' | 'HS';
const digests = { '256': 'sha256', '384': 'sha384', '512': 'sha512' } as const;

/** Options of `--auth-token jwt,…`: a problem is thrown as an Error whose message says what. */
export interface JwtOptions {
  readonly signMethod: string;
  readonly pubKeyFile?: string;
  readonly privKeyFile?: string;
  readonly ttlMs: number;
}

/** etcd's default JWT lifetime (auth/options.go DefaultTTL). */
export const jwtTtlMsDefault = 5 * 60_000;

/** Parses a Go duration such as "1s", "300ms", "5m", "1h30m" into milliseconds. */
export function parseGoDuration(s: string): number {
  const units: Record<string, number> = {
    ns: 1e-6,
    us: 1e-3,
    µs: 1e-3,
    ms: 1,
    s: 1000,
    m: 60_000,
    h: 3_600_000,
  };
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y;
  let ms = 0;
  let at = 0;
  if (s === '' || s === '0') return 0;
  while (at < s.length) {
    re.lastIndex = at;
    const m = re.exec(s);
    if (!m) throw new Error(`"${s}" is not a duration (e.g. 1s, 500ms, 5m)`);
    ms += Number(m[1]) * units[m[2]!]!;
    at = re.lastIndex;
  }
  return ms;
}

/**
 * Parses the value of `--auth-token` when it starts with "jwt": `jwt,key=value,…`. Unknown keys
 * are refused (etcd only warns; a misspelt key here would silently drop a setting).
 */
export function parseJwtSpec(spec: string): JwtOptions {
  const [kind, ...pairs] = spec.split(',');
  if (kind !== 'jwt') throw new Error(`"${spec}" is not a JWT token spec (jwt,sign-method=…,priv-key=…)`);
  const o: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new Error(`"${p}" is not key=value`);
    const k = p.slice(0, i);
    if (!['sign-method', 'pub-key', 'priv-key', 'ttl'].includes(k))
      throw new Error(`unknown JWT option "${k}" (sign-method, pub-key, priv-key, ttl)`);
    o[k] = p.slice(i + 1);
  }
  const signMethod = o['sign-method'] ?? '';
  if (!/^(RS|PS|ES|HS)(256|384|512)$/.test(signMethod))
    throw new Error(
      `sign-method "${signMethod}": one of RS256/384/512, PS256/384/512, ES256/384/512, HS256/384/512`,
    );
  const ttlMs = o.ttl ? parseGoDuration(o.ttl) : jwtTtlMsDefault;
  if (!(ttlMs > 0)) throw new Error(`ttl "${o.ttl}" must be positive`);
  return {
    signMethod,
    ttlMs,
    ...(o['pub-key'] ? { pubKeyFile: o['pub-key'] } : {}),
    ...(o['priv-key'] ? { privKeyFile: o['priv-key'] } : {}),
  };
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/** Issues and verifies a member's JWT tokens. */
export class JwtTokens {
  readonly #alg: string;
  readonly #family: Family;
  readonly #digest: string;
  readonly #ttlMs: number;
  readonly #priv: KeyObject | Buffer | undefined;
  readonly #pub: KeyObject | Buffer;
  readonly #header: string;

  /** Reads the key files; throws an Error saying which file or key is wrong. */
  constructor(o: JwtOptions) {
    this.#alg = o.signMethod;
    this.#family = o.signMethod.slice(0, 2) as Family;
    this.#digest = digests[o.signMethod.slice(2) as keyof typeof digests];
    this.#ttlMs = o.ttlMs;
    this.#header = b64url(JSON.stringify({ alg: this.#alg, typ: 'JWT' }));
    const read = (f: string) => {
      try {
        return readFileSync(f);
      } catch (err) {
        throw new Error(`cannot read JWT key file ${f}: ${(err as Error).message}`);
      }
    };
    if (this.#family === 'HS') {
      if (!o.privKeyFile) throw new Error(`${this.#alg} needs priv-key (the shared secret's file)`);
      this.#priv = read(o.privKeyFile);
      this.#pub = this.#priv;
      return;
    }
    const want = this.#family === 'ES' ? 'ec' : 'rsa';
    const typed = <K extends KeyObject>(k: K, f: string): K => {
      if (k.asymmetricKeyType !== want)
        throw new Error(`${f} holds a ${k.asymmetricKeyType} key; ${this.#alg} needs an ${want} key`);
      return k;
    };
    let priv: KeyObject | undefined;
    let pub: KeyObject | undefined;
    try {
      if (o.privKeyFile) priv = typed(createPrivateKey(read(o.privKeyFile)), o.privKeyFile);
      if (o.pubKeyFile) pub = typed(createPublicKey(read(o.pubKeyFile)), o.pubKeyFile);
    } catch (err) {
      throw new Error(`JWT keys: ${(err as Error).message}`);
    }
    if (!priv && !pub)
      throw new Error(`${this.#alg} needs priv-key (to issue tokens) and/or pub-key (to verify)`);
    if (priv && pub) {
      const der = (k: KeyObject) => k.export({ format: 'der', type: 'spki' });
      if (!der(createPublicKey(priv)).equals(der(pub)))
        throw new Error(`pub-key ${o.pubKeyFile} does not match priv-key ${o.privKeyFile}`);
    }
    this.#priv = priv;
    this.#pub = pub ?? createPublicKey(priv!);
  }

  /** False when only a public key was given: tokens are verified, not issued. */
  get canSign(): boolean {
    return this.#priv !== undefined;
  }

  #signature(input: string): Buffer {
    const data = Buffer.from(input);
    const key = this.#priv!;
    switch (this.#family) {
      case 'HS':
        return createHmac(this.#digest, key as Buffer)
          .update(data)
          .digest();
      case 'RS':
        return cryptoSign(this.#digest, data, key as KeyObject);
      case 'PS':
        return cryptoSign(this.#digest, data, {
          key: key as KeyObject,
          padding: cryptoConstants.RSA_PKCS1_PSS_PADDING,
          saltLength: cryptoConstants.RSA_PSS_SALTLEN_DIGEST,
        });
      case 'ES':
        return cryptoSign(this.#digest, data, { key: key as KeyObject, dsaEncoding: 'ieee-p1363' });
    }
  }

  #verifies(input: string, sig: Buffer): boolean {
    const data = Buffer.from(input);
    const key = this.#pub;
    switch (this.#family) {
      case 'HS': {
        const want = createHmac(this.#digest, key as Buffer)
          .update(data)
          .digest();
        return want.length === sig.length && timingSafeEqual(want, sig);
      }
      case 'RS':
        return cryptoVerify(this.#digest, data, key as KeyObject, sig);
      case 'PS':
        return cryptoVerify(
          this.#digest,
          data,
          {
            key: key as KeyObject,
            padding: cryptoConstants.RSA_PKCS1_PSS_PADDING,
            saltLength: cryptoConstants.RSA_PSS_SALTLEN_AUTO,
          },
          sig,
        );
      case 'ES':
        return cryptoVerify(this.#digest, data, { key: key as KeyObject, dsaEncoding: 'ieee-p1363' }, sig);
    }
  }

  /** A token for `username` at auth revision `revision`, valid for the ttl from `nowMs` (epoch ms). */
  sign(username: string, revision: number, nowMs: number): string {
    if (!this.#priv) throw new Error('auth: token signing attempted with verify-only key');
    const claims = { username, revision, exp: Math.floor((nowMs + this.#ttlMs) / 1000) };
    const input = `${this.#header}.${b64url(JSON.stringify(claims))}`;
    return `${input}.${b64url(this.#signature(input))}`;
  }

  /** The user and auth revision a valid token names at `nowMs` (epoch ms); undefined if invalid. */
  verify(token: string, nowMs: number): { username: string; revision: number } | undefined {
    if (token.length > jwtTokenBytesMax) return undefined;
    const parts = token.split('.');
    if (parts.length !== 3) return undefined;
    const [h, p, s] = parts as [string, string, string];
    try {
      const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as { alg?: unknown };
      if (header.alg !== this.#alg) return undefined;
      if (!this.#verifies(`${h}.${p}`, Buffer.from(s, 'base64url'))) return undefined;
      const c = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
      if (typeof c.exp === 'number' && nowMs / 1000 > c.exp) return undefined;
      if (typeof c.username !== 'string' || typeof c.revision !== 'number') return undefined;
      return { username: c.username, revision: c.revision };
    } catch {
      return undefined;
    }
  }
}
