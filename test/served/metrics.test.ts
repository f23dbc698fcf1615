/**
 * GET /metrics of `conclave serve` (backends/raft/server/metrics.ts), on the client URL and on
 * `--listen-metrics-urls`: etcd's metric names, counters that move with what happens (a leader
 * change, gRPC calls by method and code, peer bytes), Node's process metrics; and GET /health
 * turning 503 when the member has no leader.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { RawClient, waitFor } from '../server/raw.js';

/** Polls an async condition (bounded). */
async function waitFor2(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

let served: ServedCluster;
const metricsPorts: number[] = [];

beforeAll(async () => {
  for (let i = 0; i < 3; i++) metricsPorts.push(await freePort());
  served = await startServed({
    members: 3,
    memberArgs: (i) => [`--listen-metrics-urls=http://127.0.0.1:${metricsPorts[i]}`],
  });
}, 120_000);
afterAll(async () => {
  await served?.close();
});

/** Scrapes `url` and returns each sample line's value by its full name with labels. */
async function scrape(url: string): Promise<Map<string, number>> {
  const r = await fetch(url);
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain/);
  const samples = new Map<string, number>();
  for (const line of (await r.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return samples;
}

const metricsUrl = (i: number) => `http://127.0.0.1:${metricsPorts[i]}/metrics`;
const clientMetricsUrl = (i: number) => `http://${served.endpoints[i]}/metrics`;

/** docs/operations.md's checked monitoring block. */
function monitoringBlock(): string {
  const page = readFileSync(resolve(import.meta.dirname, '../../docs/operations.md'), 'utf8');
  const marker = '<!-- checked: test/served/metrics.test.ts runs this block -->';
  const at = page.indexOf(marker);
  if (at < 0) throw new Error('docs/operations.md lost its checked monitoring block');
  const m = /```sh\n([\s\S]*?)```/.exec(page.slice(at));
  if (!m) throw new Error('no ```sh block after the marker');
  return m[1]!;
}

describe('metrics of conclave serve', () => {
  it("docs/operations.md's monitoring commands run as pasted against a client URL and a metrics URL", async () => {
    const leader = await served.waitLeader();
    for (const endpoint of [
      `http://${served.endpoints[leader]}`,
      `http://127.0.0.1:${metricsPorts[leader]}`,
    ]) {
      const out = execFileSync('bash', ['-euo', 'pipefail', '-c', monitoringBlock()], {
        encoding: 'utf8',
        env: { ...process.env, ENDPOINT: endpoint },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      expect(out).toContain('{"health":"true"}');
      expect(out).toMatch(/^etcd_server_has_leader 1$/m);
      expect(out).toMatch(/^etcd_server_is_leader 1$/m);
      expect(out).toMatch(/^etcd_server_leader_changes_seen_total [1-9]/m);
    }
  });

  it("serves etcd's metric names and Node's process metrics on the client URL and the metrics URL", async () => {
    const leader = await served.waitLeader();
    for (const url of [clientMetricsUrl(leader), metricsUrl(leader)]) {
      const m = await scrape(url);
      for (const name of [
        'etcd_server_has_leader',
        'etcd_server_is_leader',
        'etcd_server_leader_changes_seen_total',
        'etcd_server_proposals_committed_total',
        'etcd_server_proposals_applied_total',
        'etcd_server_proposals_pending',
        'etcd_server_proposals_failed_total',
        'etcd_mvcc_db_total_size_in_bytes',
        'etcd_debugging_mvcc_keys_total',
        'etcd_disk_wal_fsync_duration_seconds_count',
        'etcd_disk_backend_commit_duration_seconds_count',
        'process_cpu_user_seconds_total',
        'process_resident_memory_bytes',
        'nodejs_eventloop_lag_seconds',
      ])
        expect(m.has(name), name).toBe(true);
      expect(m.get('etcd_server_has_leader')).toBe(1);
      expect(m.get('etcd_server_is_leader')).toBe(1);
      expect(m.get('etcd_disk_wal_fsync_duration_seconds_count')).toBeGreaterThan(0);
      expect([...m.keys()].some((k) => k.startsWith('etcd_network_peer_sent_bytes_total{To="'))).toBe(true);
    }
    const follower = (leader + 1) % 3;
    const f = await scrape(metricsUrl(follower));
    expect(f.get('etcd_server_is_leader')).toBe(0);
    expect(f.get('etcd_server_has_leader')).toBe(1);
    // The metrics URL serves /metrics and /health only.
    expect(
      (await fetch(`http://127.0.0.1:${metricsPorts[follower]}/v3/kv/range`, { method: 'POST' })).status,
    ).toBe(405);
    const h = await fetch(`http://127.0.0.1:${metricsPorts[follower]}/health`);
    expect([h.status, await h.json()]).toEqual([200, { health: 'true' }]);
  });

  it('gRPC calls are counted by method and code, and writes move the commit and key counters', async () => {
    const i = 0;
    const before = await scrape(clientMetricsUrl(i));
    const c = new RawClient(served.endpoints[i]!);
    try {
      for (let n = 0; n < 5; n++)
        await c.unary(
          '/etcdserverpb.KV/Put',
          { key: Buffer.from(`metrics-k${n}`), value: Buffer.from('v') },
          { req: 'PutRequest', res: 'PutResponse' },
        );
      // One delete range of the five keys: etcd counts one delete (per DeleteRange, not per key).
      const mid = await scrape(clientMetricsUrl(i));
      await c.unary(
        '/etcdserverpb.KV/DeleteRange',
        { key: Buffer.from('metrics-k'), rangeEnd: Buffer.from('metrics-l') },
        { req: 'DeleteRangeRequest', res: 'DeleteRangeResponse' },
      );
      const del = await scrape(clientMetricsUrl(i));
      expect(mid.get('etcd_mvcc_put_total')! - (before.get('etcd_mvcc_put_total') ?? 0)).toBe(5);
      expect(del.get('etcd_mvcc_delete_total')! - (mid.get('etcd_mvcc_delete_total') ?? 0)).toBe(1);
      expect(del.get('etcd_debugging_mvcc_delete_total')).toBe(del.get('etcd_mvcc_delete_total'));
      // Live keys, as etcd's gauge: the deleted keys no longer count.
      expect(mid.get('etcd_debugging_mvcc_keys_total')! - del.get('etcd_debugging_mvcc_keys_total')!).toBe(5);
      // RawClient answers a failed call with its status: an empty key is InvalidArgument.
      const refused = await c.unary(
        '/etcdserverpb.KV/Range',
        { key: Buffer.alloc(0) },
        { req: 'RangeRequest', res: 'RangeResponse' },
      );
      expect(refused).toMatchObject({ code: 3 });
      // A stream counts once it ends (here: the client cancels it).
      const w = c.watch();
      w.send({ createRequest: { key: Buffer.from('metrics-w') } });
      await waitFor(() => w.responses.length > 0, 10_000, 'the watch created');
      w.close();
    } finally {
      c.close();
    }
    const watchEnded = (m: Map<string, number>) =>
      [...m]
        .filter(([k]) =>
          /^grpc_server_handled_total\{grpc_code="\w+",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"\}$/.test(
            k,
          ),
        )
        .reduce((n, [, v]) => n + v, 0);
    await waitFor2(async () => watchEnded(await scrape(clientMetricsUrl(i))) > watchEnded(before), 10_000);
    const after = await scrape(clientMetricsUrl(i));
    const ok =
      'grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}';
    const bad =
      'grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}';
    expect((after.get(ok) ?? 0) - (before.get(ok) ?? 0)).toBe(5);
    expect((after.get(bad) ?? 0) - (before.get(bad) ?? 0)).toBe(1);
    expect(after.get('etcd_server_proposals_committed_total')!).toBeGreaterThanOrEqual(
      before.get('etcd_server_proposals_committed_total')! + 5,
    );
    expect(after.get('etcd_server_version{server_version="3.4.23"}')).toBe(1);
    expect(after.get('etcd_cluster_version{cluster_version="3.4"}')).toBe(1);
  });

  it('a scrape after a leader change shows the counter moved; /health is 503 without a leader', async () => {
    const leader = await served.waitLeader();
    const others = [0, 1, 2].filter((i) => i !== leader);
    const before = await scrape(metricsUrl(others[0]!));
    // SIGTERM: the leader hands leadership over before it stops (a leader change for the others).
    expect(await served.stop(leader)).toBe(0);
    const until = performance.now() + 20_000;
    let after = before;
    while (performance.now() < until) {
      after = await scrape(metricsUrl(others[0]!));
      if (
        after.get('etcd_server_leader_changes_seen_total')! >
          before.get('etcd_server_leader_changes_seen_total')! &&
        after.get('etcd_server_has_leader') === 1
      )
        break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(after.get('etcd_server_leader_changes_seen_total')!).toBeGreaterThan(
      before.get('etcd_server_leader_changes_seen_total')!,
    );
    expect(after.get('etcd_server_has_leader')).toBe(1);

    // One of three left: no quorum, no leader; /health says so (503, "false").
    expect(await served.stop(others[1]!)).toBe(0);
    const last = others[0]!;
    const healthUntil = performance.now() + 30_000;
    let h: Response | undefined;
    while (performance.now() < healthUntil) {
      h = await fetch(`http://${served.endpoints[last]}/health`);
      if (h.status === 503) break;
      await h.arrayBuffer();
      await new Promise((r) => setTimeout(r, 200));
    }
    expect([h!.status, await h!.json()]).toEqual([503, { health: 'false' }]);
    const m = await scrape(metricsUrl(last));
    expect(m.get('etcd_server_has_leader')).toBe(0);
    expect(m.get('etcd_server_health_failures')!).toBeGreaterThan(0);
  }, 90_000);
});
