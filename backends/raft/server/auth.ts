/**
 * etcd 3.4's Auth service on a `conclave serve` member, and the permission checks of the other
 * services (etcd's `auth/store.go` and `etcdserver/apply_auth.go`):
 *
 * - Every change (AuthEnable/Disable, User*, Role*) is proposed through Raft as an `auth` command
 *   and applied by every member's auth store (store/auth-store.ts), so all members enforce the
 *   same rules at the same log index. Management calls need the root role once auth is enabled.
 * - Passwords are hashed (salted scrypt) on the member that takes the call; only the hash enters
 *   the log. Authenticate checks the password here, then proposes the token (etcd 3.4's
 *   InternalAuthenticate) so that it is valid on every member. With `--auth-token jwt,…` the
 *   token is a JWT signed here instead (server/jwt.ts), which every member verifies by its key.
 * - A caller is the user of its `token` metadata; with `--client-cert-auth` and no token, the
 *   Common Name of its verified client certificate (etcd's AuthInfoFromTLS). It is checked at an
 *   auth revision (`CallerInfo`): the store's now for a simple token or a certificate, the one it
 *   was issued at for a JWT, so a JWT from before any auth change is "revision of auth store is
 *   old" (etcd's isOpPermitted). A token is read even with auth disabled, as etcd reads it: the
 *   simple tokens AuthDisable dropped are "invalid auth token".
 * - Checks on the key range of each call when auth is enabled: Range read; Put write (and read
 *   with prev_kv); DeleteRange write (read with prev_kv); Txn read on every compare and each op of
 *   both branches; Watch read on the watched range; LeaseRevoke write on every key attached to
 *   the lease. Failures are etcd's: "user name is empty" (no credentials), "invalid auth token",
 *   "permission denied".
 * - Bounded: at most `passwordChecksMax` password checks run at once (scrypt is the rate limit of
 *   guessing: each costs tens of ms of CPU); more are answered "too many requests". Tokens are
 *   bounded by the auth store (`authTokensMax`).
 */
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { root } from '../../../src/protocol/codec.js';
import {
  type AuthChange,
  type AuthError,
  AuthStoreError,
  checkPassword,
  hashPassword,
  type PermType,
} from '../store/auth-store.js';
import type { MemberAuth } from './api.js';

export type { MemberAuth } from './api.js';

import { etcdErrors, type GrpcFailure } from './errors.js';

/** Password checks (Authenticate) running at once on a member. */
export const passwordChecksMax = 8;

const S = grpc.status;
/** etcd's rpctypes errors for the auth store's refusals (code and text, as Go clients match them). */
export const authFailures: Record<AuthError, GrpcFailure> = {
  RootUserNotExist: { code: S.FAILED_PRECONDITION, details: 'etcdserver: root user does not exist' },
  RootRoleNotExist: { code: S.FAILED_PRECONDITION, details: 'etcdserver: root user does not have root role' },
  UserAlreadyExist: { code: S.FAILED_PRECONDITION, details: 'etcdserver: user name already exists' },
  UserEmpty: { code: S.INVALID_ARGUMENT, details: 'etcdserver: user name is empty' },
  UserNotFound: { code: S.FAILED_PRECONDITION, details: 'etcdserver: user name not found' },
  RoleAlreadyExist: { code: S.FAILED_PRECONDITION, details: 'etcdserver: role name already exists' },
  RoleNotFound: { code: S.FAILED_PRECONDITION, details: 'etcdserver: role name not found' },
  RoleEmpty: { code: S.INVALID_ARGUMENT, details: 'etcdserver: role name is empty' },
  AuthFailed: {
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: authentication failed, invalid user ID or password',
  },
  PermissionDenied: { code: S.PERMISSION_DENIED, details: 'etcdserver: permission denied' },
  RoleNotGranted: { code: S.FAILED_PRECONDITION, details: 'etcdserver: role is not granted to the user' },
  PermissionNotGranted: {
    code: S.FAILED_PRECONDITION,
    details: 'etcdserver: permission is not granted to the role',
  },
  AuthNotEnabled: { code: S.FAILED_PRECONDITION, details: 'etcdserver: authentication is not enabled' },
  InvalidAuthToken: { code: S.UNAUTHENTICATED, details: 'etcdserver: invalid auth token' },
  InvalidAuthMgmt: { code: S.INVALID_ARGUMENT, details: 'etcdserver: invalid auth management' },
  AuthOldRevision: { code: S.INVALID_ARGUMENT, details: 'etcdserver: revision of auth store is old' },
};

