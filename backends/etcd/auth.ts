/**
 * Username/password authentication against etcd's Auth service (etcd 3.4 wire behaviour).
 *
 * etcd authenticates a connection, not a request: `Auth/Authenticate` trades the name and password
 * for a token, and every later call carries it as gRPC metadata `token` (streams carry the token
 * they were opened with). Tokens expire: a simple token after `--auth-token-ttl` seconds without
 * use on a member (and on every restart of the member), a JWT after its TTL. etcd refuses a call
 * with an expired token ("invalid auth token") before it proposes or applies anything, and a call
 * with a token issued before a permission change ("revision of auth store is old") in the auth
 * check that precedes the apply, so the call can be re-sent with a fresh token, writes included.
 *
 * `AuthTokens` holds the current token and makes at most one Authenticate at a time: callers that
 * found the same token stale share it. The password is kept only here, never logged and never put
 * into an error message.
 */
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { isGrpcError } from './errors.js';

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Validates the `auth` connect option (non-empty strings); never echoes the password. */
export function checkCredentials(auth: unknown): Credentials | undefined {
  if (auth === undefined) return undefined;
  if (typeof auth !== 'object' || auth === null || Array.isArray(auth)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'auth: must be an object { username: string, password: string }',
    );
  }
  const { username, password } = auth as { username?: unknown; password?: unknown };
  if (typeof username !== 'string' || username.length === 0) {
    throw new ConclaveError(ErrorCode.InvalidArgument, 'auth.username: must be a non-empty string');
  }
  if (typeof password !== 'string' || password.length === 0) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `auth.password: must be a non-empty string (user "${username}")`,
    );
  }
  return Object.freeze({ username, password });
}

/**
 * The token etcd refused is stale or missing, and a fresh one may succeed: an expired or unknown
 * token (member restarted, simple token TTL passed), a token older than the last permission change,
 * or no token at all while we hold credentials (auth was enabled after we connected).
 */
export function isStaleTokenError(err: unknown): boolean {
  return isGrpcError(err) && isStaleTokenReason(err.details ?? '');
}

/** The same test on a message (a gRPC status's details, or a watch's cancel reason). */
export function isStaleTokenReason(message: string): boolean {
  return /invalid auth token|revision of auth store is old|user name is empty/.test(message);
}

/** etcd answers Authenticate this way when auth is off: go on without a token (etcd's Go client does). */
export function isAuthNotEnabled(err: unknown): boolean {
  if (isGrpcError(err)) return /authentication is not enabled/.test(err.details ?? '');
  return err instanceof ConclaveError && /authentication is not enabled/.test(err.message);
}

/** Fetches a token; resolves `undefined` when the server has auth disabled. */
export type Authenticate = (credentials: Credentials) => Promise<string | undefined>;

export class AuthTokens {
  readonly username: string;
  /** Dropped by forget() (the client closed): nothing keeps the password reachable after close(). */
  #credentials: Credentials | undefined;
  readonly #authenticate: Authenticate;
  #token: string | undefined;
  /** The server said auth is not enabled: calls go without a token until it says otherwise. */
  #disabled = false;
  #inFlight: Promise<void> | undefined;

  constructor(credentials: Credentials, authenticate: Authenticate) {
    this.username = credentials.username;
    this.#credentials = credentials;
    this.#authenticate = authenticate;
  }

  /** The token to send now (undefined before the first Authenticate, or when auth is disabled). */
  get token(): string | undefined {
    return this.#token;
  }

  /** True when a call may go out as is: a token is held, or the server has auth disabled. */
  get settled(): boolean {
    return this.#token !== undefined || this.#disabled;
  }

  /**
   * Makes sure the token is newer than `stale` (the one a refused call carried): returns at once
   * if someone already replaced it, joins the Authenticate in flight if there is one, and starts
   * one otherwise. Rejects with the Authenticate's error (`unauthenticated` for bad credentials).
   */
  refresh(stale: string | undefined, signal?: AbortSignal): Promise<void> {
    if (this.#inFlight === undefined) {
      if (this.#token !== stale) return Promise.resolve();
      const credentials = this.#credentials;
      if (credentials === undefined) {
        return Promise.reject(new ConclaveError(ErrorCode.Closed, 'the etcd client is closed'));
      }
      this.#inFlight = this.#authenticate(credentials).then(
        (token) => {
          if (this.#credentials !== undefined) {
            this.#token = token;
            this.#disabled = token === undefined;
          }
          this.#inFlight = undefined;
        },
        (err: unknown) => {
          this.#inFlight = undefined;
          throw err;
        },
      );
    }
    return signal ? raceAbort(this.#inFlight, signal) : this.#inFlight;
  }

  /** Drops the password and the token (the client closed). Later refreshes reject `closed`. */
  forget(): void {
    this.#credentials = undefined;
    this.#token = undefined;
  }
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
