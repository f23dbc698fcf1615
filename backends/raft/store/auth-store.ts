/**
 * etcd 3.4's auth store as a deterministic state machine: users (with hashed passwords and
 * roles), roles (with key-range permissions), whether auth is enabled, and the auth revision that
 * every change bumps (etcd's `auth/store.go`). Applied from Raft entries, so every member holds
 * the same users, roles and permissions at the same log index, and it is part of the snapshot
 * (`encode`/`decode`).
 *
 * Passwords never enter the log in the clear: the member that takes a UserAdd or
 * UserChangePassword hashes the password first (`hashPassword`: scrypt from node:crypto, salted,
 * N=2^14; etcd uses bcrypt) and proposes the hash. Checking a password (`checkPassword`) happens on
 * the member the client talks to, before anything is proposed, as etcd 3.4 does in Authenticate.
 *
 * Errors are etcd's, by name (`AuthErrors`): the gRPC edge maps them to etcd's codes and texts.
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/** etcd's authpb.Permission.Type. */
export const PermType = { Read: 0, Write: 1, ReadWrite: 2 } as const;
export type PermType = (typeof PermType)[keyof typeof PermType];

export interface Permission {
  readonly type: PermType;
  readonly key: Uint8Array;
  /** Empty: the key alone; [0]: every key from `key` on; else up to (not including) this key. */
  readonly rangeEnd: Uint8Array;
}

export interface User {
  readonly name: string;
  /** `scrypt$<salt b64>$<hash b64>`, or '' for a user added with no password. */
  readonly hash: string;
  readonly roles: readonly string[];
}

export interface RoleRecord {
  readonly name: string;
  readonly perms: readonly Permission[];
}

/** The failures etcd's auth store reports (names as etcd's `rpctypes` Err… values). */
export type AuthError =
  | 'RootUserNotExist'
  | 'RootRoleNotExist'
  | 'UserAlreadyExist'
  | 'UserEmpty'
  | 'UserNotFound'
  | 'RoleAlreadyExist'
  | 'RoleNotFound'
  | 'RoleEmpty'
  | 'AuthFailed'
  | 'PermissionDenied'
  | 'RoleNotGranted'
  | 'PermissionNotGranted'
  | 'AuthNotEnabled'
  | 'InvalidAuthToken'
  | 'InvalidAuthMgmt'
  | 'AuthOldRevision';

export class AuthStoreError extends Error {
  override readonly name = 'AuthStoreError';
  readonly reason: AuthError;
  constructor(reason: AuthError) {
    super(`auth: ${reason}`);
    this.reason = reason;
  }
}

/** A change to the auth store, as proposed through Raft. */
export type AuthChange =
  | { readonly op: 'enable' }
  | { readonly op: 'disable' }
  | { readonly op: 'userAdd'; readonly name: string; readonly hash: string }
  | { readonly op: 'userDelete'; readonly name: string }
  | { readonly op: 'userChangePassword'; readonly name: string; readonly hash: string }
  | { readonly op: 'userGrantRole'; readonly user: string; readonly role: string }
  | { readonly op: 'userRevokeRole'; readonly name: string; readonly role: string }
  | { readonly op: 'roleAdd'; readonly name: string }
  | { readonly op: 'roleDelete'; readonly role: string }
  | { readonly op: 'roleGrantPermission'; readonly name: string; readonly perm: Permission }
  | {
      readonly op: 'roleRevokePermission';
      readonly role: string;
      readonly key: Uint8Array;
      readonly rangeEnd: Uint8Array;
    }
  /** etcd 3.4's InternalAuthenticate: the password was checked by the proposer; every member registers the token. */
  | {
      readonly op: 'authenticate';
      readonly name: string;
      readonly token: string;
      /** When the proposer issued it (wall-clock ms): a replayed entry never outlives its TTL. */
      readonly at?: number;
    };

/** The JSON text an `auth` Raft command carries (byte strings as base64). */
export function encodeAuthChange(c: AuthChange): string {
  // The raw value (`this[k]`): JSON.stringify has already turned a Buffer into {type, data} by
  // the time a replacer sees `v`.
  return JSON.stringify(c, function (this: Record<string, unknown>, k: string, v: unknown) {
    const raw = this[k];
    return raw instanceof Uint8Array ? { b64: Buffer.from(raw).toString('base64') } : v;
  });
}

export function decodeAuthChange(text: string): AuthChange {
  return JSON.parse(text, (_k, v: unknown) =>
    v !== null && typeof v === 'object' && typeof (v as { b64?: unknown }).b64 === 'string'
      ? new Uint8Array(Buffer.from((v as { b64: string }).b64, 'base64'))
      : v,
  ) as AuthChange;
}