/** The caller of a call or stream: metadata and (over TLS) its socket's verified certificate. */
interface Caller {
  readonly metadata: grpc.Metadata;
  getAuthContext?(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } } | null;
}

/**
 * etcd's AuthInfo of a call: the user, and the auth revision its request is checked at (0: no
 * credentials). A simple token or a client certificate is checked at the store's revision of the
 * moment; a JWT carries the revision it was issued at (etcd's tokenJWT.info), so after any auth
 * change it is "old" until the client authenticates again.
 */
export interface CallerInfo {
  readonly user: string;
  readonly rev: number;
}
const nobody: CallerInfo = { user: '', rev: 0 };

/** Whether `x` is a failure rather than a caller (what `info` returns). */
export const isFailure = (x: CallerInfo | GrpcFailure): x is GrpcFailure => 'code' in x;

/** The `token` metadata of a call ('' or absent: none). */
function tokenOf(c: Caller): string | undefined {
  const t = c.metadata.get('token')[0];
  return typeof t === 'string' && t !== '' ? t : undefined;
}

/**
 * Permission checks for the other services. While auth is disabled and a call carries no token,
 * `active` is false and nothing else is read (the hot path). A call that does carry a token is
 * looked at even with auth disabled, as etcd reads the token of every call it checks or proposes
 * (AuthInfoFromCtx): disabling auth drops every simple token, so one sent anyway is "invalid auth
 * token"; a JWT still verifies.
 */
export class AuthGate {
  readonly #a: MemberAuth | undefined;

  constructor(a: MemberAuth | undefined) {
    this.#a = a;
  }

  get on(): boolean {
    return this.#a?.store.enabled ?? false;
  }

