/**
 * docs/security.md's server part: the openssl block under "Make a CA and certificates" runs as a
 * person would paste it (bash, in an empty directory), and its files work: a `conclave serve`
 * member started with the page's flags (ports changed) accepts the client certificate from the
 * Conclave client and from etcdctl, and refuses a client without one.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const page = readFileSync(resolve(import.meta.dirname, '../../docs/security.md'), 'utf8');
const etcdctl = spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;

/** The ```sh block right after the marker comment naming this test. */
function checkedBlock(): string {
  const marker = '<!-- checked: test/served/tls-docs.test.ts runs this block -->';
  const at = page.indexOf(marker);
  if (at < 0) throw new Error('docs/security.md lost its checked openssl block');
  const m = /```sh\n([\s\S]*?)```/.exec(page.slice(at));
  if (!m) throw new Error('no ```sh block after the marker');
  return m[1]!;
}

describe('docs/security.md — server TLS setup', () => {
  const dir = mkdtempSync(join(tmpdir(), 'conclave-docs-pki-'));
  let c: ServedCluster | undefined;
  afterAll(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('tls-docs — the openssl commands run as pasted and their certificates serve mTLS', {
    timeout: 120_000,
  }, async () => {
    const out = execFileSync('bash', ['-euo', 'pipefail', '-c', checkedBlock()], {
      cwd: dir,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(out).toContain('member1.crt: OK');
    expect(out).toContain('app.crt: OK');
    // The page's serve flags (its `--cert-file … --peer-client-cert-auth` line), ports chosen by the harness.
    expect(page).toContain(
      '--cert-file member1.crt --key-file member1.key --trusted-ca-file ca.crt --client-cert-auth',
    );
    const f = (n: string) => join(dir, n);
    c = await startServed({
      members: 1,
      clientScheme: 'https',
      peerScheme: 'https',
      extraArgs: [
        `--cert-file=${f('member1.crt')}`,
        `--key-file=${f('member1.key')}`,
        `--trusted-ca-file=${f('ca.crt')}`,
        '--client-cert-auth',
        `--peer-cert-file=${f('member1.crt')}`,
        `--peer-key-file=${f('member1.key')}`,
        `--peer-trusted-ca-file=${f('ca.crt')}`,
        '--peer-client-cert-auth',
      ],
    });
    const endpoint = `https://${c.endpoints[0]!}`;
    const ca = readFileSync(f('ca.crt'));
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [endpoint],
      tls: { ca, cert: readFileSync(f('app.crt')), key: readFileSync(f('app.key')) },
    });
    await kv.put('docs/k', 'v');
    await expect(
      connect({ backend: 'etcd', endpoints: [endpoint], tls: { ca }, dialTimeoutMs: 3000 }),
    ).rejects.toMatchObject({ code: 'tls-failure' });
    if (etcdctl || process.env.REQUIRE_ETCD === '1') {
      const ctl = (...a: string[]) =>
        execFileSync(
          'etcdctl',
          [
            `--endpoints=${endpoint}`,
            `--cacert=${f('ca.crt')}`,
            `--cert=${f('app.crt')}`,
            `--key=${f('app.key')}`,
            ...a,
          ],
          { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
        );
      expect(ctl('get', 'docs/k', '--print-value-only').trim()).toBe('v');
      expect(ctl('put', 'docs/ctl', 'over-tls').trim()).toBe('OK');
      // etcdctl 3.4 prints the health line on stderr.
      const health = spawnSync(
        'etcdctl',
        [
          `--endpoints=${endpoint}`,
          `--cacert=${f('ca.crt')}`,
          `--cert=${f('app.crt')}`,
          `--key=${f('app.key')}`,
          'endpoint',
          'health',
        ],
        { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
      );
      expect(`${health.stdout}${health.stderr}`).toMatch(/is healthy/);
      expect(health.status).toBe(0);
    }
  });
});
