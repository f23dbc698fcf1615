/**
 * TLS on client URLs, against a 3-member `conclave serve` cluster with TLS everywhere (https://
 * client and peer URLs, client-cert auth, a CRL) and against a real etcd started with the same
 * client flags: the same client calls get the same answers. A client with a trusted certificate
 * works (`tls` options and an `etcds://`-style https endpoint), a Mutex and an Election run over
 * mTLS; no certificate, another CA, an expired or a revoked certificate, and a plaintext client
 * are refused, and nothing they send reaches the store.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type EtcdConnectOptions } from '../../backends/connect.js';
import { Election, Mutex } from '../../recipes/index.js';
import { Session } from '../../src/session.js';
import { type Issued, type TestCa, TestPki } from '../harness/certs.js';
import { etcdBinary, freePort } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const etcdAvailable = !!etcdBinary() || process.env.REQUIRE_ETCD === '1';
const text = (b: Uint8Array | undefined) => (b === undefined ? undefined : Buffer.from(b).toString());

interface Target {
  readonly name: string;
  readonly endpoints: string[];
}

/** One etcd member with TLS client URLs, client-cert auth and a CRL; stopped by PID. */
async function startTlsEtcd(
  dir: string,
  ca: TestCa,
  server: Issued,
  crl: string,
): Promise<{ endpoint: string; child: ChildProcess }> {
  const client = await freePort();
  const peer = await freePort();
  const endpoint = `127.0.0.1:${client}`;
  const child = spawn(
    'etcd',
    [
      '--name=tls',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=https://${endpoint}`,
      `--advertise-client-urls=https://${endpoint}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=tls=http://127.0.0.1:${peer}`,
      `--cert-file=${server.cert}`,
      `--key-file=${server.key}`,
      `--trusted-ca-file=${ca.cert}`,
      '--client-cert-auth',
      `--client-crl-file=${crl}`,
      '--heartbeat-interval=50',
      '--election-timeout=250',
      '--logger=zap',
      '--log-level=error',
    ],
    { stdio: 'ignore' },
  );
  return { endpoint, child };
}

