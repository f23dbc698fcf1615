import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  bootstrapIdentity,
  clusterIdOf,
  defaultClusterToken,
  memberIdOf,
  parseInitialCluster,
  readIdentity,
  writeIdentity,
} from '../../backends/raft/server/ids.js';
import { ConclaveError } from '../../src/errors.js';
import { etcdBinary, freePort, startEtcd } from '../harness/etcd.js';

const hasEtcd = !!etcdBinary();

/** `etcdctl member list -w json`, with the uint64 IDs read exactly (JSON.parse would round them). */
function memberList(endpoint: string): {
  clusterId: bigint;
  members: Array<{ id: bigint; peerUrls: string[] }>;
} {
  const out = execFileSync('etcdctl', ['--endpoints', endpoint, 'member', 'list', '-w', 'json'], {
    env: { ...process.env, ETCDCTL_API: '3' },
    encoding: 'utf8',
    timeout: 10_000,
  });
  const clusterId = BigInt(/"cluster_id":(\d+)/.exec(out)![1]!);
  const members = [...out.matchAll(/\{"ID":(\d+),[^}]*?"peerURLs":\[([^\]]*)\]/g)].map((m) => ({
    id: BigInt(m[1]!),
    peerUrls: JSON.parse(`[${m[2]!}]`) as string[],
  }));
  return { clusterId, members };
}

async function healthy(endpoint: string): Promise<void> {
  const until = Date.now() + 15_000;
  while (Date.now() < until) {
    try {
      const r = await fetch(`http://${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      if (((await r.json()) as { health?: string }).health === 'true') return;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`etcd at ${endpoint} not healthy`);
}

describe('member and cluster IDs', () => {
  it.skipIf(!hasEtcd)(
    'ids — a one-member cluster with its own token gets the IDs etcd gives it',
    async () => {
      const [client, peer] = [await freePort(), await freePort()];
      const dir = mkdtempSync(join(tmpdir(), 'conclave-ids-'));
      const peerUrl = `http://127.0.0.1:${peer}`;
      const token = 'conclave-id-test-token';
      let child: ChildProcess | undefined;
      try {
        child = spawn(
          'etcd',
          [
            '--name=solo',
            `--data-dir=${join(dir, 'solo')}`,
            `--listen-client-urls=http://127.0.0.1:${client}`,
            `--advertise-client-urls=http://127.0.0.1:${client}`,
            `--listen-peer-urls=${peerUrl}`,
            `--initial-advertise-peer-urls=${peerUrl}`,
            `--initial-cluster=solo=${peerUrl}`,
            `--initial-cluster-token=${token}`,
            '--log-level=error',
          ],
          { stdio: 'ignore' },
        );
        await healthy(`127.0.0.1:${client}`);
        const got = memberList(`127.0.0.1:${client}`);
        const id = bootstrapIdentity({
          name: 'solo',
          initialCluster: parseInitialCluster(`solo=${peerUrl}`),
          token,
          clientUrls: [],
        });
        expect(got.members.map((m) => m.id)).toEqual([id.memberId]);
        expect(got.clusterId).toBe(id.clusterId);
        expect(id.memberId).toBe(memberIdOf([peerUrl], token));
      } finally {
        child?.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it.skipIf(!hasEtcd)(
    'ids — every member ID and the cluster ID of a 3-member etcd cluster match ours',
    async () => {
      const c = await startEtcd({ members: 3 });
      try {
        const got = memberList(c!.endpoints[0]!);
        expect(got.members).toHaveLength(3);
        for (const m of got.members) expect(memberIdOf(m.peerUrls, defaultClusterToken)).toBe(m.id);
        expect(clusterIdOf(got.members.map((m) => m.id))).toBe(got.clusterId);
        // The same through --initial-cluster, as the CLI derives it.
        const spec = got.members.map((m, i) => `n${i}=${m.peerUrls[0]}`).join(',');
        const id = bootstrapIdentity({
          name: 'n1',
          initialCluster: parseInitialCluster(spec),
          token: defaultClusterToken,
          clientUrls: [],
        });
        expect(id.clusterId).toBe(got.clusterId);
        expect(id.memberId).toBe(got.members[1]!.id);
        // Core node ids: 1..3 in ascending member-ID order.
        expect(id.members.map((m) => m.nodeId)).toEqual([1, 2, 3]);
        expect([...id.members.map((m) => m.id)]).toEqual(
          [...got.members.map((m) => m.id)].sort((a, b) => (a < b ? -1 : 1)),
        );
      } finally {
        await c?.stop();
      }
    },
  );

  it('ids — a member added at run time hashes its time too (another ID for the same URLs)', () => {
    const a = memberIdOf(['http://h:1'], 't');
    expect(memberIdOf(['http://h:1'], 't', 1_700_000_000)).not.toBe(a);
    // Peer URLs are sorted before hashing: their order does not matter.
    expect(memberIdOf(['http://b:2', 'http://a:1'], 't')).toBe(memberIdOf(['http://a:1', 'http://b:2'], 't'));
  });

  it('ids — bad --initial-cluster values fail with the offending part', () => {
    expect(() => parseInitialCluster('a')).toThrow(/"a" is not name=peer-url/);
    expect(() => parseInitialCluster('a=ftp://x:1')).toThrow(/only http:\/\/ and https:\/\//);
    expect(() => parseInitialCluster('a=http://x')).toThrow(/a port/);
    expect(() =>
      bootstrapIdentity({
        name: 'z',
        initialCluster: parseInitialCluster('a=http://x:1'),
        token: 't',
        clientUrls: [],
      }),
    ).toThrow(/no member named "z"/);
    expect(() => parseInitialCluster('a=http://x:1,b=http://x:1')).not.toThrow();
    expect(() =>
      bootstrapIdentity({
        name: 'a',
        initialCluster: parseInitialCluster('a=http://x:1,b=http://x:1'),
        token: 't',
        clientUrls: [],
      }),
    ).toThrow(/same peer URLs/);
  });

  it('ids — identity survives a write and read of the data dir; a damaged file is refused as corrupt', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conclave-ident-'));
    try {
      expect(await readIdentity(dir)).toBeUndefined();
      const id = bootstrapIdentity({
        name: 'b',
        initialCluster: parseInitialCluster('a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3'),
        token: 'tok',
        clientUrls: ['http://127.0.0.1:9'],
      });
      await writeIdentity(dir, id);
      expect(await readIdentity(dir)).toEqual(id);
      writeFileSync(join(dir, 'member.json'), '{"format":1,"clusterId":"zz"');
      const err = await readIdentity(dir).catch((e: unknown) => e);
      expect(ConclaveError.is(err) && err.code).toBe('corrupt');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
