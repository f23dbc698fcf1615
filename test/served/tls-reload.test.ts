/**
 * TLS material in-process (backends/raft/server/tls.ts): certificates re-read when their files
 * change (new connections get the new certificate, no restart), a half-written rotation keeps the
 * old one, the CRL reloads too, and the handshake timeout closes a stalled connection.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTlsServer, noTls, TlsMaterial } from '../../backends/raft/server/tls.js';
import { type Issued, type TestCa, TestPki } from '../harness/certs.js';

const lines: Array<{ msg: string; [k: string]: unknown }> = [];
const log = {
  info: (o: object, msg: string) => lines.push({ ...o, msg }),
  warn: (o: object, msg: string) => lines.push({ ...o, msg }),
  error: (o: object, msg: string) => lines.push({ ...o, msg }),
};

/** Connects with `cert` and returns the server certificate's CN, or the error text. */
function hello(port: number, ca: Buffer, cert?: Issued): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({
      host: '127.0.0.1',
      port,
      ca,
      ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}),
    });
    let got = '';
    s.on('secureConnect', () => {
      got = String(s.getPeerCertificate().subject.CN);
    });
    s.on('data', (d: Buffer) => {
      got += `:${d.toString()}`;
    });
    s.on('error', (e) => {
      got = got || `error ${e.message}`;
    });
    s.on('close', () => resolve(got));
  });
}

describe('TLS material', () => {
  let pki: TestPki;
  let ca: TestCa;
  let a: Issued;
  let b: Issued;
  let client: Issued;

  beforeAll(() => {
    pki = new TestPki();
    ca = pki.ca();
    a = ca.issue('server-a');
    b = ca.issue('server-b');
    client = ca.issue('alice');
  });
  afterAll(() => pki?.close());

  it('tls-reload — a changed certificate is used for new connections; a broken file keeps the old one', async () => {
    const cert = join(pki.dir, 'live.crt');
    const key = join(pki.dir, 'live.key');
    copyFileSync(a.cert, cert);
    copyFileSync(a.key, key);
    const m = await TlsMaterial.open({
      side: 'client',
      flags: { ...noTls, certFile: cert, keyFile: key },
      dataDir: pki.dir,
      hosts: [],
      log,
    });
    const server = createTlsServer({
      material: m,
      handshakeTimeoutMs: 5000,
      log,
      what: 'client URL',
      onSecure: (s) => s.end('hi'),
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      expect(await hello(port, ca.certPem)).toBe('server-a:hi');
      // A half-written rotation (the key file is not a key yet): refused, the old pair stays.
      writeFileSync(key, '-----BEGIN PRIVATE KEY-----\ntruncated');
      copyFileSync(b.cert, cert);
      expect(m.checkFiles()).toBe(false);
      expect(lines.some((l) => l.msg.includes('do not load: still using the previous ones'))).toBe(true);
      expect(await hello(port, ca.certPem)).toBe('server-a:hi');
      copyFileSync(b.key, key);
      // The periodic check (certReloadCheckMs) notices it without being asked.
      const until = performance.now() + 10_000;
      let cn = '';
      while (performance.now() < until) {
        cn = await hello(port, ca.certPem);
        if (cn === 'server-b:hi') break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(cn).toBe('server-b:hi');
    } finally {
      m.close();
      server.close();
    }
  });

  it('tls-reload — a CRL published after start revokes a certificate for new connections', async () => {
    const crl = join(pki.dir, 'live.crl');
    copyFileSync(ca.crl(), crl);
    const m = await TlsMaterial.open({
      side: 'client',
      flags: {
        ...noTls,
        certFile: a.cert,
        keyFile: a.key,
        trustedCaFile: ca.cert,
        clientCertAuth: true,
        crlFile: crl,
      },
      dataDir: pki.dir,
      hosts: [],
      log,
    });
    const server = createTlsServer({
      material: m,
      handshakeTimeoutMs: 400,
      log,
      what: 'client URL',
      onSecure: (s) => s.end('hi'),
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      expect(await hello(port, ca.certPem, client)).toBe('server-a:hi');
      expect(await hello(port, ca.certPem)).toMatch(/^(error|server-a$)/); // no client certificate
      ca.revoke(client);
      copyFileSync(ca.crl(), crl);
      m.checkFiles();
      expect(await hello(port, ca.certPem, client)).not.toContain(':hi');
      expect(server.failures.count).toBeGreaterThanOrEqual(2);
      // A connection that never sends a ClientHello is closed after the handshake timeout.
      const t0 = performance.now();
      await new Promise<void>((resolve) => {
        const s = tcpConnect({ host: '127.0.0.1', port });
        s.on('error', () => undefined);
        s.on('close', () => resolve());
      });
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(350);
      expect(took).toBeLessThan(20_000);
    } finally {
      m.close();
      server.close();
    }
  });
});