async function waitServing(endpoint: string, o: Omit<EtcdConnectOptions, 'backend' | 'endpoints'>) {
  const until = Date.now() + 30_000;
  for (;;) {
    try {
      const kv = await connect({ backend: 'etcd', endpoints: [`https://${endpoint}`], ...o });
      await kv.status();
      await kv.close();
      return;
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

describe('served — TLS on client URLs (and the same against real etcd)', () => {
  let pki: TestPki;
  let ca: TestCa;
  let other: TestCa;
  let crl: string;
  const c: Record<string, Issued> = {};
  let served: ServedCluster;
  let etcd: { endpoint: string; child: ChildProcess } | undefined;
  let etcdDir: string;
  const targets: Target[] = [];

  beforeAll(async () => {
    pki = new TestPki();
    ca = pki.ca('client-ca');
    other = pki.ca('other-ca');
    c.server = ca.issue('member');
    c.peer = ca.issue('peer');
    c.alice = ca.issue('alice');
    c.expired = ca.issue('old', { expired: true });
    c.revoked = ca.issue('mallory');
    c.foreign = other.issue('eve');
    ca.revoke(c.revoked);
    crl = ca.crl();
    const tlsArgs = [
      `--cert-file=${c.server.cert}`,
      `--key-file=${c.server.key}`,
      `--trusted-ca-file=${ca.cert}`,
      '--client-cert-auth',
      `--client-crl-file=${crl}`,
      `--peer-cert-file=${c.peer.cert}`,
      `--peer-key-file=${c.peer.key}`,
      `--peer-trusted-ca-file=${ca.cert}`,
      '--peer-client-cert-auth',
    ];
    const [s, e] = await Promise.all([
      startServed({ members: 3, clientScheme: 'https', peerScheme: 'https', extraArgs: tlsArgs }),
      etcdAvailable
        ? (async () => {
            etcdDir = mkdtempSync(join(tmpdir(), 'conclave-tls-etcd-'));
            const r = await startTlsEtcd(etcdDir, ca, c.server!, crl);
            await waitServing(r.endpoint, {
              tls: { ca: ca.certPem, cert: c.alice!.certPem, key: c.alice!.keyPem },
            });
            return r;
          })()
        : Promise.resolve(undefined),
    ]);
    served = s;
    etcd = e;
    targets.push({ name: 'served', endpoints: served.endpoints.map((x) => `https://${x}`) });
    if (etcd) targets.push({ name: 'etcd', endpoints: [`https://${etcd.endpoint}`] });
  }, 180_000);

  afterAll(async () => {
    await served?.close();
    if (etcd && etcd.child.exitCode === null) {
      const exited = new Promise((r) => etcd!.child.once('exit', r));
      etcd.child.kill('SIGTERM');
      await exited;
    }
    if (etcdDir) rmSync(etcdDir, { recursive: true, force: true });
    pki?.close();
  });

  it('tls-client — a trusted client certificate reads and writes; a Mutex and an Election work over mTLS', {
    timeout: 60_000,
  }, async () => {
    for (const t of targets) {
      await using kv = await connect({
        backend: 'etcd',
        endpoints: t.endpoints,
        tls: { ca: ca.certPem, cert: c.alice!.certPem, key: c.alice!.keyPem },
      });
      await kv.put('tls/k', t.name);
      expect(text((await kv.get('tls/k'))?.value), t.name).toBe(t.name);
      await using session = await Session.create(kv, { ttlSeconds: 10 });
      const lock = await new Mutex(session, 'tls/lock').lock();
      expect((await kv.range('tls/lock/', { prefix: true })).count, t.name).toBe(1);
      await lock.unlock();
      const election = new Election(session, 'tls/election');
      const leadership = await election.campaign('me');
      expect(text((await election.leader())?.value), t.name).toBe('me');
      await leadership.resign();
      expect(await election.leader(), t.name).toBe(undefined);
    }
  });

  it('tls-client — no certificate, another CA, expired, revoked and plaintext clients are refused; nothing they sent is stored', {
    timeout: 180_000,
  }, async () => {
    const cases: Array<[string, EtcdConnectOptions['tls'] | false]> = [
      ['no client certificate', { ca: ca.certPem }],
      ['another CA', { ca: ca.certPem, cert: c.foreign!.certPem, key: c.foreign!.keyPem }],
      ['expired', { ca: ca.certPem, cert: c.expired!.certPem, key: c.expired!.keyPem }],
      ['revoked', { ca: ca.certPem, cert: c.revoked!.certPem, key: c.revoked!.keyPem }],
      ['plaintext', false],
    ];
    const answers: Record<string, Record<string, string>> = {};
    for (const t of targets) {
      answers[t.name] = {};
      for (const [what, opts] of cases) {
        const endpoints =
          opts === false ? t.endpoints.map((e) => e.replace('https://', 'http://')) : t.endpoints;
        const r = await connect({
          backend: 'etcd',
          endpoints,
          ...(opts === false ? {} : { tls: opts }),
          dialTimeoutMs: 3000,
          callTimeoutMs: 4000,
          lazy: true,
        }).then(async (kv) => {
          try {
            await kv.put(`tls/refused/${what}`, 'x');
            return 'stored';
          } catch (err) {
            return (err as { code?: string }).code ?? String(err);
          } finally {
            await kv.close();
          }
        });
        answers[t.name]![what] = r;
        expect(r, `${t.name}: ${what}`).not.toBe('stored');
      }
    }
    await using kv = await connect({
      backend: 'etcd',
      endpoints: targets[0]!.endpoints,
      tls: { ca: ca.certPem, cert: c.alice!.certPem, key: c.alice!.keyPem },
    });
    expect((await kv.range('tls/refused/', { prefix: true })).count).toBe(0);
    // The record of answers per target (differential: refusals may name the reason differently).
    console.log('tls-client refusals', JSON.stringify(answers));
  });

  it('tls-client — the member logs each refused client handshake with its reason', async () => {
    const m = served.members[0]!;
    const kinds = new Set(
      served.members.flatMap((x) =>
        x.logs
          .filter((l) => l.msg.startsWith('refused a TLS handshake on the client URL'))
          .map((l) => l.kind),
      ),
    );
    for (const k of ['NO_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_HAS_EXPIRED', 'CERT_REVOKED'])
      expect([...kinds], k).toContain(k);
    // A raw TLS client with no ALPN still reaches the gateway/gRPC sorting (sniffed by its bytes).
    const got = await new Promise<string>((resolve) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: m.clientPort,
        ca: ca.certPem,
        cert: c.alice!.certPem,
        key: c.alice!.keyPem,
      });
      let out = '';
      s.on('secureConnect', () => s.write('GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      s.on('data', (d: Buffer) => {
        out += d.toString();
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(out));
    });
    expect(got).toMatch(/^HTTP\/1\.1 /);
  });
});