  /** Whether `c` must be checked: auth enabled, or a token sent. */
  active(c: Caller): boolean {
    return this.on || (this.#a !== undefined && tokenOf(c) !== undefined);
  }

  /**
   * etcd's AuthInfoFromCtx then AuthInfoFromTLS: the caller of `c`, or "invalid auth token" for a
   * token that names nobody (unknown, expired, dropped by a password change, a user deletion or
   * AuthDisable, or a JWT that does not verify). With `--client-cert-auth` and no token, the
   * Common Name of its verified client certificate.
   */
  info(c: Caller): CallerInfo | GrpcFailure {
    const a = this.#a;
    if (!a) return nobody;
    const token = tokenOf(c);
    if (token !== undefined) {
      if (a.jwt) {
        const v = a.jwt.verify(token, Date.now());
        return v ? { user: v.username, rev: v.revision } : authFailures.InvalidAuthToken;
      }
      try {
        return { user: a.store.tokenUser(token, performance.now()), rev: a.store.revision };
      } catch (err) {
        return failureOf(err);
      }
    }
    if (a.clientCertAuth) {
      const cn = c.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
      if (typeof cn === 'string') return { user: cn, rev: a.store.revision };
    }
    return nobody;
  }

  /** The calling user ('' when it sent no credentials), or the failure for a bad token. */
  user(c: Caller): string | GrpcFailure {
    const ai = this.info(c);
    return isFailure(ai) ? ai : ai.user;
  }

  /**
   * etcd's isOpPermitted: undefined when `ai` may read (write) [key, rangeEnd). Auth disabled →
   * yes; no credentials → "user name is empty"; a revision older than the store's → "revision of
   * auth store is old" (only a JWT issued before an auth change gets here); an unknown user →
   * "permission denied"; the root role → yes; else its roles must cover the range.
   */
  checkInfo(
    ai: CallerInfo,
    key: Uint8Array,
    rangeEnd: Uint8Array | undefined,
    write: boolean,
  ): GrpcFailure | undefined {
    if (!this.on) return undefined;
    if (ai.rev === 0) return authFailures.UserEmpty;
    const st = this.#a!.store;
    if (ai.rev < st.revision) return authFailures.AuthOldRevision;
    try {
      st.check(ai.user, key, rangeEnd, write);
      return undefined;
    } catch (err) {
      return failureOf(err);
    }
  }

  /** undefined when `c` may read (write) [key, rangeEnd), else etcd's failure. */
  check(
    c: Caller,
    key: Uint8Array,
    rangeEnd: Uint8Array | undefined,
    write: boolean,
  ): GrpcFailure | undefined {
    if (!this.active(c)) return undefined;
    const ai = this.info(c);
    return isFailure(ai) ? ai : this.checkInfo(ai, key, rangeEnd, write);
  }

  /** Several checks (a txn) of one caller: the first failure. */
  checkAllInfo(
    ai: CallerInfo,
    ranges: ReadonlyArray<readonly [Uint8Array, Uint8Array | undefined, boolean]>,
  ): GrpcFailure | undefined {
    for (const [k, e, w] of ranges) {
      const f = this.checkInfo(ai, k, e, w);
      if (f) return f;
    }
    return undefined;
  }

  /** Several checks (a txn): the first failure. */
  checkAll(
    c: Caller,
    ranges: ReadonlyArray<readonly [Uint8Array, Uint8Array | undefined, boolean]>,
  ): GrpcFailure | undefined {
    if (!this.active(c)) return undefined;
    const ai = this.info(c);
    return isFailure(ai) ? ai : this.checkAllInfo(ai, ranges);
  }

  /**
   * undefined when `c` may manage auth (auth disabled, or the root role); etcd's IsAdminPermitted:
   * no user → "user name is empty", an unknown one → "user name not found". It checks no revision:
   * a root JWT issued before an auth change still manages auth.
   */
  admin(c: Caller): GrpcFailure | undefined {
    if (!this.active(c)) return undefined;
    const u = this.user(c);
    if (typeof u !== 'string') return u;
    return this.adminUser(u);
  }

  adminUser(u: string): GrpcFailure | undefined {
    if (!this.on) return undefined;
    if (u === '') return authFailures.UserEmpty;
    const st = this.#a!.store;
    if (!st.users.has(u)) return authFailures.UserNotFound;
    return st.isAdmin(u) ? undefined : authFailures.PermissionDenied;
  }

  /**
   * The failure for a token that names nobody, else undefined (no token, or a valid one). etcd
   * reads the caller of every request it proposes through Raft (processInternalRaftRequestOnce),
   * auth enabled or not, so LeaseGrant, Compact and Alarm are refused for a bad token even though
   * they check no permission.
   */
  badToken(c: Caller): GrpcFailure | undefined {
    if (this.#a === undefined || tokenOf(c) === undefined) return undefined;
    const ai = this.info(c);
    return isFailure(ai) ? ai : undefined;
  }

  /**
   * etcd's doSerialize, after a read: a caller checked at revision `ai.rev` whose view is no
   * longer the store's (an auth change applied meanwhile, or a JWT from another revision, even
   * with auth disabled) gets "revision of auth store is old" instead of the answer.
   */
  staleAfterRead(ai: CallerInfo): boolean {
    return ai.rev !== 0 && ai.rev !== this.revision;
  }

  /**
   * etcd's Maintenance server (authMaintenanceServer): Snapshot, Defragment, Hash and HashKV need
   * the root role. Its errors are the auth package's own, not rpctypes', so grpc-go answers them
   * with code Unknown and the texts "auth: …" (as etcd 3.4.23 answers, differential-tested).
   */
  maintenanceAdmin(c: Caller): GrpcFailure | undefined {
    const f = this.admin(c);
    return f && asAuthPackageError(f);
  }

  /** The auth store's revision now (a request's view of the rules; see `AuthStore.revision`). */
  get revision(): number {
    return this.#a?.store.revision ?? 0;
  }
}

/** etcd's auth package texts where they differ from rpctypes' (auth/store.go's Err… values). */
const authPackageTexts: Readonly<Record<string, string>> = {
  'etcdserver: user name not found': 'auth: user not found',
  'etcdserver: user name already exists': 'auth: user already exists',
  'etcdserver: role name not found': 'auth: role not found',
  'etcdserver: role name already exists': 'auth: role already exists',
  'etcdserver: revision of auth store is old': 'auth: revision in header is old',
};

/** An auth failure as etcd's `auth` package error reaches a client unconverted: Unknown, "auth: …". */
export function asAuthPackageError(f: GrpcFailure): GrpcFailure {
  return {
    code: S.UNKNOWN,
    details: authPackageTexts[f.details] ?? f.details.replace(/^etcdserver: /, 'auth: '),
  };
}

function failureOf(err: unknown): GrpcFailure {
  if (err instanceof AuthStoreError) return authFailures[err.reason];
  const reason = (err as { cause?: unknown })?.cause;
  if (reason instanceof AuthStoreError) return authFailures[reason.reason];
  return { code: S.UNKNOWN, details: String((err as Error)?.message ?? err) };
}

function type(name: string): protobuf.Type {
  return root.lookupType(`etcdserverpb.${name}`);
}

const text = (b: unknown): Uint8Array =>
  b instanceof Uint8Array ? b : typeof b === 'string' ? new Uint8Array(Buffer.from(b)) : new Uint8Array(0);

/** Registers etcd's Auth service (17 calls) on `server`. */
export function registerAuth(
  server: grpc.Server,
  ctx: { currentHeader(): object },
  gate: AuthGate,
  a: MemberAuth | undefined,
  failure: (err: unknown) => GrpcFailure,
): void {
  let checking = 0;
  const reg = <Q>(
    name: string,
    handler: (req: Q, call: grpc.ServerUnaryCall<Q, object>) => Promise<object>,
    adminOnly = true,
  ) => {
    // etcd's message names: AuthEnableRequest, AuthenticateRequest, AuthUserAddRequest, …
    const base = name.startsWith('Auth') ? name : `Auth${name}`;
    const req = type(`${base}Request`);
    const res = type(`${base}Response`);
    server.register(
      `/etcdserverpb.Auth/${name}`,
      (async (call: grpc.ServerUnaryCall<Q, object>, cb: grpc.sendUnaryData<object>) => {
        const f = (g: GrpcFailure) => cb({ code: g.code, details: g.details } as grpc.ServiceError);
        if (!a) return f({ code: S.UNIMPLEMENTED, details: 'auth is not available on this member' });
        if (adminOnly) {
          const denied = gate.admin(call);
          if (denied) return f(denied);
        }
        try {
          const body = await handler(call.request, call);
          cb(null, { header: ctx.currentHeader(), ...body });
        } catch (err) {
          const g = (err as { grpcFailure?: GrpcFailure }).grpcFailure;
          const own =
            err instanceof AuthStoreError || (err as { cause?: unknown })?.cause instanceof AuthStoreError;
          f(g ?? (own ? failureOf(err) : failure(err)));
        }
      }) as grpc.UntypedHandleCall,
      (m: object) => {
        const u = res.encode(m as Record<string, unknown>).finish();
        return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
      },
      (b: Buffer) => req.decode(b),
      'unary',
    );
  };
  if (!a) return;
  const st = a.store;
  const change = async (c: AuthChange): Promise<object> => {
    await a.propose(c);
    return {};
  };
  type Named = { name?: string; password?: string; options?: { noPassword?: boolean } | null };
  reg('AuthEnable', () => change({ op: 'enable' }));
  reg('AuthDisable', () => change({ op: 'disable' }));
  // Not in etcd 3.4 (added in 3.5, where any caller may ask): served for etcdctl 3.5 and newer.
  reg(
    'AuthStatus',
    async (_r, call) => {
      const bad = gate.badToken(call);
      if (bad) throw Object.assign(new Error(bad.details), { grpcFailure: bad });
      return { enabled: st.enabled, authRevision: st.revision };
    },
    false,
  );
  reg('UserAdd', async (r: Named) => {
    if (!r.name) throw new AuthStoreError('UserEmpty');
    const hash = r.options?.noPassword ? '' : await hashPassword(r.password ?? '');
    return change({ op: 'userAdd', name: r.name, hash });
  });
  // etcd 3.4 (apply_auth.go UserGet, RoleGet): a user may read its own entry and its own roles.
  const adminOrSelf = (call: Parameters<AuthGate['user']>[0], self: (user: string) => boolean) => {
    const u = gate.user(call);
    const f = typeof u === 'string' ? gate.adminUser(u) : u;
    if (f && !(typeof u === 'string' && self(u)))
      throw Object.assign(new Error(f.details), { grpcFailure: f });
  };
  reg(
    'UserGet',
    async (r: Named, call) => {
      if (gate.active(call)) adminOrSelf(call, (u) => u === r.name);
      return userGet(r);
    },
    false,
  );
  const userGet = async (r: Named) => {
    const u = st.users.get(r.name ?? '');
    if (!u) throw new AuthStoreError('UserNotFound');
    return { roles: [...u.roles] };
  };
  reg('UserList', async () => ({ users: [...st.users.keys()].sort() }));
  reg('UserDelete', (r: Named) => change({ op: 'userDelete', name: r.name ?? '' }));
  reg('UserChangePassword', async (r: Named) => {
    if (!st.users.has(r.name ?? '')) throw new AuthStoreError('UserNotFound');
    return change({
      op: 'userChangePassword',
      name: r.name ?? '',
      hash: await hashPassword(r.password ?? ''),
    });
  });
  reg('UserGrantRole', (r: { user?: string; role?: string }) =>
    change({ op: 'userGrantRole', user: r.user ?? '', role: r.role ?? '' }),
  );
  reg('UserRevokeRole', (r: { name?: string; role?: string }) =>
    change({ op: 'userRevokeRole', name: r.name ?? '', role: r.role ?? '' }),
  );
  reg('RoleAdd', (r: Named) => change({ op: 'roleAdd', name: r.name ?? '' }));
  reg(
    'RoleGet',
    async (r: { role?: string }, call) => {
      if (gate.active(call)) adminOrSelf(call, (u) => st.users.get(u)?.roles.includes(r.role ?? '') ?? false);
      const role = st.roles.get(r.role ?? '');
      if (!role) throw new AuthStoreError('RoleNotFound');
      return {
        perm: role.perms.map((p) => ({ permType: p.type, key: p.key, rangeEnd: p.rangeEnd })),
      };
    },
    false,
  );
  reg('RoleList', async () => ({ roles: [...st.roles.keys()].sort() }));
  reg('RoleDelete', (r: { role?: string }) => change({ op: 'roleDelete', role: r.role ?? '' }));
  reg(
    'RoleGrantPermission',
    (r: { name?: string; perm?: { permType?: number; key?: unknown; rangeEnd?: unknown } }) =>
      change({
        op: 'roleGrantPermission',
        name: r.name ?? '',
        perm: {
          type: (r.perm?.permType ?? 0) as PermType,
          key: text(r.perm?.key),
          rangeEnd: text(r.perm?.rangeEnd),
        },
      }),
  );
  reg('RoleRevokePermission', (r: { role?: string; key?: unknown; rangeEnd?: unknown }) =>
    change({ op: 'roleRevokePermission', role: r.role ?? '', key: text(r.key), rangeEnd: text(r.rangeEnd) }),
  );
  reg(
    'Authenticate',
    async (r: Named) => {
      if (!st.enabled) throw new AuthStoreError('AuthNotEnabled');
      if (checking >= passwordChecksMax) {
        throw Object.assign(new Error(etcdErrors.tooManyRequests.details), {
          grpcFailure: etcdErrors.tooManyRequests,
        });
      }
      checking++;
      let ok: boolean;
      try {
        const u = st.users.get(r.name ?? '');
        // An unknown user costs the same hash as a wrong password (no user-name oracle by timing).
        ok = await checkPassword(u?.hash || dummyHash, r.password ?? '');
        ok &&= u !== undefined && u.hash !== '';
      } finally {
        checking--;
      }
      if (!ok) throw new AuthStoreError('AuthFailed');
      // JWT (etcd's tokenJWT.assign): signed here, valid on every member holding the key, nothing
      // to replicate.
      if (a.jwt) return { token: a.jwt.sign(r.name ?? '', st.revision, Date.now()) };
      const token = `${randomBytes(12).toString('base64url')}.${st.revision}`;
      await a.propose({ op: 'authenticate', name: r.name ?? '', token, at: Date.now() });
      return { token };
    },
    false,
  );
}

/** A well-formed hash nobody's password matches (checked for unknown users). */
const dummyHash = `scrypt$${Buffer.alloc(16).toString('base64')}$${Buffer.alloc(32, 1).toString('base64')}`;

type Range = readonly [Uint8Array, Uint8Array | undefined, boolean];
interface TxnLike {
  compare?: Array<{ key?: Uint8Array; rangeEnd?: Uint8Array }> | null;
  success?: OpLike[] | null;
  failure?: OpLike[] | null;
}
interface OpLike {
  requestRange?: { key?: Uint8Array; rangeEnd?: Uint8Array } | null;
  requestPut?: { key?: Uint8Array; prevKv?: boolean } | null;
  requestDeleteRange?: { key?: Uint8Array; rangeEnd?: Uint8Array; prevKv?: boolean } | null;
  requestTxn?: TxnLike | null;
}

const bytes = (b: Uint8Array | null | undefined): Uint8Array =>
  b instanceof Uint8Array ? b : new Uint8Array(0);

/** etcd's isTxnReadonly: every op of both branches is a Range (a nested txn is not). */
export function isTxnReadOnly(t: TxnLike): boolean {
  for (const op of [...(t.success ?? []), ...(t.failure ?? [])]) if (!op.requestRange) return false;
  return true;
}

/** The ranges a txn touches (etcd's checkTxnReqsPermission): compares read, both branches' ops. */
export function txnRanges(t: TxnLike, out: Range[] = [], depth = 0): Range[] {
  if (depth > 64) return out;
  for (const c of t.compare ?? []) out.push([bytes(c.key), bytes(c.rangeEnd), false]);
  for (const op of [...(t.success ?? []), ...(t.failure ?? [])]) {
    if (op.requestRange) out.push([bytes(op.requestRange.key), bytes(op.requestRange.rangeEnd), false]);
    else if (op.requestPut) {
      out.push([bytes(op.requestPut.key), undefined, true]);
      if (op.requestPut.prevKv) out.push([bytes(op.requestPut.key), undefined, false]);
    } else if (op.requestDeleteRange) {
      const d = op.requestDeleteRange;
      out.push([bytes(d.key), bytes(d.rangeEnd), true]);
      if (d.prevKv) out.push([bytes(d.key), bytes(d.rangeEnd), false]);
    } else if (op.requestTxn) txnRanges(op.requestTxn, out, depth + 1);
  }
  return out;
}
