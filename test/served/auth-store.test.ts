/**
 * The auth state machine (backends/raft/store/auth-store.ts) against etcd 3.4's rules: root user
 * and role before enabling, the refusals by name, key/prefix/range/from-key permissions merged
 * across roles, snapshots, and salted scrypt password hashes.
 */
import { describe, expect, it } from 'vitest';
import { decodeCommand, encodeCommand } from '../../backends/raft/node/commands.js';
import {
  type AuthChange,
  AuthStore,
  checkPassword,
  encodeAuthChange,
  hashPassword,
  PermType,
} from '../../backends/raft/store/auth-store.js';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';

const b = (s: string) => new Uint8Array(Buffer.from(s));
const prefixEnd = (s: string) => {
  const k = Buffer.from(s);
  k[k.length - 1]!++;
  return new Uint8Array(k);
};
const reason = (f: () => void) => {
  try {
    f();
    return 'ok';
  } catch (err) {
    return (err as { reason?: string }).reason ?? String(err);
  }
};

describe('auth store', () => {
  it('auth-store — root rules, refusals by etcd name, revision bumps', () => {
    const s = new AuthStore();
    const apply = (c: AuthChange) => reason(() => s.apply(c));
    expect(apply({ op: 'enable' })).toBe('RootUserNotExist');
    expect(apply({ op: 'userAdd', name: 'root', hash: '' })).toBe('ok');
    expect(apply({ op: 'enable' })).toBe('RootRoleNotExist');
    expect(apply({ op: 'userGrantRole', user: 'root', role: 'root' })).toBe('ok'); // root role needs no RoleAdd
    expect(apply({ op: 'userAdd', name: 'root', hash: '' })).toBe('UserAlreadyExist');
    expect(apply({ op: 'userAdd', name: '', hash: '' })).toBe('UserEmpty');
    expect(apply({ op: 'roleAdd', name: '' })).toBe('RoleEmpty');
    expect(apply({ op: 'userGrantRole', user: 'root', role: 'nope' })).toBe('RoleNotFound');
    expect(apply({ op: 'userGrantRole', user: 'nobody', role: 'root' })).toBe('UserNotFound');
    expect(apply({ op: 'userRevokeRole', name: 'root', role: 'app' })).toBe('RoleNotGranted');
    expect(apply({ op: 'roleRevokePermission', role: 'nope', key: b('a'), rangeEnd: b('') })).toBe(
      'RoleNotFound',
    );
    const before = s.revision;
    expect(apply({ op: 'enable' })).toBe('ok');
    expect(s.enabled).toBe(true);
    expect(s.revision).toBe(before + 1);
    expect(apply({ op: 'userDelete', name: 'root' })).toBe('InvalidAuthMgmt');
    expect(apply({ op: 'userRevokeRole', name: 'root', role: 'root' })).toBe('InvalidAuthMgmt');
    expect(apply({ op: 'roleAdd', name: 'app' })).toBe('ok');
    expect(apply({ op: 'roleAdd', name: 'app' })).toBe('RoleAlreadyExist');
    expect(apply({ op: 'roleRevokePermission', role: 'app', key: b('a'), rangeEnd: b('') })).toBe(
      'PermissionNotGranted',
    );
    const r = s.revision;
    expect(apply({ op: 'disable' })).toBe('ok');
    expect(apply({ op: 'disable' })).toBe('ok'); // already disabled: no change
    expect(s.revision).toBe(r + 1);
  });

  it('auth-store — key, prefix, range and from-key permissions, merged across roles, by kind', () => {
    const s = new AuthStore();
    for (const c of [
      { op: 'userAdd', name: 'root', hash: '' },
      { op: 'userGrantRole', user: 'root', role: 'root' },
      { op: 'userAdd', name: 'u', hash: '' },
      { op: 'roleAdd', name: 'r1' },
      { op: 'roleAdd', name: 'r2' },
      { op: 'roleGrantPermission', name: 'r1', perm: { type: PermType.Read, key: b('k'), rangeEnd: b('') } },
      {
        op: 'roleGrantPermission',
        name: 'r1',
        perm: { type: PermType.ReadWrite, key: b('app/'), rangeEnd: prefixEnd('app/') },
      },
      {
        op: 'roleGrantPermission',
        name: 'r2',
        perm: { type: PermType.Write, key: b('m'), rangeEnd: b('p') },
      },
      { op: 'roleGrantPermission', name: 'r2', perm: { type: PermType.Read, key: b('p'), rangeEnd: b('r') } },
      {
        op: 'roleGrantPermission',
        name: 'r2',
        perm: { type: PermType.Read, key: b('z'), rangeEnd: new Uint8Array([0]) },
      },
      { op: 'userGrantRole', user: 'u', role: 'r1' },
      { op: 'userGrantRole', user: 'u', role: 'r2' },
      { op: 'enable' },
    ] as AuthChange[])
      s.apply(c);
    const can = (key: string, end: string | Uint8Array | undefined, write: boolean) =>
      reason(() => s.check('u', b(key), typeof end === 'string' ? b(end) : end, write));
    expect(can('k', undefined, false)).toBe('ok');
    expect(can('k', undefined, true)).toBe('PermissionDenied');
    expect(can('k0', undefined, false)).toBe('PermissionDenied');
    expect(can('app/x', undefined, true)).toBe('ok');
    expect(can('app/', prefixEnd('app/'), false)).toBe('ok');
    expect(can('app', prefixEnd('app'), false)).toBe('PermissionDenied'); // wider than app/
    expect(can('m', 'p', true)).toBe('ok');
    expect(can('m', 'p', false)).toBe('PermissionDenied');
    expect(can('n', 'o', true)).toBe('ok');
    expect(can('p', 'q', false)).toBe('ok');
    expect(can('zz', new Uint8Array([0]), false)).toBe('ok'); // from-key inside from-key
    expect(can('y', new Uint8Array([0]), false)).toBe('PermissionDenied');
    expect(reason(() => s.check('', b('k'), undefined, false))).toBe('UserEmpty');
    expect(reason(() => s.check('ghost', b('k'), undefined, false))).toBe('PermissionDenied');
    expect(reason(() => s.check('root', b('anything'), new Uint8Array([0]), true))).toBe('ok');
    // Revoking a permission and deleting a role take effect at once (the cache is per revision).
    s.apply({ op: 'roleRevokePermission', role: 'r1', key: b('k'), rangeEnd: b('') });
    expect(can('k', undefined, false)).toBe('PermissionDenied');
    s.apply({ op: 'roleDelete', role: 'r2' });
    expect(can('m', 'p', true)).toBe('PermissionDenied');
    expect(s.users.get('u')!.roles).toEqual(['r1']);
    // Snapshot round trip.
    const t = new AuthStore();
    t.restore(s.encode());
    expect(t.revision).toBe(s.revision);
    expect(t.enabled).toBe(true);
    expect(reason(() => t.check('u', b('app/x'), undefined, true))).toBe('ok');
    expect(reason(() => t.check('u', b('m'), undefined, true))).toBe('PermissionDenied');
    // Disabled: everything is allowed.
    s.apply({ op: 'disable' });
    expect(can('m', 'p', true)).toBe('ok');
  });

  it('auth-store — passwords are salted scrypt hashes, checked in constant time', async () => {
    const h1 = await hashPassword('s3cret');
    const h2 = await hashPassword('s3cret');
    expect(h1).not.toBe(h2);
    expect(h1).not.toContain('s3cret');
    expect(await checkPassword(h1, 's3cret')).toBe(true);
    expect(await checkPassword(h1, 's3cret!')).toBe(false);
    expect(await checkPassword('', 's3cret')).toBe(false);
  });

  it('auth-store — auth changes travel as Raft commands and ride in the store snapshot; tokens do not', () => {
    const change: AuthChange = {
      op: 'roleGrantPermission',
      name: 'app',
      perm: { type: PermType.ReadWrite, key: b('app/'), rangeEnd: prefixEnd('app/') },
    };
    const cmd = decodeCommand(encodeCommand({ id: 'x1', op: 'auth', change: encodeAuthChange(change) }));
    expect(cmd).toMatchObject({ id: 'x1', op: 'auth' });
    const store = new Store({ minTtlSeconds: 1 });
    // Untouched auth: the snapshot has no auth section (identical to one written before auth existed).
    const plain = snapshotStore(store);
    expect(restoreStore(plain, { minTtlSeconds: 1, nowMs: 0 }).auth.revision).toBe(1);
    for (const c of [
      { op: 'userAdd', name: 'root', hash: 'h' },
      { op: 'userGrantRole', user: 'root', role: 'root' },
      { op: 'roleAdd', name: 'app' },
      { op: 'userAdd', name: 'alice', hash: 'h2' },
      { op: 'userGrantRole', user: 'alice', role: 'app' },
      { op: 'enable' },
    ] as AuthChange[])
      store.auth.applyEncoded(encodeAuthChange(c), 0);
    store.auth.applyEncoded((cmd as { change: string }).change, 0);
    store.auth.applyEncoded(encodeAuthChange({ op: 'authenticate', name: 'alice', token: 'tok.1' }), 0);
    expect(store.auth.tokenUser('tok.1', 1)).toBe('alice');
    expect(reason(() => store.auth.tokenUser('tok.2', 1))).toBe('InvalidAuthToken');
    expect(reason(() => store.auth.tokenUser('tok.1', store.auth.tokenTtlMs + 10))).toBe('InvalidAuthToken');
    // A token entry applied again long after it was issued (a restart replays the log after the
    // snapshot) does not come back; one issued a moment ago lives out only the rest of its TTL.
    const issued = (token: string, agoMs: number) =>
      store.auth.applyEncoded(
        encodeAuthChange({ op: 'authenticate', name: 'alice', token, at: Date.now() - agoMs }),
        0,
      );
    issued('tok.old', store.auth.tokenTtlMs + 1000);
    expect(reason(() => store.auth.tokenUser('tok.old', 1))).toBe('InvalidAuthToken');
    issued('tok.r1', store.auth.tokenTtlMs - 60_000);
    expect(reason(() => store.auth.tokenUser('tok.r1', 61_000))).toBe('InvalidAuthToken');
    issued('tok.r2', store.auth.tokenTtlMs - 60_000);
    expect(store.auth.tokenUser('tok.r2', 59_000)).toBe('alice');
    // A write checked at an auth revision travels with it (the apply-time check, node.ts).
    const checked = decodeCommand(
      encodeCommand({ id: 'w1', op: 'put', key: b('app/k'), value: b('v'), opts: {}, authRevision: 7 }),
    );
    expect(checked).toMatchObject({ id: 'w1', op: 'put', authRevision: 7 });
    expect(decodeCommand(encodeCommand({ id: 'w2', op: 'revoke', lease: 5n }))).not.toHaveProperty(
      'authRevision',
    );
    const restored = restoreStore(snapshotStore(store), { minTtlSeconds: 1, nowMs: 0 });
    expect(restored.auth.enabled).toBe(true);
    expect(restored.auth.revision).toBe(store.auth.revision);
    expect(reason(() => restored.auth.check('alice', b('app/k'), undefined, true))).toBe('ok');
    expect(restored.auth.tokenCount).toBe(0);
    // A restored snapshot replacing a live store's state carries the auth state too.
    const live = new Store({ minTtlSeconds: 1 });
    live.replaceState(restored);
    expect(live.auth.users.get('alice')?.roles).toEqual(['app']);
  });
});
