/**
 * TLS between `conclave serve` members (`https://` peer URLs): a cluster with peer client-cert
 * auth forms and serves; a member whose certificate another CA signed is refused at the handshake
 * on both sides and never joins the quorum; connections to a member's peer URL with no
 * certificate, another CA, an expired, revoked or disallowed-CN certificate, garbage, plaintext or
 * a stalled handshake are closed before any peer frame is answered, each logged with its reason.
 * Certificates are made at run time with openssl (test/harness/certs.ts).
 */
import { connect as tcpConnect } from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeHello, peerProtocolVersion } from '../../backends/raft/transport/codec.js';
import { type Issued, type TestCa, TestPki } from '../harness/certs.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const handshakeTimeoutMs = 800;

/** Bytes the peer port sent before closing (or null when it stayed open for `waitMs`). */
function probe(
  port: number,
  how: { cert?: Issued; ca?: Buffer; raw?: Buffer; tls?: boolean; send?: Buffer },
  waitMs = 10_000,
): Promise<{ bytes: number; closed: boolean; first?: number; error?: string }> {
  return new Promise((resolve) => {
    let bytes = 0;
    let first: number | undefined;
    let error: string | undefined;
    const s = how.tls
      ? tls.connect({
          host: '127.0.0.1',
          port,
          ...(how.ca ? { ca: how.ca } : {}),
          ...(how.cert ? { cert: how.cert.certPem, key: how.cert.keyPem } : {}),
        })
      : tcpConnect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({
        bytes,
        closed: false,
        ...(first !== undefined ? { first } : {}),
        ...(error ? { error } : {}),
      });
    }, waitMs);
    s.on(how.tls ? 'secureConnect' : 'connect', () => {
      if (how.send) s.write(how.send);
    });
    s.on('data', (d: Buffer) => {
      first ??= d[0];
      bytes += d.length;
    });
    s.on('error', (e) => {
      error = e.message;
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({
        bytes,
        closed: true,
        ...(first !== undefined ? { first } : {}),
        ...(error ? { error } : {}),
      });
    });
  });
}

describe('served — TLS on peer URLs', () => {
  let pki: TestPki;
  let ca: TestCa;
  let other: TestCa;
  let c: ServedCluster;
  let crl: string;
  const certs: Record<string, Issued> = {};

  beforeAll(async () => {
    pki = new TestPki();
    ca = pki.ca('peer-ca');
    other = pki.ca('rogue-ca');
    certs.m0 = ca.issue('peer');
    certs.m1 = ca.issue('peer');
    certs.m2 = other.issue('peer'); // a member whose certificate the cluster's CA did not sign
    certs.expired = ca.issue('peer', { expired: true });
    certs.revoked = ca.issue('peer');
    certs.wrongCn = ca.issue('intruder');
    ca.revoke(certs.revoked);
    crl = ca.crl();
    c = await startServed({
      members: 3,
      peerScheme: 'https',
      waitLeader: false,
      extraArgs: [
        '--peer-client-cert-auth',
        `--peer-trusted-ca-file=${ca.cert}`,
        '--peer-cert-allowed-cn=peer',
        `--peer-crl-file=${crl}`,
        `--tls-handshake-timeout=${handshakeTimeoutMs}`,
      ],
      memberArgs: (i) => {
        const k = certs[`m${i}`]!;
        return [`--peer-cert-file=${k.cert}`, `--peer-key-file=${k.key}`];
      },
    });
  }, 120_000);

  afterAll(async () => {
    await c?.close();
    pki?.close();
  });

  it('tls-peer — two trusted members elect a leader; the member with a rogue CA never joins', async () => {
    const leader = await c.waitLeader(60_000);
    expect(leader).not.toBe(2);
    // Both trusted members refuse m2's client certificate and cannot verify its server certificate.
    await c.waitLog(
      0,
      (l) => l.msg.startsWith('refused a TLS handshake') && l.kind === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      30_000,
    );
    await c.waitLog(0, (l) => l.msg === 'could not connect to peer over TLS', 30_000);
    // m2 keeps campaigning alone: it never hears a leader.
    await new Promise((r) => setTimeout(r, 2000));
    expect(c.members[2]!.logs.some((l) => l.msg === 'leader elected' && l.self !== true)).toBe(false);
    expect(c.members[2]!.logs.some((l) => l.msg === 'connected to peer')).toBe(false);
    const peers = new Set(c.members[0]!.logs.filter((l) => l.msg === 'connected to peer').map((l) => l.peer));
    expect(peers.size).toBe(1);
  }, 90_000);

  it('tls-peer — bad certificates, garbage, plaintext and a stalled handshake are refused and logged', async () => {
    await c.waitLeader(60_000);
    const port = c.members[0]!.peerPort;
    const hello = encodeHello({ version: peerProtocolVersion, clusterId: 1n, from: 2n, to: 3n });
    // Control: a trusted certificate with the allowed CN gets through TLS and its (wrong) hello is
    // answered with a refusal frame: bytes flow.
    const ok = await probe(port, { tls: true, ca: ca.certPem, cert: ca.issue('peer'), send: hello });
    expect(ok.bytes).toBeGreaterThan(0);

    const cases: Array<[string, Parameters<typeof probe>[1], string]> = [
      ['no certificate', { tls: true, ca: ca.certPem, send: hello }, 'NO_CERT'],
      [
        'another CA',
        { tls: true, ca: ca.certPem, cert: other.issue('peer'), send: hello },
        'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      ],
      ['expired', { tls: true, ca: ca.certPem, cert: certs.expired, send: hello }, 'CERT_HAS_EXPIRED'],
      ['revoked', { tls: true, ca: ca.certPem, cert: certs.revoked, send: hello }, 'CERT_REVOKED'],
      ['CN not allowed', { tls: true, ca: ca.certPem, cert: certs.wrongCn, send: hello }, 'CN_NOT_ALLOWED'],
      ['garbage', { send: Buffer.from('\x16\x03\x01\x00\x05garbage-garbage-garbage') }, ''],
      ['plaintext peer hello', { send: hello }, ''],
    ];
    for (const [name, how] of cases) {
      const r = await probe(port, how);
      expect(r.closed, name).toBe(true);
      // Over TLS: no application byte. In the clear: at most a TLS alert record (type 21), never a
      // peer frame.
      if (how.tls) expect(r.bytes, name).toBe(0);
      else if (r.bytes > 0) expect(r.first, name).toBe(21);
    }
    // A connection that never starts its handshake is closed after --tls-handshake-timeout.
    const t0 = performance.now();
    const stalled = await probe(port, {}, 30_000);
    expect(stalled.closed).toBe(true);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(handshakeTimeoutMs - 50);

    for (const [name, , kind] of cases) {
      if (kind === '') continue;
      await c
        .waitLog(0, (l) => l.msg.startsWith('refused a TLS handshake') && l.kind === kind, 10_000)
        .catch((err: unknown) => {
          throw new Error(`${name}: ${String(err)}`);
        });
    }
    await c.waitLog(
      0,
      (l) => l.msg.startsWith('refused a TLS handshake') && l.kind === 'ERR_TLS_HANDSHAKE_TIMEOUT',
      10_000,
    );
    // The member still serves its peers.
    expect(c.leaderIndex()).not.toBe(undefined);
  }, 120_000);
});