export const rootUser = 'root';
export const rootRole = 'root';

/** Users, roles and permissions a store holds at most (a bound on what clients can make it keep). */
export const authUsersMax = 10_000;
export const authRolesMax = 10_000;
export const permsPerRoleMax = 10_000;
/** Simple tokens a member holds at once (beyond: the least recently issued is dropped). */
export const authTokensMax = 100_000;
/** etcd's --auth-token-ttl default: a simple token lives this long after its last use. */
export const authTokenTtlSecondsDefault = 300;

const cmp = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b);

/** One merged interval [start, end) of keys; `end` undefined: no upper bound. */
interface Interval {
  start: Uint8Array;
  end: Uint8Array | undefined;
}

export class AuthStore {
  enabled = false;
  /** Bumped by every change (etcd's auth revision; it starts at 1). */
  revision = 1;
  readonly users = new Map<string, User>();
  readonly roles = new Map<string, RoleRecord>();
  /** Per user and permission kind, merged intervals; cleared on every change. */
  #cache = new Map<string, Interval[]>();

  /**
   * Simple tokens (etcd's tokenSimple): token → user and deadline, volatile (not in snapshots; a
   * restarted member forgets them, as etcd does). Renewed on use, as etcd's TTL keeper does.
   */
  readonly #tokens = new Map<string, { user: string; deadline: number }>();
  /** `--auth-token-ttl` in ms. */
  tokenTtlMs = authTokenTtlSecondsDefault * 1000;

