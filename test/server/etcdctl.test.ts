/**
 * etcdctl 3.4 against the client API served over an embedded 3-member cluster: each command's
 * output is checked as it prints it against etcd. etcdctl runs as a child process (spawned
 * asynchronously: the server lives in this process).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { Mutex } from '../../recipes/mutex.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import { waitFor } from '../harness/wait.js';
import { memberIdOf, type ServedCluster, serveCluster } from './harness.js';

const haveEtcdctl = spawnSync('etcdctl', ['version'], { encoding: 'utf8' }).status === 0;

interface Run {
  code: number | null;
  out: string;
  err: string;
}

let cluster: EmbeddedCluster;
let served: ServedCluster;
let kv: KV;

function ctl(
  args: string[],
  o: { input?: string; endpoints?: string[]; timeoutMs?: number } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(
      'etcdctl',
      ['--endpoints', (o.endpoints ?? [served.endpoints[0]!]).join(','), ...args],
      {
        env: { ...process.env, ETCDCTL_API: '3' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 15_000);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out, err });
    });
    child.stdin.end(o.input ?? '');
  });
}

/** A long-running etcdctl (watch, lock, elect): its output so far, and a way to stop it. */
function ctlBackground(args: string[]): {
  child: ChildProcess;
  out: () => string;
  stop: () => Promise<void>;
} {
  let out = '';
  const child = spawn('etcdctl', ['--endpoints', served.endpoints[0]!, ...args], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return {
    child,
    out: () => out,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

const ok = async (args: string[], o?: Parameters<typeof ctl>[1]): Promise<string> => {
  const r = await ctl(args, o);
  expect(r.err.replace(/\{"level":"warn".*\n/g, ''), `etcdctl ${args.join(' ')}`).toBe('');
  expect(r.code, `etcdctl ${args.join(' ')}: ${r.err}`).toBe(0);
  return r.out;
};

describe.skipIf(!haveEtcdctl)('etcdctl 3.4 against the served client API', () => {
  beforeAll(async () => {
    cluster = await startCluster({ nodes: 3 });
    served = await serveCluster(cluster);
    kv = await connect({ backend: 'etcd', endpoints: served.endpoints });
  });
  afterAll(async () => {
    await kv?.close();
    await served?.close();
    await cluster?.close();
  });

  it('put and get: prefix, rev, sort, limit, keys-only, serializable, json', async () => {
    expect(await ok(['put', 'ctl/a', 'one'])).toBe('OK\n');
    const r1 = (await kv.get('ctl/a'))!.modRevision;
    expect(await ok(['put', 'ctl/a', 'two'])).toBe('OK\n');
    expect(await ok(['put', 'ctl/b', 'three'])).toBe('OK\n');
    expect(await ok(['get', 'ctl/a'])).toBe('ctl/a\ntwo\n');
    expect(await ok(['get', 'ctl/', '--prefix'])).toBe('ctl/a\ntwo\nctl/b\nthree\n');
    expect(await ok(['get', 'ctl/a', `--rev=${r1}`])).toBe('ctl/a\none\n');
    expect(await ok(['get', 'ctl/', '--prefix', '--sort-by=MODIFY', '--order=DESCEND'])).toBe(
      'ctl/b\nthree\nctl/a\ntwo\n',
    );
    expect(await ok(['get', 'ctl/', '--prefix', '--limit=1'])).toBe('ctl/a\ntwo\n');
    expect(await ok(['get', 'ctl/', '--prefix', '--keys-only'])).toBe('ctl/a\n\nctl/b\n\n');
    // etcdctl 3.4 has no --count-only (3.5 added it); a limited read reports the full count.
    const counted = JSON.parse(await ok(['get', 'ctl/', '--prefix', '--limit=1', '-w', 'json']));
    expect(counted.count).toBe(2);
    expect(counted.more).toBe(true);
    expect(counted.kvs).toHaveLength(1);
    expect(await ok(['get', 'ctl/b', '--consistency=s'])).toBe('ctl/b\nthree\n');
    // Through another member too: any member serves any request.
    expect(await ok(['get', 'ctl/b'], { endpoints: [served.endpoints[2]!] })).toBe('ctl/b\nthree\n');
    // json: header and kv fields as etcd prints them.
    const j = JSON.parse(await ok(['get', 'ctl/a', '-w', 'json']));
    expect(j.kvs[0].version).toBe(2);
    expect(Buffer.from(j.kvs[0].value, 'base64').toString()).toBe('two');
    expect(j.header.revision).toBe((await kv.get('ctl/b'))!.modRevision);
  });

  it('del: a key, a prefix, with --prev-kv', async () => {
    await ok(['put', 'del/a', '1']);
    await ok(['put', 'del/b', '2']);
    await ok(['put', 'del/c', '3']);
    expect(await ok(['del', 'del/a'])).toBe('1\n');
    expect(await ok(['del', 'del/a'])).toBe('0\n');
    expect(await ok(['del', 'del/', '--prefix', '--prev-kv'])).toBe('2\ndel/b\n2\ndel/c\n3\n');
    expect((await kv.range('del/', { prefix: true })).count).toBe(0);
  });

  it('txn (interactive): compares, success and failure branches', async () => {
    await ok(['put', 'txn/k', 'v1']);
    const input = 'value("txn/k") = "v1"\n\nput txn/k v2\nget txn/k\n\nput txn/other x\n\n';
    expect(await ok(['txn'], { input })).toBe('SUCCESS\n\nOK\n\ntxn/k\nv2\n');
    expect(await ok(['txn'], { input })).toBe('FAILURE\n\nOK\n');
    expect(await ok(['get', 'txn/other'])).toBe('txn/other\nx\n');
  });

  it('watch: --rev replays history with --prev-kv, then follows new events', async () => {
    await ok(['put', 'w/k', 'a']);
    const rev = (await kv.get('w/k'))!.modRevision;
    await ok(['put', 'w/k', 'b']);
    const w = ctlBackground(['watch', 'w/k', `--rev=${rev}`, '--prev-kv']);
    try {
      await waitFor(() => w.out().split('\n').length >= 9, 10_000, 'the replayed events');
      expect(w.out()).toBe('PUT\nw/k\na\nPUT\nw/k\na\nw/k\nb\n');
      await kv.delete('w/k');
      await waitFor(() => w.out().includes('DELETE'), 10_000, 'the delete');
      expect(w.out().slice('PUT\nw/k\na\nPUT\nw/k\na\nw/k\nb\n'.length)).toBe('DELETE\nw/k\nb\nw/k\n\n');
    } finally {
      await w.stop();
    }
  });

  it('lease: grant, keep-alive, timetolive with keys, list, revoke', async () => {
    const granted = await ok(['lease', 'grant', '60']);
    const m = /^lease ([0-9a-f]+) granted with TTL\(60s\)\n$/.exec(granted);
    expect(m, granted).not.toBeNull();
    const id = m![1]!;
    await ok(['put', 'lease/k', 'v', `--lease=${id}`]);
    expect(await ok(['lease', 'keep-alive', '--once', id])).toBe(`lease ${id} keepalived with TTL(60)\n`);
    expect(await ok(['lease', 'timetolive', id, '--keys'])).toMatch(
      new RegExp(
        `^lease ${id} granted with TTL\\(60s\\), remaining\\((59|60)s\\), attached keys\\(\\[lease/k\\]\\)\\n$`,
      ),
    );
    expect(await ok(['lease', 'list'])).toMatch(new RegExp(`^found \\d+ leases\\n(.*\\n)*${id}\\n`));
    expect(await ok(['lease', 'revoke', id])).toBe(`lease ${id} revoked\n`);
    expect(await ok(['get', 'lease/k'])).toBe('');
    expect(await ok(['lease', 'timetolive', id])).toBe(`lease ${id} already expired\n`);
    // A lease that does not exist: etcd's error text.
    const r = await ctl(['lease', 'revoke', id]);
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('etcdserver: requested lease not found');
  });

  it('compaction: reads below it fail with etcd error text', async () => {
    await ok(['put', 'cmp/k', '1']);
    const old = (await kv.get('cmp/k'))!.modRevision;
    await ok(['put', 'cmp/k', '2']);
    const rev = (await kv.get('cmp/k'))!.modRevision;
    expect(await ok(['compaction', String(rev)])).toBe(`compacted revision ${rev}\n`);
    const r = await ctl(['get', 'cmp/k', `--rev=${old}`]);
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('etcdserver: mvcc: required revision has been compacted');
    const again = await ctl(['compaction', String(rev)]);
    expect(again.err).toContain('etcdserver: mvcc: required revision has been compacted');
    const future = await ctl(['get', 'cmp/k', `--rev=${rev + 1000}`]);
    expect(future.err).toContain('etcdserver: mvcc: required revision is a future revision');
  });

  it('lock runs a command holding the lock, and excludes a Conclave Mutex on the same name', async () => {
    expect(await ok(['lock', 'ctl-lock-1', 'echo', 'held'])).toBe('held\n');
    const session = await Session.create(kv, { ttlSeconds: 5 });
    const held = ctlBackground(['lock', 'ctl-lock-2']);
    try {
      await waitFor(() => held.out().includes('ctl-lock-2/'), 10_000, 'etcdctl to hold the lock');
      const m = new Mutex(session, 'ctl-lock-2');
      const attempt = await m.tryLock();
      expect(attempt.isErr()).toBe(true);
      await held.stop();
      const mine = await m.lock({ signal: AbortSignal.timeout(10_000) });
      await mine.release();
    } finally {
      await held.stop();
      await session.close();
    }
  });

  it('elect: campaigns, and observe sees the leader', async () => {
    const e = ctlBackground(['elect', 'ctl-elect', 'p1']);
    try {
      await waitFor(() => e.out().includes('p1'), 10_000, 'etcdctl to be elected');
      const o = await ctl(['elect', 'ctl-elect', '--listen'], { timeoutMs: 3000 });
      expect(o.out).toMatch(/^ctl-elect\/[0-9a-f]+\np1\n/);
    } finally {
      await e.stop();
    }
  });

  it('endpoint status, endpoint health and member list', async () => {
    const all = served.endpoints;
    const st = JSON.parse(await ok(['endpoint', 'status', '-w', 'json'], { endpoints: all })) as Array<{
      Endpoint: string;
      Status: { header: { member_id: number; cluster_id: number }; leader: number; version: string };
    }>;
    expect(st.map((s) => s.Endpoint)).toEqual(all);
    const leader = memberIdOf(cluster.leader()!.id);
    // JSON numbers above 2^53 lose precision in JSON.parse: compare the table output for exact IDs.
    const table = await ok(['endpoint', 'status', '-w', 'table'], { endpoints: all });
    for (const [i, ep] of all.entries()) {
      const row = table.split('\n').find((l) => l.includes(ep))!;
      expect(row).toContain(memberIdOf(i + 1).toString(16));
      expect(row).toContain(memberIdOf(i + 1) === leader ? 'true' : 'false');
      expect(row).toContain('3.4.23');
    }
    const health = await ctl(['endpoint', 'health'], { endpoints: all });
    expect(health.code).toBe(0);
    for (const ep of all)
      expect(health.out + health.err).toMatch(
        new RegExp(`${ep} is healthy: successfully committed proposal`),
      );
    const members = await ok(['member', 'list']);
    const lines = members.trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const [i, line] of lines.entries()) {
      expect(line).toBe(
        `${memberIdOf(i + 1).toString(16)}, started, m${i + 1}, http://127.0.0.1:${23801 + i}, http://${all[i]}, false`,
      );
    }
  });

  it('alarm list: no alarms', async () => {
    expect(await ok(['alarm', 'list'])).toBe('');
  });
});
