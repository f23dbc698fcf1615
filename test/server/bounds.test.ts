/**
 * Bounds and stream behaviour of the served client API: 10,000 watches on one stream (and the
 * next refused), a stream that stops reading (its watches resync from history, nothing lost,
 * memory bounded), `hasleader` on a member without a leader, progress notifications, fragmented
 * watch responses, and the stream and in-flight call bounds.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import type { ClientServerOptions } from '../../backends/raft/server/grpc.js';
import { type ServedCluster, serveCluster } from './harness.js';
import { RawClient, waitFor } from './raw.js';

const b = (s: string) => Buffer.from(s);
/** A response's watch ID (etcd leaves out ID 0, the proto3 default). */
const wid = (x: Record<string, unknown>): string => (x.watchId as string | undefined) ?? '0';
let cluster: EmbeddedCluster | undefined;
let served: ServedCluster | undefined;
const clients: RawClient[] = [];

async function serve(
  opts: ClientServerOptions = {},
  limits?: { maxRequestBytes: number; maxTxnOps: number },
): Promise<ServedCluster> {
  cluster = await startCluster({ nodes: 3 });
  served = await serveCluster(cluster, opts, limits);
  return served;
}

function client(i = 0): RawClient {
  const c = new RawClient(served!.endpoints[i]!);
  clients.push(c);
  return c;
}

const put = (r: RawClient, key: string, value: Buffer | string) =>
  r.unary(
    '/etcdserverpb.KV/Put',
    { key: b(key), value: typeof value === 'string' ? b(value) : value },
    {
      req: 'PutRequest',
      res: 'PutResponse',
    },
  );

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await served?.close();
  await cluster?.close();
  served = undefined;
  cluster = undefined;
});

