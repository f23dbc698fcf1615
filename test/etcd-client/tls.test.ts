import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type EtcdConnectOptions } from '../../backends/connect.js';
import { etcdBinary, freePort } from '../harness/etcd.js';

const openssl = (() => {
  try {
    execFileSync('openssl', ['version']);
    return true;
  } catch {
    return false;
  }
})();
const available = (!!etcdBinary() || process.env.REQUIRE_ETCD === '1') && openssl;

/**
 * A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl; also a
 * second, unrelated CA (other-ca.crt) and an expired server certificate (expired.crt, valid for a
 * day in 2020, signed by the CA, made with `openssl ca` which accepts explicit dates).
 */
function makeCerts(dir: string): void {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  run(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=conclave-test-ca',
  );
  writeFileSync(
    join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    run(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${who}.key`,
      '-out',
      `${who}.csr`,
      '-subj',
      `/CN=${who}`,
    );
    run(
      'x509',
      '-req',
      '-in',
      `${who}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${who}.crt`,
      '-days',
      '1',
      '-extfile',
      `${who}.ext`,
    );
  }
  run(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'other-ca.key',
    '-out',
    'other-ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=unrelated-ca',
  );
  mkdirSync(join(dir, 'db'));
  writeFileSync(join(dir, 'db', 'index.txt'), '');
  writeFileSync(join(dir, 'db', 'serial'), '1000\n');
  writeFileSync(
    join(dir, 'ca.cnf'),
    [
      '[ ca ]',
      'default_ca = c',
      '[ c ]',
      'database = db/index.txt',
      'serial = db/serial',
      'new_certs_dir = db',
      'default_md = sha256',
      'policy = p',
      '[ p ]',
      'commonName = supplied',
      '[ ext ]',
      'subjectAltName = IP:127.0.0.1,DNS:localhost',
      'extendedKeyUsage = serverAuth',
      '',
    ].join('\n'),
  );
  run(
    'ca',
    '-config',
    'ca.cnf',
    '-batch',
    '-cert',
    'ca.crt',
    '-keyfile',
    'ca.key',
    '-in',
    'server.csr',
    '-out',
    'expired.crt',
    '-startdate',
    '20200101000000Z',
    '-enddate',
    '20200102000000Z',
    '-extensions',
    'ext',
  );
}

/** One etcd member serving TLS on loopback with client certificate auth; stopped by PID. */
async function startTlsEtcd(
  dir: string,
  name: string,
  certFile: string,
): Promise<{ endpoint: string; child: ChildProcess }> {
  const client = await freePort();
  const peer = await freePort();
  const endpoint = `127.0.0.1:${client}`;
  const child = spawn(
    'etcd',
    [
      '--name',
      name,
      '--data-dir',
      join(dir, `data-${name}`),
      '--listen-client-urls',
      `https://${endpoint}`,
      '--advertise-client-urls',
      `https://${endpoint}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-cluster',
      `${name}=http://127.0.0.1:${peer}`,
      '--cert-file',
      join(dir, certFile),
      '--key-file',
      join(dir, 'server.key'),
      '--trusted-ca-file',
      join(dir, 'ca.crt'),
      '--client-cert-auth',
      '--heartbeat-interval',
      '50',
      '--election-timeout',
      '250',
      '--logger',
      'zap',
      '--log-level',
      'error',
    ],
    { stdio: 'ignore' },
  );
  return { endpoint, child };
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
}

describe.skipIf(!available)('etcd client — TLS with server verification and client certificates', () => {
  let dir: string;
  let etcd: ChildProcess;
  let expiredEtcd: ChildProcess;
  let endpoint: string;
  let expiredEndpoint: string;
  const file = (n: string) => readFileSync(join(dir, n));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'conclave-tls-'));
    makeCerts(dir);
    const good = await startTlsEtcd(dir, 'tls', 'server.crt');
    etcd = good.child;
    endpoint = good.endpoint;
    const expired = await startTlsEtcd(dir, 'expired', 'expired.crt');
    expiredEtcd = expired.child;
    expiredEndpoint = expired.endpoint;
    const kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('ca.crt'), cert: file('client.crt'), key: file('client.key') },
      lazy: true,
    });
    const until = Date.now() + 15_000;
    while (true) {
      try {
        await kv.status({ signal: AbortSignal.timeout(1000) });
        break;
      } catch (err) {
        if (Date.now() > until) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await kv.close();
  }, 30_000);

  afterAll(async () => {
    await stopChild(etcd);
    await stopChild(expiredEtcd);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a client with the CA and a client certificate reads and writes', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('ca.crt'), cert: file('client.crt'), key: file('client.key') },
    });
    await kv.put('tls/k', 'secure');
    expect(new TextDecoder().decode((await kv.get('tls/k'))!.value)).toBe('secure');
  });

  it('every TLS failure makes connect() reject tls-failure, not retryable, naming the endpoint and the reason', async () => {
    const mtls = { cert: file('client.crt'), key: file('client.key') };
    const cases: Array<[string, EtcdConnectOptions, RegExp]> = [
      [
        'unknown CA',
        { backend: 'etcd', endpoints: [endpoint], tls: { ca: file('other-ca.crt'), ...mtls } },
        /unable to verify|certificate/i,
      ],
      [
        'system roots (https:// without tls.ca)',
        { backend: 'etcd', endpoints: [`https://${endpoint}`] },
        /unable to verify|certificate/i,
      ],
      [
        'wrong host name',
        {
          backend: 'etcd',
          endpoints: [endpoint],
          tls: { ca: file('ca.crt'), ...mtls, serverName: 'wrong.example' },
        },
        /does not match|altnames/i,
      ],
      [
        'no client certificate',
        { backend: 'etcd', endpoints: [endpoint], tls: { ca: file('ca.crt') } },
        /bad certificate|alert|certificate required/i,
      ],
      [
        'expired server certificate',
        { backend: 'etcd', endpoints: [expiredEndpoint], tls: { ca: file('ca.crt'), ...mtls } },
        /expired/i,
      ],
    ];
    for (const [what, opts, reason] of cases) {
      const err = await connect({ ...opts, dialTimeoutMs: 5000 }).then(
        async (kv) => {
          await kv.close();
          return new Error(`${what}: connect resolved`);
        },
        (e: unknown) => e as Error & { code?: string; retryable?: boolean },
      );
      expect(err, what).toMatchObject({ name: 'ConclaveError', code: 'tls-failure', retryable: false });
      expect(err.message, what).toContain(opts.endpoints[0]!.replace('https://', ''));
      expect(err.message, what).toMatch(reason);
    }
  });

  it('with lazy, the first call fails tls-failure at once, without retries', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('other-ca.crt'), cert: file('client.crt'), key: file('client.key') },
      lazy: true,
    });
    const t0 = Date.now();
    await expect(kv.get('tls/k')).rejects.toMatchObject({ code: 'tls-failure', retryable: false });
    // Today's retry loop spent ~1.5 s of backoff on it; one attempt is a handshake.
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('a client without a client certificate is refused', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('ca.crt') },
      callTimeoutMs: 3000,
      lazy: true,
    });
    await expect(kv.get('tls/k')).rejects.toMatchObject({ name: 'ConclaveError' });
  });

  it('a client that does not trust the server CA is refused', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { cert: file('client.crt'), key: file('client.key') },
      callTimeoutMs: 3000,
      lazy: true,
    });
    await expect(kv.get('tls/k')).rejects.toMatchObject({ name: 'ConclaveError' });
  });
});
