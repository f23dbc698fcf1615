/**
 * The same script of requests sent to a fresh etcd 3.4 and to a fresh served single-member
 * cluster: every response must decode to the same message, field for field (headers included
 * except the IDs and term, which differ by design; lease IDs are chosen by the script). Runs only
 * where an etcd binary exists.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, serveCluster } from './harness.js';
import { RawClient, waitFor } from './raw.js';

const b = (s: string) => Buffer.from(s);
type Step = [method: string, req: string, res: string, body: Record<string, unknown>];

const kv = (m: string, body: Record<string, unknown>): Step => {
  const names: Record<string, [string, string]> = {
    Range: ['RangeRequest', 'RangeResponse'],
    Put: ['PutRequest', 'PutResponse'],
    DeleteRange: ['DeleteRangeRequest', 'DeleteRangeResponse'],
    Txn: ['TxnRequest', 'TxnResponse'],
    Compact: ['CompactionRequest', 'CompactionResponse'],
  };
  return [`/etcdserverpb.KV/${m}`, names[m]![0], names[m]![1], body];
};
const lease = (m: string, body: Record<string, unknown>): Step => [
  `/etcdserverpb.Lease/Lease${m}`,
  `Lease${m}Request`,
  `Lease${m}Response`,
  body,
];

const script: Step[] = [
  kv('Put', { key: b('d/a'), value: b('1') }),
  kv('Put', { key: b('d/a'), value: b('2'), prevKv: true }),
  kv('Put', { key: b('d/b'), value: b('3') }),
  kv('Range', { key: b('d/'), rangeEnd: b('d0') }),
  kv('Range', { key: b('d/'), rangeEnd: b('d0'), limit: 1 }),
  kv('Range', { key: b('d/'), rangeEnd: b('d0'), countOnly: true }),
  kv('Range', { key: b('d/'), rangeEnd: b('d0'), keysOnly: true, sortOrder: 2, sortTarget: 3 }),
  kv('Range', { key: b('d/a'), revision: 2 }),
  kv('Range', { key: b('d/'), rangeEnd: b('d0'), minModRevision: 3 }),
  kv('Range', { key: b('d/nope') }),
  kv('Put', { key: b('d/a'), ignoreValue: true }),
  lease('Grant', { TTL: 60, ID: 4242 }),
  kv('Put', { key: b('d/l'), value: b('x'), lease: 4242 }),
  lease('TimeToLive', { ID: 4242, keys: true }),
  lease('Leases', {}),
  kv('Txn', {
    compare: [{ key: b('d/a'), target: 3, result: 0, value: b('2') }],
    success: [
      { requestRange: { key: b('d/a') } },
      { requestPut: { key: b('d/c'), value: b('4'), prevKv: true } },
      { requestDeleteRange: { key: b('d/b'), prevKv: true } },
      { requestTxn: { success: [{ requestRange: { key: b('d/c') } }] } },
    ],
    failure: [{ requestPut: { key: b('d/f'), value: b('no') } }],
  }),
  kv('Txn', {
    compare: [{ key: b('d/a'), target: 0, result: 1, version: 10 }],
    success: [{ requestPut: { key: b('d/s'), value: b('no') } }],
    failure: [{ requestRange: { key: b('d/'), rangeEnd: b('d0') } }],
  }),
  kv('Txn', { compare: [{ key: b('d/'), rangeEnd: b('d0'), target: 2, result: 2, modRevision: 100 }] }),
  lease('Revoke', { ID: 4242 }),
  kv('Range', { key: b('d/l') }),
  lease('TimeToLive', { ID: 4242 }),
  kv('DeleteRange', { key: b('d/'), rangeEnd: b('d0'), prevKv: true }),
  kv('DeleteRange', { key: b('d/zzz') }),
  kv('Compact', { revision: 3 }),
  kv('Range', { key: b('d/a'), revision: 2 }),
];

/** Drops what differs by design: cluster and member IDs, the term. */
function normal(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(normal);
  if (v && typeof v === 'object' && !Buffer.isBuffer(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (k === 'clusterId' || k === 'memberId' || k === 'raftTerm') continue;
      // Remaining TTLs count down while the script runs (and etcd truncates): compared to 5 s.
      if (k === 'TTL' && Number(x) > 0) out[k] = Math.ceil(Number(x) / 5) * 5;
      else out[k] = normal(x);
    }
    return out;
  }
  return Buffer.isBuffer(v) ? v.toString() : v;
}

async function run(endpoint: string): Promise<unknown[]> {
  const r = new RawClient(endpoint);
  try {
    const out: unknown[] = [];
    for (const [path, req, res, body] of script) {
      const a = await r.unary(path, body, { req, res });
      out.push(normal(a.code === 0 ? a.response : { code: a.code, details: a.details }));
    }
    // A watch over the script's history from revision 4, with prev_kv.
    const w = r.watch();
    w.send({ createRequest: { key: b('d/'), rangeEnd: b('d0'), startRevision: 4, prevKv: true } });
    await waitFor(() => w.responses.length >= 2, 10_000, 'watch history');
    await new Promise((res) => setTimeout(res, 300));
    // etcd sends a catch-up in one response of many revisions, this server one per revision (both
    // are etcd's wire): the created answer and the events, in order, must be the same.
    const [created, ...rest] = w.responses.map(({ header: _h, ...x }) => x);
    out.push(normal(created));
    out.push(normal(rest.flatMap((x) => (x.events as unknown[] | undefined) ?? [])));
    out.push(normal(rest.map(({ events: _e, ...x }) => x).filter((x) => Object.keys(x).length > 0)));
    w.close();
    return out;
  } finally {
    r.close();
  }
}

let etcd: EtcdCluster | undefined;
let cluster: EmbeddedCluster | undefined;
let served: ServedCluster | undefined;

describe.skipIf(!etcdBinary())('wire: the served API answers as etcd 3.4 does', () => {
  beforeAll(async () => {
    etcd = await startEtcd({ members: 1 });
    cluster = await startCluster({ nodes: 1 });
    served = await serveCluster(cluster);
  });
  afterAll(async () => {
    await served?.close();
    await cluster?.close();
    await etcd?.stop();
  });

  it('every response of the script decodes to the same message', async () => {
    const theirs = await run(etcd!.endpoints[0]!);
    const ours = await run(served!.endpoints[0]!);
    for (let i = 0; i < theirs.length; i++)
      expect(ours[i], `step ${i}: ${script[i]?.[0] ?? 'watch'}`).toEqual(theirs[i]);
  });
});