describe('bounds of the served client API', () => {
  it('10,000 watches on one stream are served; the next one is refused with a reason', async () => {
    await serve();
    const r = client();
    const w = r.watch();
    const n = 10_000;
    for (let i = 0; i < n; i++) w.send({ createRequest: { key: b(`many/${i}`) } });
    w.send({ createRequest: { key: b('many/extra') } });
    await waitFor(() => w.responses.length >= n + 1, 120_000, 'every create to be answered');
    const created = w.responses.slice(0, n);
    expect(created.every((x, i) => x.created === true && wid(x) === String(i) && !x.canceled)).toBe(true);
    expect(w.responses[n]).toMatchObject({
      watchId: '-1',
      created: true,
      canceled: true,
      cancelReason: 'etcdserver: too many watches on one stream (max 10000); open another stream',
    });
    expect((await put(r, 'many/9999', 'x')).code).toBe(0);
    await waitFor(() => w.responses.length >= n + 2, 10_000, 'the event of the last watch');
    expect(w.responses[n + 1]).toMatchObject({ watchId: '9999' });
    expect(w.status).toBeUndefined();
  }, 180_000);

  it('a stream that stops reading: its watch resyncs from history and delivers every event in order', async () => {
    const s = await serve({ watchBufferBatchesMax: 4, watchSendBytesMax: 256 * 1024 });
    const r = client();
    const w = r.watch();
    w.send({ createRequest: { key: b('slow/'), rangeEnd: b('slow0') } });
    await waitFor(() => w.responses.length >= 1, 10_000, 'created');
    w.pause();
    const writer = client(1);
    const value = Buffer.alloc(8 * 1024, 120);
    const puts = 400;
    for (let i = 0; i < puts; i++) expect((await put(writer, `slow/${i % 10}`, value)).code).toBe(0);
    w.resume();
    const events = () => w.responses.slice(1).flatMap((x) => (x.events as unknown[] | undefined) ?? []);
    await waitFor(() => events().length >= puts, 30_000, 'every event after resuming');
    const revs = events().map((e) => Number((e as { kv: { modRevision: string } }).kv.modRevision));
    expect(revs).toHaveLength(puts);
    for (let i = 1; i < revs.length; i++) expect(revs[i]).toBe(revs[i - 1]! + 1);
    expect(s.servers[0]!.watchResyncs).toBeGreaterThan(0);
    expect(w.responses.some((x) => x.canceled)).toBe(false);
  }, 60_000);

  it('a stream closed while the server waits for it to drain is released', async () => {
    const s = await serve({ watchBufferBatchesMax: 4, watchSendBytesMax: 256 * 1024 });
    const r = client();
    const w = r.watch();
    w.send({ createRequest: { key: b('stuck/'), rangeEnd: b('stuck0') } });
    await waitFor(() => w.responses.length >= 1, 10_000, 'created');
    w.pause();
    const writer = client(1);
    const value = Buffer.alloc(16 * 1024, 120);
    for (let i = 0; i < 200; i++) expect((await put(writer, `stuck/${i % 10}`, value)).code).toBe(0);
    expect(s.servers[0]!.openStreams).toBe(1);
    w.close();
    await waitFor(() => s.servers[0]!.openStreams === 0, 10_000, 'the stream to be released');
    const again = client().watch();
    again.send({ createRequest: { key: b('stuck/0') } });
    await waitFor(() => again.responses.length >= 1, 10_000, 'a new watch');
    expect(again.responses[0]).toMatchObject({ created: true });
  }, 60_000);

  it('hasleader: a member without a leader refuses calls and ends streams with "etcdserver: no leader"', async () => {
    await serve({ leaderCheckIntervalMs: 100 });
    const md = new grpc.Metadata();
    md.set('hasleader', 'true');
    const leader = cluster!.leader()!.id;
    const isolated = cluster!.ids.find((id) => id !== leader)!;
    // Member ids are 1..3 in endpoint order.
    const iso = client(isolated - 1);
    const isoWatch = iso.watch(md);
    isoWatch.send({ createRequest: { key: b('hl') } });
    await waitFor(() => isoWatch.responses.length >= 1, 10_000, 'created on the isolated member');
    cluster!.partition(
      [isolated],
      cluster!.ids.filter((id) => id !== isolated),
    );
    await waitFor(
      () => cluster!.members.get(isolated)!.raft.lead === 0,
      20_000,
      'the isolated member to lose its leader',
    );
    const a = await iso.unary(
      '/etcdserverpb.KV/Range',
      { key: b('hl'), serializable: true },
      { req: 'RangeRequest', res: 'RangeResponse' },
      md,
    );
    expect(a).toMatchObject({ code: grpc.status.UNAVAILABLE, details: 'etcdserver: no leader' });
    // Without hasleader, a serializable read is still served locally.
    const local = await iso.unary(
      '/etcdserverpb.KV/Range',
      { key: b('hl'), serializable: true },
      { req: 'RangeRequest', res: 'RangeResponse' },
    );
    expect(local.code).toBe(0);
    await waitFor(() => isoWatch.status !== undefined, 10_000, 'the hasleader stream to be ended');
    expect(isoWatch.status).toEqual({ code: grpc.status.UNAVAILABLE, details: 'etcdserver: no leader' });
    const refused = iso.watch(md);
    await waitFor(() => refused.status !== undefined, 10_000, 'a new hasleader stream to be refused');
    expect(refused.status).toEqual({ code: grpc.status.UNAVAILABLE, details: 'etcdserver: no leader' });
    cluster!.heal();
  }, 60_000);

  it('progress_notify: a quiet watch gets an empty response at the current revision; others do not', async () => {
    await serve({ progressNotifyIntervalMs: 100 });
    const r = client();
    expect((await put(r, 'pn/x', '1')).code).toBe(0);
    const w = r.watch();
    w.send({ createRequest: { key: b('pn/a'), progressNotify: true } });
    w.send({ createRequest: { key: b('pn/b') } });
    await waitFor(
      () => w.responses.filter((x) => wid(x) === '0' && !x.created).length >= 2,
      10_000,
      'two progress notifications',
    );
    const p = w.responses.find((x) => wid(x) === '0' && !x.created)!;
    expect(p.events).toBeUndefined();
    expect(Number((p.header as { revision: string }).revision)).toBeGreaterThanOrEqual(2);
    expect(w.responses.filter((x) => wid(x) === '1' && !x.created)).toHaveLength(0);
  });

  it('fragment: a response over max-request-bytes + 512 KiB is split in order, the last part unflagged', async () => {
    await serve({}, { maxRequestBytes: 64 * 1024, maxTxnOps: 128 });
    const r = client();
    const value = Buffer.alloc(60 * 1024, 97);
    for (let i = 0; i < 12; i++)
      expect((await put(r, `fr/${String(i).padStart(2, '0')}`, value)).code).toBe(0);
    const w = r.watch();
    w.send({ createRequest: { key: b('fr/'), rangeEnd: b('fr0'), prevKv: true, fragment: true } });
    const plain = r.watch();
    plain.send({ createRequest: { key: b('fr/'), rangeEnd: b('fr0'), prevKv: true } });
    await waitFor(() => w.responses.length >= 1 && plain.responses.length >= 1, 10_000, 'created');
    const d = await r.unary(
      '/etcdserverpb.KV/DeleteRange',
      { key: b('fr/'), rangeEnd: b('fr0') },
      { req: 'DeleteRangeRequest', res: 'DeleteRangeResponse' },
    );
    expect(d.response!.deleted).toBe('12');
    await waitFor(() => w.responses.some((x) => x.events && !x.fragment), 10_000, 'the last fragment');
    const parts = w.responses.slice(1);
    expect(parts.length).toBeGreaterThan(1);
    expect(parts.slice(0, -1).every((x) => x.fragment === true)).toBe(true);
    expect(parts.at(-1)!.fragment).toBeUndefined();
    const keys = parts.flatMap((x) =>
      (x.events as { kv: { key: Buffer } }[]).map((e) => e.kv.key.toString()),
    );
    expect(keys).toEqual(Array.from({ length: 12 }, (_, i) => `fr/${String(i).padStart(2, '0')}`));
    await waitFor(() => plain.responses.length >= 2, 10_000, 'the unfragmented response');
    expect(plain.responses).toHaveLength(2);
    expect((plain.responses[1]!.events as unknown[]).length).toBe(12);
  });

  it('streams over streamsMax and unary calls over pendingRequestsMax get "etcdserver: too many requests"', async () => {
    const s = await serve({ streamsMax: 2, pendingRequestsMax: 1 });
    const r = client();
    const w1 = r.watch();
    const w2 = r.watch();
    w1.send({ createRequest: { key: b('a') } });
    w2.send({ createRequest: { key: b('a') } });
    await waitFor(() => w1.responses.length >= 1 && w2.responses.length >= 1, 10_000, 'two streams');
    expect(s.servers[0]!.openStreams).toBe(2);
    const w3 = r.watch();
    await waitFor(() => w3.status !== undefined, 10_000, 'the third stream to be refused');
    expect(w3.status).toEqual({
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: 'etcdserver: too many requests',
    });
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => put(r, `p/${i}`, 'v')));
    const busy = answers.filter((a) => a.code !== 0);
    expect(busy.length).toBeGreaterThan(0);
    for (const a of busy)
      expect(a).toMatchObject({
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: 'etcdserver: too many requests',
      });
    w1.close();
    await waitFor(() => s.servers[0]!.openStreams === 1, 10_000, 'a closed stream to be released');
  });
});
