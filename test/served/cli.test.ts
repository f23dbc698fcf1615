import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseServeArgs, resolveIdentity, serveFlags, UsageError } from '../../backends/raft/cli.js';
import { readIdentity } from '../../backends/raft/server/ids.js';

const silent = pino({ level: 'silent' });

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'backends/raft/cli.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
}

describe('conclave serve flags', () => {
  it('cli — etcd defaults, flags in --f v, --f=v and -f v forms, and CONCLAVE_* env vars', () => {
    const d = parseServeArgs([], {});
    expect(d).toMatchObject({
      name: 'default',
      dataDir: 'default.conclave',
      heartbeatMs: 100,
      electionTimeoutMs: 1000,
      maxRequestBytes: 1.5 * 1024 * 1024,
      maxTxnOps: 128,
      initialClusterState: 'new',
      initialClusterToken: 'etcd-cluster',
      snapshotCount: 100_000,
    });
    const c = parseServeArgs(['--name', 'a', '--heartbeat-interval=20', '-election-timeout', '300'], {
      CONCLAVE_INITIAL_CLUSTER_TOKEN: 'tok',
      CONCLAVE_NAME: 'ignored',
      CONCLAVE_MAX_TXN_OPS: '7',
    });
    expect(c).toMatchObject({
      name: 'a',
      heartbeatMs: 20,
      electionTimeoutMs: 300,
      initialClusterToken: 'tok',
      maxTxnOps: 7,
    });
    expect(c.dataDir).toBe('a.conclave');
    expect(c.shadowed).toEqual(['name']);
    // Several peer URLs, as etcd takes them (the member listens on each).
    expect(
      parseServeArgs(['--listen-peer-urls', 'http://127.0.0.1:1,http://127.0.0.2:2'], {}).listenPeerUrls,
    ).toEqual(['http://127.0.0.1:1', 'http://127.0.0.2:2']);
  });

  it('cli — unknown, repeated, valueless and contradictory flags are usage errors that say which', () => {
    const bad: Array<[string[], RegExp]> = [
      [['--nmae', 'x'], /unknown flag --nmae/],
      [['--name', 'a', '--name', 'b'], /--name: given twice/],
      [['--name'], /--name: needs a value/],
      [['stray'], /unexpected argument "stray"/],
      [['--heartbeat-interval', '100', '--election-timeout', '300'], /less than 5 × --heartbeat-interval/],
      [['--initial-cluster-state', 'maybe'], /'new' or 'existing'/],
      [
        ['--listen-peer-urls', 'http://127.0.0.1:1,https://127.0.0.1:2', '--peer-auto-tls'],
        /peer URLs mix https:\/\/ \(https:\/\/127.0.0.1:2\) and http:\/\//,
      ],
      [['--listen-client-urls', 'ftp://127.0.0.1:1'], /only http:\/\/ and https:\/\//],
      // TLS contradictions (server/tls.ts checkTlsFlags), as etcd refuses them or they could only fail later.
      [['--listen-client-urls', 'https://127.0.0.1:1'], /is https:\/\/ but no certificate is given/],
      [
        ['--listen-client-urls', 'https://127.0.0.1:1', '--cert-file', 'c.pem'],
        /--cert-file and --key-file go together/,
      ],
      [['--cert-file', 'c.pem', '--key-file', 'k.pem'], /every client URL is http:\/\//],
      [
        ['--listen-client-urls', 'https://127.0.0.1:1', '--auto-tls', '--client-cert-auth'],
        /--client-cert-auth needs --trusted-ca-file/,
      ],
      [
        ['--listen-client-urls', 'https://127.0.0.1:1', '--auto-tls', '--client-crl-file', 'x.crl'],
        /--client-crl-file is checked only with --client-cert-auth/,
      ],
      [
        ['--listen-peer-urls', 'https://127.0.0.1:2'],
        /peer URL https:\/\/127.0.0.1:2 is https:\/\/ but no certificate/,
      ],
      [
        ['--listen-peer-urls', 'https://127.0.0.1:2', '--peer-auto-tls'],
        /peer URLs mix https:\/\/ \(https:\/\/127.0.0.1:2\) and http:\/\//,
      ],
      [
        [
          '--listen-peer-urls=https://127.0.0.1:2',
          '--initial-advertise-peer-urls=https://127.0.0.1:2',
          '--peer-auto-tls',
          '--peer-cert-allowed-cn=x',
        ],
        /--peer-cert-allowed-cn needs --peer-client-cert-auth/,
      ],
      [
        [
          '--listen-peer-urls=https://127.0.0.1:2',
          '--initial-advertise-peer-urls=https://127.0.0.1:2',
          '--peer-auto-tls',
          '--peer-client-cert-auth=true',
          '--peer-trusted-ca-file=ca.pem',
        ],
        /cannot be combined with --peer-client-cert-auth/,
      ],
      [['--client-cert-auth=maybe'], /--client-cert-auth: "maybe" is not true or false/],
      [['--max-txn-ops', '-1'], /--max-txn-ops/],
      [['--log-level', 'loud'], /--log-level/],
    ];
    for (const [args, re] of bad) expect(() => parseServeArgs(args, {}), args.join(' ')).toThrow(re);
    expect(() => parseServeArgs(['--nmae', 'x'], {})).toThrow(UsageError);
    // Boolean flags as Go's flag package takes them: alone, or =true/=false; env vars too.
    const t = parseServeArgs(
      [
        '--listen-client-urls=https://127.0.0.1:1',
        '--auto-tls',
        '--client-cert-auth',
        '--trusted-ca-file=ca.pem',
      ],
      { CONCLAVE_PEER_CLIENT_CERT_AUTH: 'false' },
    );
    expect(t.clientTls).toMatchObject({ autoTls: true, clientCertAuth: true, trustedCaFile: 'ca.pem' });
    expect(t.peerTls.clientCertAuth).toBe(false);
  });

  it('cli — a new data dir takes its identity from the flags, which must agree; a recorded one ignores them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conclave-cli-'));
    try {
      const base = [
        '--name=a',
        `--data-dir=${join(dir, 'a')}`,
        '--initial-cluster=a=http://127.0.0.1:7001,b=http://127.0.0.1:7002,c=http://127.0.0.1:7003',
      ];
      await expect(
        resolveIdentity(
          parseServeArgs([...base, '--initial-advertise-peer-urls=http://127.0.0.1:7009'], {}),
          silent,
        ),
      ).rejects.toThrow(/does not match --initial-cluster's URLs for "a"/);
      // Joining a running cluster needs another member to ask for the membership.
      await expect(
        resolveIdentity(
          parseServeArgs(
            [
              '--name=a',
              `--data-dir=${join(dir, 'a')}`,
              '--initial-cluster=a=http://127.0.0.1:7001',
              '--initial-advertise-peer-urls=http://127.0.0.1:7001',
              '--initial-cluster-state=existing',
            ],
            {},
          ),
          silent,
        ),
      ).rejects.toThrow(/lists no other member to join through/);
      const good = [...base, '--initial-advertise-peer-urls=http://127.0.0.1:7001'];
      const id = await resolveIdentity(parseServeArgs(good, {}), silent);
      expect(await readIdentity(join(dir, 'a'))).toEqual(id);
      // A restart with other cluster flags keeps the recorded identity (etcd ignores them too).
      const again = await resolveIdentity(
        parseServeArgs(
          [...good.slice(0, 2), '--initial-cluster=a=http://127.0.0.1:9', '--initial-cluster-token=zz'],
          {},
        ),
        silent,
      );
      expect(again.memberId).toBe(id.memberId);
      expect(again.clusterId).toBe(id.clusterId);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('cli — a bad flag exits 2 with one line; --help lists every flag and exits 0', () => {
    const r = run(['serve', '--election-timeout', 'soon']);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--election-timeout: "soon" is not an integer/);
    const h = run(['serve', '--help']);
    expect(h.status).toBe(0);
    for (const f of serveFlags) {
      expect(h.stdout).toContain(`--${f.name} `);
      expect(h.stdout).toContain(`CONCLAVE_${f.name.toUpperCase().replace(/-/g, '_')}`);
    }
    const top = run(['--help']);
    expect(top.status).toBe(0);
    for (const f of serveFlags) expect(top.stdout).toContain(`--${f.name}`);
    expect(run(['launch']).status).toBe(2);
  }, 120_000);
});
