import { createConnection, createServer } from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { msg } from '../../backends/raft/consensus/raft.js';
import { type Entry, type Message, MessageType, type NodeId } from '../../backends/raft/consensus/types.js';
import {
  decodeMessage,
  decodeSnapBegin,
  encodeMessageInto,
  encodeSnapBegin,
  FrameError,
  FrameKind,
  FrameReader,
  type IdMap,
  messageFrameBytes,
  Writer,
} from '../../backends/raft/transport/codec.js';
import {
  inboundConnectionsMax,
  type TcpPeer,
  TcpTransport,
  type TransportLogger,
} from '../../backends/raft/transport/tcp.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { freePort } from '../harness/etcd.js';

const member = (n: NodeId) => 0xabc0_0000_0000_0000n + BigInt(n);
const ids: IdMap = {
  toWire: (id) => (id >= 1 && id <= 5 ? member(id) : undefined),
  fromWire: (w) => {
    const n = Number(w - 0xabc0_0000_0000_0000n);
    return n >= 1 && n <= 5 ? n : undefined;
  },
};

const types = Object.values(MessageType);
const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const arbEntry: fc.Arbitrary<Entry> = fc.record({
  term: safe,
  index: safe,
  type: fc.constantFrom(0 as const, 1 as const),
  data: fc.uint8Array({ maxLength: 300 }),
});
const arbMessage: fc.Arbitrary<Message> = fc.record({
  type: fc.constantFrom(...types.filter((t) => t !== MessageType.Snapshot)),
  from: fc.integer({ min: 0, max: 5 }),
  to: fc.integer({ min: 0, max: 5 }),
  term: safe,
  index: safe,
  logTerm: safe,
  entries: fc.array(arbEntry, { maxLength: 6 }),
  commit: safe,
  reject: fc.boolean(),
  rejectHint: safe,
  hintTerm: safe,
  context: fc.uint8Array({ maxLength: 40 }),
});

function encodeAll(ms: readonly Message[]): Buffer {
  const w = new Writer(Buffer.alloc(ms.reduce((n, m) => n + messageFrameBytes(m), 0)));
  for (const m of ms) encodeMessageInto(w, m, ids);
  expect(w.p).toBe(w.buf.length);
  return w.buf;
}

/** Splits `b` at the given cut points (any order, any count). */
function chop(b: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of at) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  out.push(b.subarray(prev));
  return out;
}

const normalize = (m: Message) => ({
  ...m,
  context: [...m.context],
  entries: m.entries.map((e) => ({ ...e, data: [...e.data] })),
});

