/**
 * Joining a cluster whose peers speak TLS (`https://` peer URLs, peer client-certificate auth):
 * `etcdctl member add … --peer-urls=https://…` then a new member started with
 * `--initial-cluster-state existing` and its own peer certificate catches up (by snapshot: the
 * leader's log was compacted, so the snapshot itself travels over TLS), is promoted, and serves
 * every key; a member added the same way but holding a certificate of another CA never joins.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasOpenssl, type Issued, TestPki } from '../harness/certs.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const hasEtcdctl =
  spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;

let c: ServedCluster | undefined;
let pki: TestPki | undefined;

/** etcdctl against the given member indexes; returns stdout, or throws with stderr. */
function ctl(at: readonly number[], ...args: string[]): string {
  const r = spawnSync(
    'etcdctl',
    ['--endpoints', at.map((i) => c!.members[i]!.endpoint).join(','), '--command-timeout=10s', ...args],
    { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

async function until<T>(what: string, f: () => T | undefined, timeoutMs = 60_000): Promise<T> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = f();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (performance.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms (${String(last)})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The hex ID of the member `member list` shows with `peer` among its peer URLs. */
function idOf(peer: string): string {
  const out = ctl([0], 'member', 'list', '-w', 'json');
  const j = JSON.parse(out.replace(/"ID":(\d+)/g, '"ID":"$1"')) as {
    members: Array<{ ID: string; peerURLs?: string[] }>;
  };
  const m = j.members.find((x) => x.peerURLs?.includes(peer));
  if (!m) throw new Error(`no member with peer URL ${peer} in ${out}`);
  return BigInt(m.ID).toString(16);
}

const certs: Issued[] = [];

beforeAll(async () => {
  if (!hasEtcdctl || !hasOpenssl()) return;
  pki = new TestPki();
  const ca = pki.ca('peer-ca');
  const rogue = pki.ca('rogue-ca');
  // Members 0..3 hold certificates of the cluster's CA; member 4 (added last) one of another CA.
  for (let i = 0; i < 4; i++) certs.push(ca.issue('peer'));
  certs.push(rogue.issue('peer'));
  c = await startServed({
    members: 3,
    peerScheme: 'https',
    // A small snapshot count: the new member catches up by a snapshot sent over TLS.
    extraArgs: ['--snapshot-count=20', '--peer-client-cert-auth', `--peer-trusted-ca-file=${ca.cert}`],
    memberArgs: (i) => [`--peer-cert-file=${certs[i]!.cert}`, `--peer-key-file=${certs[i]!.key}`],
  });
}, 120_000);

afterAll(async () => {
  await c?.close();
  pki?.close();
});

describe.skipIf(!hasEtcdctl || !hasOpenssl())('membership over https peer URLs', () => {
  it('member add with an https peer URL, start existing with its certificate: it catches up, is promoted and serves', async () => {
    for (let k = 0; k < 60; k++) ctl([0, 1, 2], 'put', `k${k}`, `v${k}`);
    const n = await c!.addMember('n3');
    const peer = `https://127.0.0.1:${c!.members[n]!.peerPort}`;
    const added = ctl([0, 1, 2], 'member', 'add', 'n3', '--learner', `--peer-urls=${peer}`);
    expect(added).toMatch(/Member +[0-9a-f]+ added to cluster/);
    expect(added).toContain(`n3=${peer}`);
    await c!.startExisting(n, [0, 1, 2, n], 90_000).catch((err) => {
      throw new Error(`${String(err)}; its log: ${JSON.stringify(c!.members[n]!.logs.slice(-5))}`);
    });
    // It caught up by snapshot (the log before it was compacted away), received over TLS.
    await c!.waitLog(n, (l) => l.msg === 'snapshot received from peer', 60_000);
    expect(c!.members[n]!.logs.some((l) => l.msg === 'connected to peer')).toBe(true);
    const id = idOf(peer);
    // Promotion is refused until the learner has caught up: retried until accepted.
    await until('promote n3', () =>
      /promoted/.test(ctl([0, 1, 2], 'member', 'promote', id)) ? true : undefined,
    );
    ctl([0, 1, 2], 'put', 'after-join', 'yes');
    // The new member serves linearizable reads of everything, old and new.
    const got = await until('n3 serves the keys', () => {
      const out = ctl([n], 'get', '', '--from-key', '--keys-only', '--consistency=l');
      const keys = out.split('\n').filter((s) => s !== '');
      return keys.length === 61 ? keys : undefined;
    });
    expect(got).toContain('after-join');
    expect(ctl([n], 'get', 'k59', '--print-value-only', '--consistency=l').trim()).toBe('v59');
    const list = ctl([n], 'member', 'list');
    expect(list.match(/, started, /g)?.length).toBe(4);
    expect(list).toContain(peer);
  }, 240_000);

  it('a member added with an https peer URL but holding another CA’s certificate never joins', async () => {
    const n = await c!.addMember('n4');
    const peer = `https://127.0.0.1:${c!.members[n]!.peerPort}`;
    ctl([0, 1, 2], 'member', 'add', 'n4', '--learner', `--peer-urls=${peer}`);
    c!.start(n, ['--initial-cluster-state=existing'], c!.initialClusterOf([0, 1, 2, 3, n]));
    // The cluster refuses its certificate at the handshake (logged), and it gets no data.
    await c!.waitLog(0, (l) => l.msg.startsWith('refused a TLS handshake'), 60_000);
    await new Promise((r) => setTimeout(r, 2000));
    expect(c!.members[n]!.logs.some((l) => l.msg === 'connected to peer')).toBe(false);
    expect(c!.members[n]!.logs.some((l) => l.msg === 'snapshot received from peer')).toBe(false);
    // The cluster serves meanwhile (the learner does not count toward quorum).
    ctl([0, 1, 2, 3], 'put', 'still', 'serving');
    expect(ctl([3], 'get', 'still', '--print-value-only').trim()).toBe('serving');
    await c!.stop(n, 10_000);
  }, 120_000);
});
