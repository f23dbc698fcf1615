/**
 * Bad input at a `conclave serve` member's two network boundaries, seeded and bounded:
 * - client gRPC port: random bytes and mutated valid requests (bit flips, truncation, appended
 *   unknown fields, huge length-delimited fields) for every unary method, and a txn nested deeper
 *   than any limit; streams opened and abandoned;
 * - peer port: garbage bytes, a frame claiming 4 GiB, a Hello with the wrong cluster id, a
 *   half-open connection that never sends.
 * Each answer may be any gRPC status (or a dropped connection), but the member must stay up, keep
 * its memory bounded, and still serve a normal client afterwards.
 */
import { readFileSync } from 'node:fs';
import { type Socket, connect as tcpConnect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { methods, root } from '../../src/protocol/codec.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { RawClient } from '../server/raw.js';
import { Prng } from '../sim/prng.js';

const seed = Number(process.env.FUZZ_SEED ?? 17);
/** Requests sent per method (seeded). */
const casesPerMethod = 20;
/** Streams opened and abandoned. */
const abandonedStreams = 2000;
/** RSS growth of the member allowed over the whole run. */
const rssGrowthMax = 256 * 1024 * 1024;

const unary: Array<[string, string, Record<string, unknown>]> = [
  [methods.range, 'RangeRequest', { key: Buffer.from('a'), rangeEnd: Buffer.from('z'), limit: 10 }],
  [methods.put, 'PutRequest', { key: Buffer.from('fz'), value: Buffer.from('v'), prevKv: true }],
  [methods.deleteRange, 'DeleteRangeRequest', { key: Buffer.from('fz'), prevKv: true }],
  [
    methods.txn,
    'TxnRequest',
    {
      compare: [{ key: Buffer.from('fz'), target: 'VERSION', result: 'EQUAL', version: 0 }],
      success: [{ requestPut: { key: Buffer.from('fz'), value: Buffer.from('w') } }],
      failure: [{ requestRange: { key: Buffer.from('fz') } }],
    },
  ],
  [methods.compact, 'CompactionRequest', { revision: 1 }],
  [methods.leaseGrant, 'LeaseGrantRequest', { TTL: 5 }],
  [methods.leaseRevoke, 'LeaseRevokeRequest', { ID: 1 }],
  [methods.leaseTimeToLive, 'LeaseTimeToLiveRequest', { ID: 1, keys: true }],
  [methods.leaseLeases, 'LeaseLeasesRequest', {}],
  [methods.status, 'StatusRequest', {}],
];

function encode(type: string, m: Record<string, unknown>): Buffer {
  const t = root.lookupType(`etcdserverpb.${type}`);
  return Buffer.from(t.encode(t.fromObject(m)).finish());
}

/** A seeded bad variant of a valid request body. */
function mutate(prng: Prng, valid: Buffer): Buffer {
  switch (prng.int(6)) {
    case 0: // random bytes
      return Buffer.from(Array.from({ length: prng.int(64) }, () => prng.int(256)));
    case 1: {
      // bit flips
      const b = Buffer.from(valid);
      for (let i = 0; i < 1 + prng.int(4) && b.length > 0; i++) b[prng.int(b.length)]! ^= 1 << prng.int(8);
      return b;
    }
    case 2: // truncated
      return valid.subarray(0, prng.int(valid.length + 1));
    case 3: // an unknown field (number 1000, varint) appended
      return Buffer.concat([valid, Buffer.from([0xc0, 0x3e, prng.int(128)])]);
    case 4: // a length-delimited field claiming far more bytes than follow
      return Buffer.concat([valid, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3])]);
    default: // a huge but real bytes field (1 MiB key)
      return Buffer.concat([Buffer.from([0x0a, 0x80, 0x80, 0x40]), Buffer.alloc(1 << 20, 0x61)]);
  }
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/**
 * A TxnRequest nested `depth` levels deep (each level's success branch holds the next txn),
 * encoded by hand: protobufjs itself refuses to encode past its own nesting limit.
 * TxnRequest.success = field 2, RequestOp.request_txn = field 4, both length-delimited.
 */
function nestedTxnBytes(depth: number): Buffer {
  let txn = encode('TxnRequest', { success: [{ requestRange: { key: Buffer.from('a') } }] });
  for (let i = 0; i < depth; i++) {
    const op = Buffer.concat([Buffer.from([0x22]), varint(txn.length), txn]);
    txn = Buffer.concat([Buffer.from([0x12]), varint(op.length), op]);
  }
  return txn;
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

/** Sends bytes on a fresh peer connection; resolves when the member closes it (or after `ms`). */
function peerSend(port: number, bytes: Buffer, ms = 10_000): Promise<'closed' | 'open'> {
  return new Promise((resolve) => {
    const s: Socket = tcpConnect({ host: '127.0.0.1', port }, () => s.write(bytes));
    const t = setTimeout(() => {
      s.destroy();
      resolve('open');
    }, ms);
    s.on('data', () => {});
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(t);
      resolve('closed');
    });
  });
}

