/**
 * A refused client certificate, as the Conclave etcd client reports it, against a `conclave serve`
 * member and real etcd 3.4.23, both with `--client-cert-auth`: no certificate, one from another
 * CA, an expired one. etcd answers with a TLS alert ("bad certificate"), which the client names;
 * a Node server (conclave serve) closes the connection at the handshake with no alert, so the
 * client says what it can see of its own certificate: expired (a final `tls-failure`), or issued
 * by a CA other than tls.ca (still `unavailable`, which may pass, with that hint). Both with
 * `lazy` (the first call fails) and without (connect fails).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { EtcdConnectOptions } from '../../backends/etcd/options.js';
import { hasOpenssl, type Issued, type TestCa, TestPki } from '../harness/certs.js';
import { etcdBinary, freePort } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const etcdAvailable = !!etcdBinary();

async function outcome(endpoint: string, tls: EtcdConnectOptions['tls'], lazy: boolean): Promise<string> {
  try {
    const kv = await connect({
      backend: 'etcd',
      endpoints: [`https://${endpoint}`],
      tls,
      dialTimeoutMs: 3000,
      callTimeoutMs: 4000,
      lazy,
    });
    try {
      await kv.put('refused/x', 'x');
      return 'stored';
    } catch (err) {
      const e = err as { code?: string; message?: string };
      return `${e.code}: ${e.message}`;
    } finally {
      await kv.close();
    }
  } catch (err) {
    const e = err as { code?: string; message?: string };
    return `${e.code}: ${e.message}`;
  }
}

describe.skipIf(!hasOpenssl())('served — a refused client certificate named in the client error', () => {
  let pki: TestPki;
  let ca: TestCa;
  const c: Record<string, Issued> = {};
  let served: ServedCluster;
  let etcd: ChildProcess | undefined;
  let etcdEndpoint = '';
  let etcdDir = '';

  beforeAll(async () => {
    pki = new TestPki();
    ca = pki.ca('client-ca');
    const other = pki.ca('other-ca');
    c.server = ca.issue('member');
    c.expired = ca.issue('old', { expired: true });
    c.foreign = other.issue('eve');
    const args = [
      `--cert-file=${c.server.cert}`,
      `--key-file=${c.server.key}`,
      `--trusted-ca-file=${ca.cert}`,
      '--client-cert-auth',
    ];
    if (etcdAvailable) {
      etcdDir = mkdtempSync(join(tmpdir(), 'conclave-tls-refusal-'));
      const client = await freePort();
      const peer = await freePort();
      etcdEndpoint = `127.0.0.1:${client}`;
      etcd = spawn(
        'etcd',
        [
          '--name=tls',
          `--data-dir=${join(etcdDir, 'etcd')}`,
          `--listen-client-urls=https://${etcdEndpoint}`,
          `--advertise-client-urls=https://${etcdEndpoint}`,
          `--listen-peer-urls=http://127.0.0.1:${peer}`,
          `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
          `--initial-cluster=tls=http://127.0.0.1:${peer}`,
          '--logger=zap',
          '--log-level=error',
          ...args,
        ],
        { stdio: 'ignore' },
      );
    }
    served = await startServed({ members: 1, clientScheme: 'https', extraArgs: args });
  }, 120_000);

  afterAll(async () => {
    await served?.close();
    if (etcd && etcd.exitCode === null) {
      const exited = new Promise((r) => etcd!.once('exit', r));
      etcd.kill('SIGTERM');
      await exited;
    }
    if (etcdDir) rmSync(etcdDir, { recursive: true, force: true });
    pki?.close();
  });

  it('tls refusal — conclave serve: no certificate, another CA, expired', async () => {
    const ep = served.endpoints[0]!;
    for (const lazy of [true, false]) {
      expect(await outcome(ep, { ca: ca.certPem }, lazy)).toMatch(
        /^tls-failure: .*the server requires a client certificate and none was sent/,
      );
      expect(
        await outcome(ep, { ca: ca.certPem, cert: c.foreign!.certPem, key: c.foreign!.keyPem }, lazy),
      ).toMatch(
        /^unavailable: .*the server closed the connection at the TLS handshake.*CN=eve\) is issued by CN=other-ca, not by a CA in tls\.ca/,
      );
      expect(
        await outcome(ep, { ca: ca.certPem, cert: c.expired!.certPem, key: c.expired!.keyPem }, lazy),
      ).toMatch(
        /^tls-failure: .*the server closed the connection at the TLS handshake.*CN=old\) expired on /,
      );
    }
  }, 120_000);

  it.skipIf(!etcdAvailable)(
    'tls refusal — etcd: the same, named from its TLS alert',
    async () => {
      for (const lazy of [true, false]) {
        for (const tls of [
          { ca: ca.certPem },
          { ca: ca.certPem, cert: c.foreign!.certPem, key: c.foreign!.keyPem },
          { ca: ca.certPem, cert: c.expired!.certPem, key: c.expired!.keyPem },
        ])
          expect(await outcome(etcdEndpoint, tls, lazy)).toMatch(
            /^tls-failure: .*the TLS handshake was refused: the server refused the client certificate \(TLS alert "bad certificate"\)/,
          );
      }
    },
    120_000,
  );
});
