/**
 * Client certificates as users (etcd's AuthInfoFromTLS) on a `conclave serve` member with
 * `--client-cert-auth` and auth enabled: a client that sends no token is the user its verified
 * certificate's Common Name names. root's certificate manages auth without a password; alice's
 * reads and writes her prefix, holds a Mutex and wins an Election there, and is refused
 * elsewhere; a certificate naming no user is refused (etcd's "permission denied").
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { Election, Mutex } from '../../recipes/index.js';
import { Session } from '../../src/session.js';
import { hasOpenssl, type Issued, type TestCa, TestPki } from '../harness/certs.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const etcdctlAvailable = (() => {
  try {
    execFileSync('etcdctl', ['version'], { stdio: 'ignore', env: { ...process.env, ETCDCTL_API: '3' } });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasOpenssl() || !etcdctlAvailable)('served — client certificates name the user', () => {
  let pki: TestPki;
  let ca: TestCa;
  let served: ServedCluster;
  const c: Record<'member' | 'root' | 'alice' | 'nobody', Issued> = {} as never;

  /** etcdctl with `who`'s certificate and no --user: the certificate is the credential. */
  const ctl = (who: Issued, ...a: string[]) => {
    try {
      return execFileSync(
        'etcdctl',
        [
          `--endpoints=https://${served.endpoints[0]!}`,
          `--cacert=${ca.cert}`,
          `--cert=${who.cert}`,
          `--key=${who.key}`,
          '--command-timeout=30s',
          ...a,
        ],
        { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', stdio: 'pipe' },
      );
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      return `${e.stdout ?? ''}${e.stderr ?? ''}`;
    }
  };
  const tlsOf = (who: Issued) => ({ ca: ca.certPem, cert: who.certPem, key: who.keyPem });

  beforeAll(async () => {
    pki = new TestPki();
    ca = pki.ca('auth-ca');
    c.member = ca.issue('member');
    c.root = ca.issue('root');
    c.alice = ca.issue('alice');
    c.nobody = ca.issue('nobody');
    served = await startServed({
      members: 1,
      clientScheme: 'https',
      extraArgs: [
        `--cert-file=${c.member.cert}`,
        `--key-file=${c.member.key}`,
        `--trusted-ca-file=${ca.cert}`,
        '--client-cert-auth',
      ],
    });
    for (const a of [
      ['user', 'add', 'root:root-pw-tls'],
      ['role', 'add', 'app'],
      ['role', 'grant-permission', 'app', 'readwrite', 'app/', '--prefix=true'],
      ['user', 'add', 'alice:alice-pw-tls'],
      ['user', 'grant-role', 'alice', 'app'],
      ['put', 'other/k', 'v'],
      ['auth', 'enable'],
    ])
      expect(ctl(c.root, ...a)).not.toMatch(/Error/);
  }, 120_000);

  afterAll(async () => {
    await served?.close();
    pki?.close();
  });

  it('tls-auth — root by certificate manages auth; alice by certificate works in her prefix only; an unknown CN is refused', async () => {
    expect(ctl(c.root, 'user', 'list')).toMatch(/alice\s+root/);
    expect(ctl(c.alice, 'user', 'list')).toMatch(/permission denied/);
    expect(ctl(c.alice, 'put', 'app/x', '1')).toMatch(/OK/);
    expect(ctl(c.alice, 'get', 'other/k')).toMatch(/permission denied/);
    expect(ctl(c.nobody, 'get', 'app/x')).toMatch(/permission denied/);

    await using kv = await connect({
      backend: 'etcd',
      endpoints: [`https://${served.endpoints[0]!}`],
      tls: tlsOf(c.alice),
    });
    await using session = await Session.create(kv, { ttlSeconds: 10 });
    const lock = await new Mutex(session, 'app/lock').lock();
    expect((await kv.range('app/lock/', { prefix: true })).count).toBe(1);
    await lock.unlock();
    const won = await new Election(session, 'app/election').campaign('alice');
    expect(won.key).toBeDefined();
    await expect(kv.put('other/k', 'x')).rejects.toMatchObject({ code: 'permission-denied' });
  });
});