describe('fuzzing a conclave serve member (1 process)', () => {
  let c: ServedCluster;
  let pid: number;
  let rss0 = 0;
  beforeAll(async () => {
    c = await startServed({ members: 1 });
    pid = c.members[0]!.proc!.pid!;
    rss0 = rssOf(pid);
  });
  afterAll(async () => {
    await c?.close();
  });

  /** A normal client is served again within `serveAgainMs` (logged: how long it took). */
  const serveAgainMs = 30_000;
  const serves = async (after: string) => {
    const t0 = performance.now();
    let last: unknown;
    while (performance.now() - t0 < serveAgainMs) {
      try {
        const kv = await connect({ backend: 'etcd', endpoints: c.endpoints, callTimeoutMs: 5000 });
        try {
          await kv.put('fuzz/after', 'ok');
          const r = await kv.range('fuzz/after');
          expect(new TextDecoder().decode(r.kvs[0]!.value)).toBe('ok');
          console.log(`served a normal client ${(performance.now() - t0).toFixed(0)} ms after ${after}`);
          return;
        } finally {
          await kv.close();
        }
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`not serving ${serveAgainMs} ms after ${after}: ${String(last)}`);
  };

  it(`bad request bytes on every unary method are answered with a status (seed ${seed})`, async () => {
    const prng = new Prng(seed);
    const raw = new RawClient(c.endpoints[0]!);
    const codes = new Map<number, number>();
    try {
      for (const [path, type, valid] of unary) {
        const body = encode(type, valid);
        for (let i = 0; i < casesPerMethod; i++) {
          const a = await raw.unary(path, mutate(prng, body));
          codes.set(a.code, (codes.get(a.code) ?? 0) + 1);
        }
      }
      const deep = await raw.unary(methods.txn, nestedTxnBytes(200));
      expect(deep.code).not.toBe(0);
    } finally {
      raw.close();
    }
    console.log(`gRPC fuzz: status codes ${JSON.stringify(Object.fromEntries(codes))}`);
    // Every request was answered (a hang would have hit RawClient's 10 s deadline: code 4).
    expect(codes.get(4) ?? 0).toBe(0);
    expect(c.members[0]!.proc!.exitCode).toBeNull();
    await serves('the gRPC fuzz');
  }, 120_000);

  it(`${abandonedStreams} watch streams opened and abandoned`, async () => {
    const raw = new RawClient(c.endpoints[0]!);
    try {
      for (let i = 0; i < abandonedStreams; i++) {
        const w = raw.watch();
        w.send({ createRequest: { key: Buffer.from(`w${i}`) } });
        if (i % 2 === 0) w.close();
      }
    } finally {
      raw.close();
    }
    expect(c.members[0]!.proc!.exitCode).toBeNull();
    await serves('abandoning the streams');
  }, 120_000);

  it('garbage, a 4 GiB frame, a wrong cluster id and a half-open connection on the peer port', async () => {
    const port = c.members[0]!.peerPort;
    const prng = new Prng(seed + 1);
    const halfOpen = tcpConnect({ host: '127.0.0.1', port });
    halfOpen.on('error', () => {});
    const garbage = Buffer.from(Array.from({ length: 256 }, () => prng.int(256)));
    const huge = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0, 0]);
    // A Hello ([len u32][kind 1][magic "CNCL" u32][version u16][cluster][from][to]) with a wrong cluster id.
    const hello = Buffer.alloc(4 + 1 + 4 + 2 + 24);
    hello.writeUInt32LE(hello.length - 4, 0);
    hello.writeUInt8(1, 4);
    hello.writeUInt32LE(0x4c434e43, 5);
    hello.writeUInt16LE(1, 9);
    hello.writeBigUInt64LE(0xdeadbeefn, 11);
    hello.writeBigUInt64LE(1n, 19);
    hello.writeBigUInt64LE(2n, 27);
    expect(await peerSend(port, garbage)).toBe('closed');
    expect(await peerSend(port, huge)).toBe('closed');
    expect(await peerSend(port, hello)).toBe('closed');
    expect(c.members[0]!.proc!.exitCode).toBeNull();
    await serves('the peer-port fuzz');
    halfOpen.destroy();
  }, 60_000);

  it('memory stays bounded', () => {
    const grown = rssOf(pid) - rss0;
    console.log(`member RSS grew ${(grown / 1024 / 1024).toFixed(1)} MiB over the fuzz run`);
    expect(grown).toBeLessThan(rssGrowthMax);
  });
});