describe('peer frame codec', () => {
  it('peer frames — any messages, split into any chunks, decode to exactly what was sent', () => {
    fc.assert(
      fc.property(
        fc.array(arbMessage, { maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (ms, cuts) => {
          const got: Message[] = [];
          const r = new FrameReader((kind, body) => {
            expect(kind).toBe(FrameKind.Message);
            got.push(decodeMessage(body, ids));
          });
          for (const c of chop(encodeAll(ms), cuts)) r.push(c);
          expect(got.map(normalize)).toEqual(ms.map(normalize));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("peer frames — a decoded entry's data is a copy, not a view that pins the frame", () => {
    const m: Message = {
      type: MessageType.Append,
      from: 1,
      to: 2,
      term: 1,
      index: 0,
      logTerm: 0,
      entries: [{ term: 1, index: 1, type: 0, data: new Uint8Array([1, 2, 3]) }],
      commit: 0,
      reject: false,
      rejectHint: 0,
      hintTerm: 0,
      context: new Uint8Array(0),
    };
    const buf = encodeAll([m]);
    let d: Message | undefined;
    new FrameReader((_k, body) => {
      d = decodeMessage(body, ids);
    }).push(buf);
    expect(d!.entries[0]!.data.buffer.byteLength).toBe(3);
  });

  it('peer frames — random bytes never crash the reader with anything but a FrameError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        try {
          new FrameReader((kind, body) => {
            if (kind === FrameKind.Message) decodeMessage(body, ids);
            else if (kind === FrameKind.SnapBegin) decodeSnapBegin(body, ids);
          }).push(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(FrameError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('peer frames — a mutated valid frame decodes or fails with a FrameError, never anything else', () => {
    fc.assert(
      fc.property(arbMessage, fc.nat(), fc.integer({ min: 0, max: 255 }), (m, at, v) => {
        const buf = encodeAll([m]);
        buf[at % buf.length] = v;
        try {
          new FrameReader((_k, body) => decodeMessage(body, ids)).push(buf);
        } catch (err) {
          expect(err).toBeInstanceOf(FrameError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('peer frames — a frame longer than the bound is refused from its header', () => {
    const head = Buffer.alloc(5);
    head.writeUInt32LE(0xffff_fff0, 0);
    expect(() => new FrameReader(() => undefined).push(head)).toThrow(FrameError);
  });

  it('peer frames — node ids travel as member IDs; an unknown member is refused', () => {
    const snap: Message = {
      ...msg({ type: MessageType.Snapshot, from: 1, to: 2, term: 3 }),
      snapshot: {
        meta: { index: 9, term: 3, confState: { voters: [1, 2, 3], learners: [] } },
        data: new Uint8Array(5),
      },
    };
    const f = encodeSnapBegin(7, snap, ids);
    expect(f.includes(Buffer.from(member(3).toString(16).padStart(16, '0'), 'hex').reverse())).toBe(true);
    const b = decodeSnapBegin(f.subarray(5), ids);
    expect(b.meta.confState.voters).toEqual([1, 2, 3]);
    expect(b.total).toBe(5);
    const other: IdMap = {
      toWire: ids.toWire,
      fromWire: (w) => (w === member(3) ? undefined : ids.fromWire(w)),
    };
    expect(() => decodeSnapBegin(f.subarray(5), other)).toThrow(/not in this cluster/);
  });
});

// ------------------------------------------------------------------------------------------------
// Real sockets on loopback

interface Logged {
  level: string;
  msg: string;
  obj: Record<string, unknown>;
}
function logger(into: Logged[]): TransportLogger {
  const at = (level: string) => (obj: object, msg: string) =>
    into.push({ level, msg, obj: obj as Record<string, unknown> });
  return { info: at('info'), warn: at('warn'), error: at('error') };
}

const open: TcpTransport[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

interface Node {
  t: TcpTransport;
  got: Message[];
  log: Logged[];
}

async function pair(
  o: { clusterA?: bigint; clusterB?: bigint; versionA?: number; randomA?: () => number } = {},
): Promise<{ a: Node; b: Node; ports: number[] }> {
  const ports = [await freePort(), await freePort()];
  const peers: TcpPeer[] = [1, 2].map((n, i) => ({
    nodeId: n,
    memberId: member(n),
    host: '127.0.0.1',
    port: ports[i]!,
  }));
  const mk = (n: 1 | 2, clusterId: bigint, version?: number, random?: () => number): Node => {
    const log: Logged[] = [];
    const got: Message[] = [];
    const t = new TcpTransport({
      clusterId,
      nodeId: n,
      memberId: member(n),
      peers: peers.filter((p) => p.nodeId !== n),
      listen: { host: '127.0.0.1', port: ports[n - 1]! },
      log: logger(log),
      ...(version !== undefined ? { version } : {}),
      ...(random ? { random } : {}),
    });
    open.push(t);
    return { t, got, log };
  };
  const a = mk(1, o.clusterA ?? 7n, o.versionA, o.randomA);
  const b = mk(2, o.clusterB ?? 7n);
  await Promise.all([a.t.listen(), b.t.listen()]);
  a.t.register(1, (m) => a.got.push(m));
  b.t.register(2, (m) => b.got.push(m));
  return { a, b, ports };
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function heartbeat(from: NodeId, to: NodeId, commit: number): Message {
  return {
    type: MessageType.Heartbeat,
    from,
    to,
    term: 1,
    index: 0,
    logTerm: 0,
    entries: [],
    commit,
    reject: false,
    rejectHint: 0,
    hintTerm: 0,
    context: new Uint8Array(0),
  };
}

describe('tcp transport', () => {
  it('tcp transport — messages of one turn reach the peer in order, in one socket write', async () => {
    const { a, b } = await pair();
    await until(() => a.t.connected(2) && b.t.connected(1), 'both links');
    const writesBefore = a.t.stats().get(2)!.writes;
    a.t.send(Array.from({ length: 200 }, (_, i) => heartbeat(1, 2, i)));
    await until(() => b.got.length === 200, '200 messages');
    expect(b.got.map((m) => m.commit)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(b.got.every((m) => m.from === 1 && m.to === 2)).toBe(true);
    expect(a.t.stats().get(2)!.writes - writesBefore).toBe(1);
  });

  it('tcp transport — forwarded proposals of one turn travel as one message', async () => {
    const { a, b } = await pair();
    await until(() => a.t.connected(2), 'link');
    const prop = (i: number): Message => ({
      ...heartbeat(1, 2, 0),
      type: MessageType.Propose,
      term: 0,
      entries: [{ term: 0, index: 0, type: 0, data: new Uint8Array([i]) }],
    });
    a.t.send([prop(1), prop(2)]);
    a.t.send([prop(3)]);
    await until(() => b.got.length >= 1, 'the merged proposal');
    await new Promise((r) => setTimeout(r, 50));
    expect(b.got).toHaveLength(1);
    expect(b.got[0]!.entries.map((e) => e.data[0])).toEqual([1, 2, 3]);
  });

  it('tcp transport — a peer of another cluster is refused at the handshake, with a log line on both sides', async () => {
    const { a, b } = await pair({ clusterA: 7n, clusterB: 8n });
    await until(
      () =>
        a.log.some((l) => l.level === 'error' && /cluster ID mismatch/.test(String(l.obj.reason))) &&
        b.log.some((l) => l.level === 'error' && /cluster ID mismatch/.test(String(l.obj.reason))),
      'refusal lines on both sides',
    );
    a.t.send([heartbeat(1, 2, 1)]);
    b.t.send([heartbeat(2, 1, 1)]);
    await new Promise((r) => setTimeout(r, 200));
    expect(a.got.filter((m) => m.type === MessageType.Heartbeat)).toHaveLength(0);
    expect(b.got.filter((m) => m.type === MessageType.Heartbeat)).toHaveLength(0);
    expect(a.t.connected(2) || b.t.connected(1)).toBe(false);
    expect(a.t.stats().get(2)!.refusals + b.t.stats().get(1)!.refusals).toBeGreaterThan(0);
  });

  it('tcp transport — a peer speaking another protocol version is refused with a clear line', async () => {
    const { a, b } = await pair({ versionA: 99 });
    await until(
      () =>
        b.log.some(
          (l) => l.level === 'error' && /version 99 is not spoken here/.test(String(l.obj.reason)),
        ) && a.log.some((l) => l.level === 'error' && l.msg === 'peer refused the connection'),
      'version refusal on both sides',
    );
    expect(a.t.connected(2)).toBe(false);
  });

  it('tcp transport — messages to a down peer are dropped and counted, the member is told it is unreachable, and the link reconnects', async () => {
    const { a, b, ports } = await pair();
    await until(() => a.t.connected(2), 'link');
    await b.t.close();
    await until(() => !a.t.connected(2), 'the link to notice');
    const dropped = a.t.stats().get(2)!.droppedMessages;
    a.t.send([heartbeat(1, 2, 1), heartbeat(1, 2, 2)]);
    await new Promise((r) => setTimeout(r, 20));
    expect(a.t.stats().get(2)!.droppedMessages).toBeGreaterThanOrEqual(dropped + 1);
    expect(a.got.some((m) => m.type === MessageType.Unreachable && m.from === 2)).toBe(true);
    // The peer comes back on the same port: the link reconnects by itself (jittered backoff).
    const got: Message[] = [];
    const b2 = new TcpTransport({
      ...b.t.options,
      listen: { host: '127.0.0.1', port: ports[1]! },
    });
    open.push(b2);
    await b2.listen();
    b2.register(2, (m) => got.push(m));
    await until(() => a.t.connected(2), 'the reconnect');
    a.t.send([heartbeat(1, 2, 42)]);
    await until(() => got.some((m) => m.commit === 42), 'a message after the reconnect');
    expect(a.t.stats().get(2)!.connects).toBe(2);
  });

  it('tcp transport — a link in reconnect backoff dials at once when its peer dials in (a restarted member hears its peers without waiting out their backoff)', async () => {
    const { a, b, ports } = await pair({ randomA: () => 1 });
    await until(() => a.t.connected(2), 'link');
    await b.t.close();
    // While the peer is down its port accepts and drops every connection, so a's dials are seen:
    // with jitter off, a's delays double (50, 100, 200, 400, 800, 1600 ms, …).
    const dials: number[] = [];
    let restartedAt = 0;
    const b2 = new TcpTransport({ ...b.t.options, listen: { host: '127.0.0.1', port: ports[1]! } });
    open.push(b2);
    await new Promise<void>((resolve, reject) => {
      const down = createServer((s) => {
        s.destroy();
        dials.push(performance.now());
        const gap = dials.length >= 2 ? dials[dials.length - 1]! - dials[dials.length - 2]! : 0;
        // a's next delay is at least twice this gap (>= 1.5 s): the peer comes back now.
        if (gap < 750) return;
        restartedAt = performance.now();
        down.close(() => {
          b2.listen().then(() => {
            b2.register(2, () => {});
            resolve();
          }, reject);
        });
      });
      down.listen(ports[1]!, '127.0.0.1');
    });
    await until(() => b2.connected(1), "the restarted peer's own link");
    await until(() => a.t.connected(2), 'the link to the restarted peer', 10_000);
    // The backoff alone would dial again >= 1.5 s after the last dial; the peer's dial-in cut it short.
    expect(performance.now() - restartedAt).toBeLessThan(1000);
  });

  it('tcp transport — a member with several listen addresses accepts peers on each; one it cannot bind fails listen() and frees the others', async () => {
    const [p1, p2, extra] = [await freePort(), await freePort(), await freePort()];
    const mk = (n: 1 | 2, peerPort: number, listen: number, listenMore: number[]) => {
      const got: Message[] = [];
      const t = new TcpTransport({
        clusterId: 7n,
        nodeId: n,
        memberId: member(n),
        peers: [{ nodeId: 3 - n, memberId: member(3 - n), host: '127.0.0.1', port: peerPort }],
        listen: { host: '127.0.0.1', port: listen },
        listenMore: listenMore.map((port) => ({ host: '127.0.0.1', port })),
        log: logger([]),
      });
      open.push(t);
      return { t, got };
    };
    // b listens on p2 and on `extra`; a knows b only by `extra`.
    const b = mk(2, p1, p2, [extra]);
    const a = mk(1, extra, p1, []);
    expect(await b.t.listen()).toBe(p2);
    await a.t.listen();
    a.t.register(1, (m) => a.got.push(m));
    b.t.register(2, (m) => b.got.push(m));
    await until(() => a.t.connected(2), 'a link to the second address');
    a.t.send([heartbeat(1, 2, 5)]);
    await until(() => b.got.some((m) => m.commit === 5), 'a message through the second address');
    // An address already taken (b's): listen() rejects, and the first address is free again.
    const [q1] = [await freePort()];
    const c = mk(1, p1, q1, [extra]);
    await expect(c.t.listen()).rejects.toThrow(/EADDRINUSE/);
    const d = mk(1, p1, q1, []);
    expect(await d.t.listen()).toBe(q1);
  });

  it('tcp transport — a snapshot larger than a chunk streams in chunks and arrives intact, then reports done', async () => {
    const { a, b } = await pair();
    await until(() => a.t.connected(2), 'link');
    const data = new Uint8Array(3.5 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    a.t.send([
      {
        ...heartbeat(1, 2, 0),
        type: MessageType.Snapshot,
        snapshot: { meta: { index: 50, term: 2, confState: { voters: [1, 2], learners: [] } }, data },
      },
      heartbeat(1, 2, 7),
    ]);
    await until(() => b.got.some((m) => m.type === MessageType.Snapshot), 'the snapshot');
    const s = b.got.find((m) => m.type === MessageType.Snapshot)!.snapshot!;
    expect(s.meta).toEqual({ index: 50, term: 2, confState: { voters: [1, 2], learners: [] } });
    expect(Buffer.from(s.data).equals(Buffer.from(data))).toBe(true);
    // The heartbeat queued after it was not held behind the whole snapshot.
    expect(b.got.findIndex((m) => m.commit === 7)).toBeLessThan(
      b.got.findIndex((m) => m.type === MessageType.Snapshot),
    );
    await until(() => a.got.some((m) => m.type === MessageType.SnapStatus && !m.reject), 'snapshot status');
  });

  it('tcp transport — side-channel requests are answered by the peer; its errors keep their code', async () => {
    const { a, b } = await pair();
    b.t.serve(async (from, kind, body) => {
      if (kind === 2) throw new ConclaveError(ErrorCode.LeaseNotFound, 'requested lease not found');
      return new Uint8Array([from, kind, ...body]);
    });
    await until(() => a.t.connected(2), 'link');
    expect([...(await a.t.request(2, 1, new Uint8Array([9, 8]), 5000))]).toEqual([1, 1, 9, 8]);
    const err = await a.t.request(2, 2, new Uint8Array(0), 5000).catch((e: unknown) => e);
    expect(ConclaveError.is(err) && err.code).toBe(ErrorCode.LeaseNotFound);
    // A peer that never answers: the request fails unavailable at its deadline.
    b.t.serve(() => new Promise(() => undefined));
    const slow = await a.t.request(2, 1, new Uint8Array(0), 100).catch((e: unknown) => e);
    expect(ConclaveError.is(slow) && slow.code).toBe(ErrorCode.Unavailable);
  });

  it('tcp transport — connections beyond the inbound bound are closed at once; peers still get through', async () => {
    const { a, b, ports } = await pair();
    await until(() => a.t.connected(2), 'link');
    const strays = Array.from({ length: inboundConnectionsMax + 5 }, () =>
      createConnection({ host: '127.0.0.1', port: ports[1]! }).on('error', () => undefined),
    );
    try {
      await until(() => b.t.refusedInbound >= 5, 'strays beyond the bound closed');
      expect(b.log.filter((l) => /too many inbound/.test(l.msg))).toHaveLength(1);
      // The established peer link is unaffected.
      a.t.send([heartbeat(1, 2, 99)]);
      await until(() => b.got.some((m) => m.commit === 99), 'a message over the peer link');
    } finally {
      for (const s of strays) s.destroy();
    }
  });
});
