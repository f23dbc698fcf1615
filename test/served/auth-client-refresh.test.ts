/**
 * The Conclave etcd client across auth changes, on real etcd 3.4.23 and on a `conclave serve`
 * member, with simple tokens and with JWT tokens: a client connected as a user keeps working
 * while root changes the auth store under it, by authenticating again when its token is refused
 * (as etcd's Go client does: clientv3 shouldRefreshToken on "invalid auth token" and "revision of
 * auth store is old"):
 * - after an unrelated auth change (a role added): a JWT is now "old"; a simple token still valid;
 * - after auth is disabled: the simple token was dropped ("invalid auth token"), and Authenticate
 *   answers "authentication is not enabled", so the client goes on without a token; a JWT still
 *   verifies but a read is refused as old, with the same outcome.
 * Each step is a put, a get and a watch that must see a later put; the client is never rebuilt.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { Target } from './auth-matrix-kit.js';

const available = !!etcdBinary() || process.env.REQUIRE_ETCD === '1';
const B = (s: string) => Buffer.from(s);
const text = (b: Uint8Array | undefined) => (b ? Buffer.from(b).toString() : undefined);
const alice = { username: 'alice', password: 'alice-pw-refresh' };
const rootPw = 'root-pw-refresh';

const keyDir = mkdtempSync(join(tmpdir(), 'conclave-auth-refresh-'));
function jwtSpec(): string {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const priv = join(keyDir, 'jwt.key');
  const pub = join(keyDir, 'jwt.pub');
  writeFileSync(priv, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
  writeFileSync(pub, rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  return `jwt,pub-key=${pub},priv-key=${priv},sign-method=RS256,ttl=10m`;
}

/** A put, a get of it, and a watch of the prefix that sees a later put: each must succeed. */
async function works(kv: KV, step: string): Promise<void> {
  await kv.put(`app/${step}`, step);
  expect(text((await kv.get(`app/${step}`))?.value), step).toBe(step);
  const ac = new AbortController();
  const w = kv.watch(`app/${step}/`, { prefix: true, signal: ac.signal });
  try {
    await w.ready;
    await kv.put(`app/${step}/w`, 'x');
    for await (const batch of w) {
      expect(text(batch.events[0]?.kv.key), step).toBe(`app/${step}/w`);
      break;
    }
  } finally {
    ac.abort();
    await w.close();
  }
}

async function run(endpoint: string): Promise<void> {
  const x = new Target(endpoint);
  try {
    await x.auth('RoleAdd', { name: 'root' });
    await x.auth('UserAdd', { name: 'root', password: rootPw });
    await x.auth('UserGrantRole', { user: 'root', role: 'root' });
    await x.auth('RoleAdd', { name: 'app' });
    await x.auth('RoleGrantPermission', {
      name: 'app',
      perm: { permType: 2, key: B('app/'), rangeEnd: B('app0') },
    });
    await x.auth('UserAdd', { name: alice.username, password: alice.password });
    await x.auth('UserGrantRole', { user: alice.username, role: 'app' });
    await x.auth('AuthEnable', {});
    const rootTok = async () =>
      (await x.auth<{ token: string }>('Authenticate', { name: 'root', password: rootPw })).token;

    await using kv = await connect({ backend: 'etcd', endpoints: [endpoint], auth: alice });
    await works(kv, 'first');
    // Refused to the user before and after: the client did not fall back to anything wider.
    await expect(kv.put('other', 'x')).rejects.toMatchObject({ code: 'permission-denied' });

    await x.auth('RoleAdd', { name: 'unrelated' }, await rootTok());
    await works(kv, 'after-role-add');
    await expect(kv.put('other', 'x')).rejects.toMatchObject({ code: 'permission-denied' });

    await x.auth('AuthDisable', {}, await rootTok());
    await works(kv, 'after-disable');
    await kv.put('other', 'x'); // auth is off: anyone may write anywhere
  } finally {
    x.close();
  }
}

describe.skipIf(!available)('served — the Conclave client authenticates again across auth changes', () => {
  afterAll(() => rmSync(keyDir, { recursive: true, force: true }));

  for (const kind of ['simple', 'jwt'] as const) {
    describe(`${kind} tokens`, () => {
      let etcd: EtcdCluster | undefined;
      let served: ServedCluster;
      beforeAll(async () => {
        const tokenArgs = kind === 'jwt' ? ['--auth-token', jwtSpec()] : [];
        [etcd, served] = await Promise.all([
          startEtcd({ extraArgs: ['--bcrypt-cost', '4', ...tokenArgs] }),
          startServed({ members: 1, extraArgs: tokenArgs }),
        ]);
      }, 120_000);
      afterAll(async () => {
        await Promise.all([etcd?.stop(), served?.close()]);
      });

      it(`${kind} tokens — etcd: put, get and watch keep working after a role is added and after auth is disabled`, async () => {
        await run(etcd!.endpoints[0]!);
      }, 120_000);
      it(`${kind} tokens — conclave serve: the same`, async () => {
        await run(served.endpoints[0]!);
      }, 120_000);
    });
  }
});