  /** Applies an `auth` command's text (see `apply`); `nowMs` dates a new token. */
  applyEncoded(text: string, nowMs: number): void {
    const c = decodeAuthChange(text);
    if (c.op === 'authenticate') {
      if (!this.enabled) throw new AuthStoreError('AuthNotEnabled');
      if (!this.users.has(c.name)) throw new AuthStoreError('AuthFailed');
      // A member that restarts applies the entries after its snapshot again: a token issued long
      // ago must not come back to life for a fresh TTL. Its life is counted from its issue time
      // (the proposer's wall clock; tokens are each member's own volatile state, as etcd's TTL
      // keeper is, so this reading of the clock does not make members' stores differ).
      const left = c.at === undefined ? this.tokenTtlMs : c.at + this.tokenTtlMs - Date.now();
      if (left <= 0) return;
      if (this.#tokens.size >= authTokensMax) this.#tokens.delete(this.#tokens.keys().next().value!);
      this.#tokens.set(c.token, { user: c.name, deadline: nowMs + Math.min(this.tokenTtlMs, left) });
      return;
    }
    this.apply(c);
  }

  /** The user a token names, renewing it; InvalidAuthToken when unknown or expired. */
  tokenUser(token: string, nowMs: number): string {
    const t = this.#tokens.get(token);
    if (!t || t.deadline < nowMs) {
      if (t) this.#tokens.delete(token);
      throw new AuthStoreError('InvalidAuthToken');
    }
    t.deadline = nowMs + this.tokenTtlMs;
    return t.user;
  }

  get tokenCount(): number {
    return this.#tokens.size;
  }

  #dropTokens(user?: string): void {
    if (user === undefined) this.#tokens.clear();
    else for (const [k, t] of this.#tokens) if (t.user === user) this.#tokens.delete(k);
  }

  /** Applies a committed change; throws `AuthStoreError` (nothing changed) when etcd refuses it. */
  apply(c: AuthChange): void {
    switch (c.op) {
      case 'authenticate':
        throw new AuthStoreError('InvalidAuthMgmt'); // only through applyEncoded
      case 'enable': {
        if (this.enabled) return;
        const root = this.users.get(rootUser);
        if (!root) throw new AuthStoreError('RootUserNotExist');
        if (!root.roles.includes(rootRole)) throw new AuthStoreError('RootRoleNotExist');
        this.enabled = true;
        this.#dropTokens();
        break;
      }
      case 'disable':
        if (!this.enabled) return;
        this.enabled = false;
        this.#dropTokens();
        break;
      case 'userAdd': {
        if (c.name === '') throw new AuthStoreError('UserEmpty');
        if (this.users.has(c.name)) throw new AuthStoreError('UserAlreadyExist');
        if (this.users.size >= authUsersMax) throw new AuthStoreError('InvalidAuthMgmt');
        this.users.set(c.name, { name: c.name, hash: c.hash, roles: [] });
        break;
      }
      case 'userDelete': {
        if (this.enabled && c.name === rootUser) throw new AuthStoreError('InvalidAuthMgmt');
        if (!this.users.delete(c.name)) throw new AuthStoreError('UserNotFound');
        this.#dropTokens(c.name);
        break;
      }
      case 'userChangePassword': {
        const u = this.users.get(c.name);
        if (!u) throw new AuthStoreError('UserNotFound');
        this.users.set(c.name, { ...u, hash: c.hash });
        this.#dropTokens(c.name);
        break;
      }
      case 'userGrantRole': {
        const u = this.users.get(c.user);
        if (!u) throw new AuthStoreError('UserNotFound');
        if (c.role !== rootRole && !this.roles.has(c.role)) throw new AuthStoreError('RoleNotFound');
        if (u.roles.includes(c.role)) return; // etcd: granting a held role again changes nothing
        this.users.set(c.user, { ...u, roles: [...u.roles, c.role].sort() });
        break;
      }
      case 'userRevokeRole': {
        if (this.enabled && c.name === rootUser && c.role === rootRole)
          throw new AuthStoreError('InvalidAuthMgmt');
        const u = this.users.get(c.name);
        if (!u) throw new AuthStoreError('UserNotFound');
        if (!u.roles.includes(c.role)) throw new AuthStoreError('RoleNotGranted');
        this.users.set(c.name, { ...u, roles: u.roles.filter((r) => r !== c.role) });
        break;
      }
      case 'roleAdd': {
        if (c.name === '') throw new AuthStoreError('RoleEmpty');
        if (this.roles.has(c.name)) throw new AuthStoreError('RoleAlreadyExist');
        if (this.roles.size >= authRolesMax) throw new AuthStoreError('InvalidAuthMgmt');
        this.roles.set(c.name, { name: c.name, perms: [] });
        break;
      }
      case 'roleDelete': {
        if (this.enabled && c.role === rootRole) throw new AuthStoreError('InvalidAuthMgmt');
        if (!this.roles.delete(c.role)) throw new AuthStoreError('RoleNotFound');
        for (const u of [...this.users.values()])
          if (u.roles.includes(c.role))
            this.users.set(u.name, { ...u, roles: u.roles.filter((r) => r !== c.role) });
        break;
      }
      case 'roleGrantPermission': {
        const r = this.roles.get(c.name);
        if (!r) throw new AuthStoreError('RoleNotFound');
        const same = r.perms.findIndex(
          (p) => cmp(p.key, c.perm.key) === 0 && cmp(p.rangeEnd, c.perm.rangeEnd) === 0,
        );
        let perms: Permission[];
        if (same >= 0) perms = r.perms.map((p, i) => (i === same ? c.perm : p));
        else {
          if (r.perms.length >= permsPerRoleMax) throw new AuthStoreError('InvalidAuthMgmt');
          // etcd keeps a role's permissions sorted by key.
          perms = [...r.perms, c.perm].sort((a, b) => cmp(a.key, b.key) || cmp(a.rangeEnd, b.rangeEnd));
        }
        this.roles.set(c.name, { name: c.name, perms });
        break;
      }
      case 'roleRevokePermission': {
        const r = this.roles.get(c.role);
        if (!r) throw new AuthStoreError('RoleNotFound');
        const perms = r.perms.filter((p) => !(cmp(p.key, c.key) === 0 && cmp(p.rangeEnd, c.rangeEnd) === 0));
        if (perms.length === r.perms.length) throw new AuthStoreError('PermissionNotGranted');
        this.roles.set(c.role, { name: c.role, perms });
        break;
      }
    }
    this.revision++;
    this.#cache.clear();
  }

  /**
   * Whether `user` may read (or write) [key, rangeEnd) (etcd's isOpPermitted without the token
   * part): auth disabled → yes; unknown user → PermissionDenied; the root role → yes; else the
   * union of the user's permissions of that kind must cover the whole range.
   */
  check(user: string, key: Uint8Array, rangeEnd: Uint8Array | undefined, write: boolean): void {
    if (!this.enabled) return;
    if (user === '') throw new AuthStoreError('UserEmpty');
    const u = this.users.get(user);
    if (!u) throw new AuthStoreError('PermissionDenied');
    if (u.roles.includes(rootRole)) return;
    const ivs = this.#intervals(u, write);
    const end = rangeEnd === undefined || rangeEnd.length === 0 ? undefined : rangeEnd;
    for (const iv of ivs) {
      if (cmp(iv.start, key) > 0) break;
      if (end === undefined) {
        // A single key: inside [start, end).
        if (iv.end === undefined || cmp(key, iv.end) < 0) return;
      } else if (end.length === 1 && end[0] === 0) {
        // Every key from `key` on: only an unbounded interval covers it.
        if (iv.end === undefined) return;
      } else if (iv.end === undefined || cmp(end, iv.end) <= 0) return;
    }
    throw new AuthStoreError('PermissionDenied');
  }

  /** Whether `user` holds the root role (admin operations). */
  isAdmin(user: string): boolean {
    return this.users.get(user)?.roles.includes(rootRole) ?? false;
  }

  #intervals(u: User, write: boolean): Interval[] {
    const k = `${write ? 'w' : 'r'}:${u.name}`;
    const hit = this.#cache.get(k);
    if (hit) return hit;
    const raw: Interval[] = [];
    for (const rn of u.roles) {
      for (const p of this.roles.get(rn)?.perms ?? []) {
        if (p.type !== PermType.ReadWrite && p.type !== (write ? PermType.Write : PermType.Read)) continue;
        let end: Uint8Array | undefined;
        if (p.rangeEnd.length === 0) end = Buffer.concat([p.key, Buffer.from([0])]);
        else if (p.rangeEnd.length === 1 && p.rangeEnd[0] === 0) end = undefined;
        else end = p.rangeEnd;
        if (end !== undefined && cmp(end, p.key) <= 0) continue; // an empty range grants nothing
        raw.push({ start: p.key, end });
      }
    }
    raw.sort((a, b) => cmp(a.start, b.start));
    const merged: Interval[] = [];
    for (const iv of raw) {
      const last = merged[merged.length - 1];
      if (last && (last.end === undefined || cmp(iv.start, last.end) <= 0)) {
        if (last.end !== undefined && (iv.end === undefined || cmp(iv.end, last.end) > 0)) last.end = iv.end;
      } else merged.push({ ...iv });
    }
    if (this.#cache.size >= authUsersMax * 2) this.#cache.clear();
    this.#cache.set(k, merged);
    return merged;
  }

  // -------------------------------------------------------------------------------------------
  // Snapshot

  /** The whole store as JSON bytes (users, roles, enabled, revision); part of the store snapshot. */
  encode(): Uint8Array {
    const b64 = (x: Uint8Array) => Buffer.from(x).toString('base64');
    return Buffer.from(
      JSON.stringify({
        enabled: this.enabled,
        revision: this.revision,
        users: [...this.users.values()],
        roles: [...this.roles.values()].map((r) => ({
          name: r.name,
          perms: r.perms.map((p) => ({ type: p.type, key: b64(p.key), rangeEnd: b64(p.rangeEnd) })),
        })),
      }),
    );
  }

  /** Replaces this store's state with an encoded one. */
  restore(data: Uint8Array): void {
    const o = JSON.parse(Buffer.from(data).toString('utf8')) as {
      enabled: boolean;
      revision: number;
      users: User[];
      roles: Array<{ name: string; perms: Array<{ type: PermType; key: string; rangeEnd: string }> }>;
    };
    this.enabled = o.enabled;
    this.revision = o.revision;
    this.users.clear();
    this.roles.clear();
    this.#cache.clear();
    for (const u of o.users) this.users.set(u.name, { name: u.name, hash: u.hash, roles: [...u.roles] });
    for (const r of o.roles)
      this.roles.set(r.name, {
        name: r.name,
        perms: r.perms.map((p) => ({
          type: p.type,
          key: new Uint8Array(Buffer.from(p.key, 'base64')),
          rangeEnd: new Uint8Array(Buffer.from(p.rangeEnd, 'base64')),
        })),
      });
  }
}

// ---------------------------------------------------------------------------------------------
// Passwords

/** scrypt cost (N = 2^14, r = 8, p = 1: ~16 MiB and tens of ms, a slow salted hash). */
export const scryptCost = { N: 1 << 14, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
const hashBytes = 32;

/** A salted scrypt hash of `password`, as stored: `scrypt$<salt>$<hash>` (base64). */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const h = await new Promise<Buffer>((resolve, reject) =>
    scrypt(password, salt, hashBytes, scryptCost, (err, key) => (err ? reject(err) : resolve(key))),
  );
  return `scrypt$${salt.toString('base64')}$${h.toString('base64')}`;
}

/** Whether `password` matches `stored` (constant time in the hash comparison). */
export async function checkPassword(stored: string, password: string): Promise<boolean> {
  const [kind, salt64, hash64] = stored.split('$');
  if (kind !== 'scrypt' || salt64 === undefined || hash64 === undefined) return false;
  const want = Buffer.from(hash64, 'base64');
  const got = await new Promise<Buffer>((resolve, reject) =>
    scrypt(password, Buffer.from(salt64, 'base64'), want.length, scryptCost, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
  return got.length === want.length && timingSafeEqual(got, want);
}
