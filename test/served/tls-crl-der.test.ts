/**
 * `--client-crl-file` in DER as well as PEM (etcd reads it with Go's x509.ParseCRL, which takes
 * both; etcd's own e2e fixture `revoke.crl` is DER): a TLS server over the member's material with
 * the CRL as DER refuses the revoked client certificate and accepts a good one.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTlsServer, crlAsPem, noTls, TlsMaterial } from '../../backends/raft/server/tls.js';
import { type Issued, type TestCa, TestPki } from '../harness/certs.js';

const quiet = { info() {}, warn() {}, error() {} };

describe('served — a DER CRL', () => {
  let pki: TestPki;
  let ca: TestCa;
  let server: Issued;
  let good: Issued;
  let revoked: Issued;
  let derCrl: string;
  let pemCrl: string;

  beforeAll(() => {
    pki = new TestPki();
    ca = pki.ca('crl-ca');
    server = ca.issue('member');
    good = ca.issue('alice');
    revoked = ca.issue('mallory');
    ca.revoke(revoked);
    derCrl = join(pki.dir, 'revoke.der.crl');
    pemCrl = ca.crl();
    execFileSync('openssl', ['crl', '-in', pemCrl, '-outform', 'DER', '-out', derCrl]);
  });
  afterAll(() => pki?.close());

  it('crlAsPem — DER is wrapped as PEM, PEM is kept as it is', () => {
    const pem = readFileSync(pemCrl);
    expect(crlAsPem(pem)).toBe(pem);
    const wrapped = crlAsPem(readFileSync(derCrl)).toString();
    expect(wrapped).toMatch(/^-----BEGIN X509 CRL-----\n[A-Za-z0-9+/=\n]+-----END X509 CRL-----\n$/);
    // The same CRL, as OpenSSL reads it.
    const text = (f: string, form: string) =>
      execFileSync('openssl', ['crl', '-in', f, '-inform', form, '-noout', '-text'], { encoding: 'utf8' });
    expect(text(derCrl, 'DER')).toBe(text(pemCrl, 'PEM'));
  });

  it('a member given the CRL as DER refuses the revoked certificate at the handshake and accepts a good one', async () => {
    const material = await TlsMaterial.open({
      side: 'client',
      flags: {
        ...noTls,
        certFile: server.cert,
        keyFile: server.key,
        trustedCaFile: ca.cert,
        clientCertAuth: true,
        crlFile: derCrl,
      },
      dataDir: pki.dir,
      hosts: ['127.0.0.1'],
      log: quiet,
    });
    const srv = createTlsServer({
      material,
      handshakeTimeoutMs: 10_000,
      log: quiet,
      what: 'client URL (test)',
      onSecure: (s) => s.end('ok'),
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    const dial = (c: Issued) =>
      new Promise<string>((resolve) => {
        const s = tls.connect({ host: '127.0.0.1', port, ca: ca.certPem, cert: c.certPem, key: c.keyPem });
        let got = '';
        s.on('data', (b: Buffer) => {
          got += b.toString();
        });
        s.on('error', (e: Error) => resolve(`error: ${e.message}`));
        s.on('close', () => resolve(got === '' ? 'closed' : got));
      });
    try {
      expect(await dial(good)).toBe('ok');
      expect(await dial(revoked)).not.toBe('ok');
      expect(srv.failures.count).toBeGreaterThanOrEqual(1);
    } finally {
      srv.close();
      material.close();
    }
  });
});
