/**
 * Bad input at the client API: each request gets the gRPC status etcd 3.4 gives it, and the server
 * keeps serving. Expectations are written out (they were read from etcd 3.4.23); when an etcd
 * binary is available the same requests go to a real etcd too and its answers must match, so the
 * table cannot drift from etcd. gRPC-level refusals (malformed protobuf, unknown methods) are
 * compared by code: their texts come from the gRPC library (Go's vs grpc-js).
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, serveCluster } from './harness.js';
import { type Answer, RawClient, waitFor } from './raw.js';

const b = (s: string) => Buffer.from(s);
const S = grpc.status;

interface Case {
  name: string;
  call: (r: RawClient) => Promise<Answer>;
  code: number;
  /** etcd's exact text; undefined for gRPC-library texts (compared by code only). */
  details?: string;
  /** What the response must hold when the call succeeds. */
  check?: (a: Answer) => void;
}

const kv = (m: string, req: string, res: string) => (r: RawClient, body: Record<string, unknown>) =>
  r.unary(`/etcdserverpb.KV/${m}`, body, { req, res });
const put = kv('Put', 'PutRequest', 'PutResponse');
const range = kv('Range', 'RangeRequest', 'RangeResponse');
const del = kv('DeleteRange', 'DeleteRangeRequest', 'DeleteRangeResponse');
const txn = kv('Txn', 'TxnRequest', 'TxnResponse');
const compact = kv('Compact', 'CompactionRequest', 'CompactionResponse');
const lease = (m: string, body: Record<string, unknown>) => (r: RawClient) =>
  r.unary(`/etcdserverpb.Lease/Lease${m}`, body, { req: `Lease${m}Request`, res: `Lease${m}Response` });

const MiB = 1024 * 1024;

