import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../src/connect.js';
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

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
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
}

describe.skipIf(!available)('etcd client — TLS with server verification and client certificates', () => {
  let dir: string;
  let etcd: ChildProcess;
  let endpoint: string;
  const file = (n: string) => readFileSync(join(dir, n));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'conclave-tls-'));
    makeCerts(dir);
    const client = await freePort();
    const peer = await freePort();
    endpoint = `127.0.0.1:${client}`;
    etcd = spawn(
      'etcd',
      [
        '--name',
        'tls',
        '--data-dir',
        join(dir, 'data'),
        '--listen-client-urls',
        `https://${endpoint}`,
        '--advertise-client-urls',
        `https://${endpoint}`,
        '--listen-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-cluster',
        `tls=http://127.0.0.1:${peer}`,
        '--cert-file',
        join(dir, 'server.crt'),
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
    const kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('ca.crt'), cert: file('client.crt'), key: file('client.key') },
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
    if (etcd && etcd.exitCode === null) {
      const exited = new Promise((r) => etcd.once('exit', r));
      etcd.kill('SIGTERM');
      await exited;
    }
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

  it('a client without a client certificate is refused', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca: file('ca.crt') },
      callTimeoutMs: 3000,
    });
    await expect(kv.get('tls/k')).rejects.toMatchObject({ name: 'ConclaveError' });
  });

  it('a client that does not trust the server CA is refused', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { cert: file('client.crt'), key: file('client.key') },
      callTimeoutMs: 3000,
    });
    await expect(kv.get('tls/k')).rejects.toMatchObject({ name: 'ConclaveError' });
  });
});
