/**
 * Alarms on a 3-member `conclave serve` cluster, as etcd keeps them: raised and cleared through
 * Raft, so every member lists every member's alarms with their member ID, and one member's NOSPACE
 * makes every member refuse the writes that grow the store; a disarm on any member clears it
 * everywhere. Checked with etcdctl 3.4 (`alarm list`, `alarm disarm`) and the JSON gateway
 * (`maintenance/alarm` ACTIVATE/DEACTIVATE), and across a restart (the alarms are replicated state).
 */
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { type ServedCluster, startServed } from '../harness/served.js';

const hasEtcdctl =
  spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;

let c: ServedCluster | undefined;
afterAll(async () => {
  await c?.close();
});

function ctl(at: number, ...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(
    'etcdctl',
    ['--endpoints', c!.members[at]!.endpoint, '--command-timeout=10s', ...args],
    { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
  );
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

function must(at: number, ...args: string[]): string {
  const r = ctl(at, ...args);
  if (!r.ok) throw new Error(`etcdctl ${args.join(' ')} on member ${at}: ${r.out}`);
  return r.out;
}

/** Polls `check` (bounded): replication reaches every member within a few Raft rounds. */
async function eventually(check: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const memberIdOf = (at: number): string =>
  String(/"member_id":(\d+)/.exec(must(at, 'endpoint', 'status', '-w', 'json'))![1]);

/** `curl` (a fresh connection each time) to member `at`: the status and the parsed JSON body. */
function curl(at: number, path: string, body?: object): { status: number; json: Record<string, unknown> } {
  const args = ['-sS', '-m', '20', '-w', '\n%{http_code}', `http://${c!.members[at]!.endpoint}${path}`];
  if (body) args.push('-X', 'POST', '-d', JSON.stringify(body));
  const r = spawnSync('curl', args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`curl ${path} on member ${at}: ${r.stderr}; ${c!.report(at)}`);
  const cut = r.stdout.lastIndexOf('\n');
  return {
    status: Number(r.stdout.slice(cut + 1)),
    json: JSON.parse(r.stdout.slice(0, cut)) as Record<string, unknown>,
  };
}

/**
 * A maintenance/alarm request; 503 (Unavailable, e.g. a member just restarted that has not yet
 * heard from the leader) is retried as etcd's clients retry it, a few times.
 */
async function gateway(at: number, body: object): Promise<Record<string, unknown>> {
  let r = curl(at, '/v3/maintenance/alarm', body);
  for (let i = 0; i < 10 && r.status === 503; i++) {
    await new Promise((res) => setTimeout(res, 500));
    r = curl(at, '/v3/maintenance/alarm', body);
  }
  expect(JSON.stringify({ status: r.status, at, body: r.json })).toMatch(/^\{"status":200/);
  return r.json;
}

describe.skipIf(!hasEtcdctl)('alarms are the cluster’s, through Raft', () => {
  it("one member's NOSPACE is listed by every member and refuses puts on every member; a disarm on another member clears it everywhere", async () => {
    // Only member 2 has a small quota: only its own quota check can raise NOSPACE.
    c = await startServed({
      members: 3,
      memberArgs: (i) => (i === 2 ? ['--quota-backend-bytes=65536'] : []),
    });
    const id2 = memberIdOf(2);
    const big = 'x'.repeat(8192);
    let refused = '';
    for (let k = 0; k < 40 && refused === ''; k++) {
      const r = ctl(2, 'put', `big${k % 4}`, big);
      if (!r.ok) refused = r.out;
    }
    expect(refused).toMatch(/etcdserver: mvcc: database space exceeded/);
    // Every member lists member 2's alarm, with member 2's ID.
    for (const at of [0, 1, 2])
      await eventually(
        () => ctl(at, 'alarm', 'list').out.includes(`memberID:${id2} alarm:NOSPACE`),
        `member ${at} lists member 2's NOSPACE`,
      );
    // Members 0 and 1 are under their own quota, yet refuse puts (etcd's capped applier), a txn
    // with a put and a lease grant too; reads and deletes still work.
    for (const at of [0, 1]) {
      const put = ctl(at, 'put', 'small', 'v');
      expect(put.ok).toBe(false);
      expect(put.out).toMatch(/database space exceeded/);
      const grant = ctl(at, 'lease', 'grant', '60');
      expect(grant.ok).toBe(false);
      expect(grant.out).toMatch(/database space exceeded/);
      expect(must(at, 'get', 'big0', '--print-value-only').trim()).toBe(big);
    }
    expect(must(0, 'del', 'big3').trim()).toMatch(/^[01]$/);
    // /health is false on every member while an alarm is raised (etcd 3.4).
    for (const at of [0, 1, 2]) {
      const h = curl(at, '/health');
      expect([h.status, h.json]).toEqual([503, { health: 'false' }]);
    }

    // Free space where the quota is exceeded (member 2), then disarm through member 0.
    const rev = JSON.parse(must(2, 'get', 'big0', '-w', 'json')).header.revision as number;
    must(2, 'compaction', String(rev));
    expect(must(2, 'defrag')).toMatch(/Finished defragmenting etcd member/);
    expect(must(0, 'alarm', 'disarm')).toContain(`memberID:${id2} alarm:NOSPACE`);
    for (const at of [0, 1, 2])
      await eventually(() => ctl(at, 'alarm', 'list').out.trim() === '', `member ${at} lists no alarm`);
    for (const at of [0, 1, 2]) must(at, 'put', `after-disarm-${at}`, 'v');
    expect(must(1, 'get', 'after-disarm-2', '--print-value-only').trim()).toBe('v');
  }, 240_000);

  it('ACTIVATE and DEACTIVATE over the JSON gateway on different members; the alarm survives a restart', async () => {
    const id1 = memberIdOf(1);
    // ACTIVATE on member 0 for member 1: answered with the alarm, as etcd answers.
    const on = await gateway(0, { action: 'ACTIVATE', memberID: id1, alarm: 'NOSPACE' });
    expect(on.alarms).toEqual([{ memberID: id1, alarm: 'NOSPACE' }]);
    await eventually(() => !ctl(2, 'put', 'k', 'v').ok, 'member 2 refuses puts');
    // Replicated state: a restarted member still has it.
    expect(await c!.stop(2)).toBe(0);
    await c!.restart(2);
    await eventually(
      () => ctl(2, 'alarm', 'list').out.includes(`memberID:${id1} alarm:NOSPACE`),
      'member 2 lists the alarm after its restart',
      30_000,
    );
    expect(ctl(2, 'put', 'k', 'v').out).toMatch(/database space exceeded/);
    // GET of one type through the gateway lists it; DEACTIVATE on member 2 clears it.
    const list = await gateway(1, { action: 'GET', alarm: 'NOSPACE' });
    expect(list.alarms).toEqual([{ memberID: id1, alarm: 'NOSPACE' }]);
    const off = await gateway(2, { action: 'DEACTIVATE', memberID: id1, alarm: 'NOSPACE' });
    expect(off.alarms).toEqual([{ memberID: id1, alarm: 'NOSPACE' }]);
    // A second DEACTIVATE finds nothing: an empty answer, as etcd's.
    expect(
      (await gateway(2, { action: 'DEACTIVATE', memberID: id1, alarm: 'NOSPACE' })).alarms,
    ).toBeUndefined();
    await eventually(() => ctl(0, 'put', 'k', 'v').ok, 'member 0 accepts puts again');
  }, 120_000);
});