const cases: Case[] = [
  {
    name: 'range: empty key',
    call: (r) => range(r, {}),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key is not provided',
  },
  {
    name: 'put: empty key',
    call: (r) => put(r, { value: b('v') }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key is not provided',
  },
  {
    name: 'delete: empty key',
    call: (r) => del(r, {}),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key is not provided',
  },
  {
    name: 'put: ignore_value with a value',
    call: (r) => put(r, { key: b('bad/k'), value: b('v'), ignoreValue: true }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: value is provided',
  },
  {
    name: 'put: ignore_lease with a lease',
    call: (r) => put(r, { key: b('bad/k'), lease: 5, ignoreLease: true }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: lease is provided',
  },
  {
    name: 'put: ignore_value on a missing key',
    call: (r) => put(r, { key: b('bad/missing'), ignoreValue: true }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key not found',
  },
  {
    name: 'put: an unknown lease',
    call: (r) => put(r, { key: b('bad/k'), value: b('v'), lease: 123456789 }),
    code: S.NOT_FOUND,
    details: 'etcdserver: requested lease not found',
  },
  {
    name: 'range: a future revision',
    call: (r) => range(r, { key: b('bad/k'), revision: 1_000_000 }),
    code: S.OUT_OF_RANGE,
    details: 'etcdserver: mvcc: required revision is a future revision',
  },
  {
    name: 'range: a negative revision reads the current one',
    call: (r) => range(r, { key: b('bad/k'), revision: -1 }),
    code: S.OK,
    check: (a) => expect(Number((a.response!.header as { revision: string }).revision)).toBeGreaterThan(1),
  },
  {
    name: 'range: a negative limit is no limit',
    call: (r) => range(r, { key: b('bad/'), rangeEnd: b('bad0'), limit: -1 }),
    code: S.OK,
    check: (a) => expect(a.response!.more).toBeUndefined(),
  },
  {
    name: 'range: an inverted range is empty, not an error',
    call: (r) => range(r, { key: b('z'), rangeEnd: b('a') }),
    code: S.OK,
    check: (a) => {
      expect(a.response!.kvs).toBeUndefined();
      expect(a.response!.count).toBeUndefined();
    },
  },
  {
    name: 'compact: a negative revision',
    call: (r) => compact(r, { revision: -5 }),
    code: S.OUT_OF_RANGE,
    details: 'etcdserver: mvcc: required revision has been compacted',
  },
  {
    name: 'compact: a future revision',
    call: (r) => compact(r, { revision: 1_000_000 }),
    code: S.OUT_OF_RANGE,
    details: 'etcdserver: mvcc: required revision is a future revision',
  },
  {
    name: 'txn: an empty RequestOp',
    call: (r) => txn(r, { success: [{}] }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key not found',
  },
  {
    name: 'txn: a key put and deleted in one branch',
    call: (r) =>
      txn(r, { success: [{ requestPut: { key: b('a') } }, { requestDeleteRange: { key: b('a') } }] }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: duplicate key given in txn request',
  },
  {
    name: 'txn: a key put twice in nested branches',
    call: (r) =>
      txn(r, {
        success: [
          { requestPut: { key: b('a') } },
          { requestTxn: { success: [{ requestPut: { key: b('a') } }] } },
        ],
      }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: duplicate key given in txn request',
  },
  {
    name: 'txn: 129 compares',
    call: (r) => txn(r, { compare: Array.from({ length: 129 }, () => ({ key: b('a') })) }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: too many operations in txn request',
  },
  {
    name: 'txn: an empty compare key',
    call: (r) => txn(r, { compare: [{ result: 0 }] }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: key is not provided',
  },
  {
    name: 'lease revoke: ID 0',
    call: lease('Revoke', { ID: 0 }),
    code: S.NOT_FOUND,
    details: 'etcdserver: requested lease not found',
  },
  {
    name: 'lease revoke: an unknown ID',
    call: lease('Revoke', { ID: 987654321 }),
    code: S.NOT_FOUND,
    details: 'etcdserver: requested lease not found',
  },
  {
    name: 'lease grant: a TTL over 9,000,000,000 s',
    call: lease('Grant', { TTL: 9_000_000_001 }),
    code: S.OUT_OF_RANGE,
    details: 'etcdserver: too large lease TTL',
  },
  {
    name: 'lease grant: TTL 0 is raised to the minimum',
    call: lease('Grant', { TTL: 0 }),
    code: S.OK,
    check: (a) => expect(Number(a.response!.TTL)).toBeGreaterThanOrEqual(1),
  },
  {
    name: 'lease time-to-live: ID 0 answers TTL -1',
    call: lease('TimeToLive', { ID: 0 }),
    code: S.OK,
    check: (a) => {
      expect(a.response!.TTL).toBe('-1');
      expect(a.response!.ID).toBeUndefined();
    },
  },
  {
    name: 'put: over max-request-bytes (1.5 MiB)',
    call: (r) => put(r, { key: b('bad/big'), value: Buffer.alloc(1.6 * MiB) }),
    code: S.INVALID_ARGUMENT,
    details: 'etcdserver: request is too large',
  },
  {
    name: 'put: over max-request-bytes + 512 KiB (refused by gRPC)',
    call: (r) => put(r, { key: b('bad/big'), value: Buffer.alloc(2.1 * MiB) }),
    code: S.RESOURCE_EXHAUSTED,
  },
  {
    name: 'malformed protobuf',
    call: (r) => r.unary('/etcdserverpb.KV/Put', Buffer.from([0x0a, 0xff])),
    code: S.INTERNAL,
  },
  {
    name: 'unknown method',
    call: (r) => r.unary('/etcdserverpb.KV/Nope', Buffer.alloc(0)),
    code: S.UNIMPLEMENTED,
  },
  { name: 'unknown service', call: (r) => r.unary('/foo.Bar/Baz', Buffer.alloc(0)), code: S.UNIMPLEMENTED },
  {
    name: 'health: the server',
    call: (r) => r.unary('/grpc.health.v1.Health/Check', Buffer.alloc(0)),
    code: S.OK,
  },
  {
    name: 'health: an unknown service',
    call: (r) => r.unary('/grpc.health.v1.Health/Check', Buffer.from([0x0a, 1, 0x78])),
    code: S.NOT_FOUND,
    details: 'unknown service',
  },
];

let cluster: EmbeddedCluster;
let served: ServedCluster;
let etcd: EtcdCluster | undefined;

describe('bad input at the served client API', () => {
  beforeAll(async () => {
    cluster = await startCluster({ nodes: 3 });
    served = await serveCluster(cluster);
    if (etcdBinary()) etcd = await startEtcd({ members: 1 });
  });
  afterAll(async () => {
    await served?.close();
    await cluster?.close();
    await etcd?.stop();
  });

  const targets = () => [
    ['served', served.endpoints[0]!] as const,
    ...(etcd ? [['etcd', etcd.endpoints[0]!] as const] : []),
  ];

  it.each(cases)('$name', async (c) => {
    for (const [who, ep] of targets()) {
      const r = new RawClient(ep);
      try {
        await put(r, { key: b('bad/k'), value: b('v') });
        const a = await c.call(r);
        expect(a.code, `${who}: ${a.details}`).toBe(c.code);
        if (c.details !== undefined) expect(a.details, who).toBe(c.details);
        c.check?.(a);
        // Still serving.
        expect((await range(r, { key: b('bad/k') })).code).toBe(S.OK);
      } finally {
        r.close();
      }
    }
  });

  it('watch: refused creates (inverted range, duplicate ID), unknown cancel, progress request', async () => {
    for (const [who, ep] of targets()) {
      const r = new RawClient(ep);
      const w = r.watch();
      try {
        w.send({ createRequest: { key: b('b'), rangeEnd: b('a') } });
        w.send({ createRequest: { key: b('k'), watchId: 5 } });
        w.send({ createRequest: { key: b('k'), watchId: 5 } });
        w.send({ cancelRequest: { watchId: 99 } });
        w.send({ progressRequest: {} });
        await waitFor(() => w.responses.length >= 4, 10_000, `${who}: four watch responses`);
        const strip = w.responses.map(({ header: _h, ...rest }) => rest);
        expect(strip, who).toEqual([
          { watchId: '-1', created: true, canceled: true, cancelReason: 'mvcc: watcher range is empty' },
          { watchId: '5', created: true },
          {
            watchId: '-1',
            created: true,
            canceled: true,
            cancelReason: 'mvcc: duplicate watch ID provided on the WatchStream',
          },
          { watchId: '-1' },
        ]);
      } finally {
        w.close();
        r.close();
      }
    }
  });

  it('lease keep-alive stream: ID 0 and an unknown ID answer TTL 0; half-close ends it OK', async () => {
    for (const [who, ep] of targets()) {
      const r = new RawClient(ep);
      try {
        const g = await lease('Grant', { TTL: 30 })(r);
        const id = g.response!.ID as string;
        const s = r.stream(
          '/etcdserverpb.Lease/LeaseKeepAlive',
          'LeaseKeepAliveRequest',
          'LeaseKeepAliveResponse',
        );
        s.send({ ID: 0 });
        s.send({ ID: 987654321 });
        s.send({ ID: id });
        s.end();
        await waitFor(() => s.status !== undefined, 10_000, `${who}: the stream to end`);
        expect(s.status?.code, who).toBe(S.OK);
        expect(
          s.responses.map(({ header: _h, ...x }) => x),
          who,
        ).toEqual([{}, { ID: '987654321' }, { ID: id, TTL: '30' }]);
      } finally {
        r.close();
      }
    }
  });

  it('watch: a compacted start revision is created, then canceled with compact_revision', async () => {
    for (const [who, ep] of targets()) {
      const r = new RawClient(ep);
      const w = r.watch();
      try {
        await put(r, { key: b('bad/c'), value: b('1') });
        const p = await put(r, { key: b('bad/c'), value: b('2') });
        const rev = Number((p.response!.header as { revision: string }).revision);
        expect((await compact(r, { revision: rev })).code).toBe(S.OK);
        w.send({ createRequest: { key: b('bad/c'), startRevision: rev - 1 } });
        await waitFor(() => w.responses.length >= 2, 10_000, `${who}: created and canceled`);
        expect(w.responses[0]).toMatchObject({ created: true });
        expect(w.responses[1], who).toMatchObject({ canceled: true, compactRevision: String(rev) });
      } finally {
        w.close();
        r.close();
      }
    }
  });
});
