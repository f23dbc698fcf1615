/**
 * The peer wire format of `TcpTransport` (hand-written: the peer link sits on the write path of
 * every put, and a generic encoder's per-field work showed up in profiles of the WAL and command
 * codecs). Every frame is
 *
 *   [length u32 LE][kind u8][body: length − 1 bytes]
 *
 * `length` counts the kind byte and the body and is at most `frameBytesMax`; a peer that sends a
 * longer or malformed frame is disconnected (never half-read). Integers: `u64` is a safe integer
 * (< 2^53) as u64 LE; `id` is an etcd uint64 member or cluster ID (a bigint) as u64 LE; `varint`
 * is unsigned LEB128 of a safe integer. Frame kinds:
 *
 * - Hello (dialer → acceptor, first frame): [magic u32][version u16][cluster id][from id][to id]
 * - Welcome (acceptor → dialer): [version u16][cluster id][member id]
 * - Refuse (either way, then the connection closes): [reason: UTF-8]
 * - Message: one Raft message without a snapshot (see `encodeMessageInto`).
 * - SnapBegin: [stream u32][message head][snapshot index u64][term u64][voters][learners][total u64]
 * - SnapChunk: [stream u32][bytes] — the snapshot data in order; the message is delivered when
 *   `total` bytes have arrived. Chunks are at most `snapshotChunkBytes`, so a snapshot never sits
 *   in one write buffer and heartbeats interleave with it.
 * - Request: [request u32][kind u8][body] — the side channel (transport.ts `PeerRequests`).
 * - Response: [request u32][status u8: 0 ok, 1 error][ok: body | error: code str, message str]
 *
 * A Raft message's node ids (from, to, and the snapshot's configuration) are the core's small
 * integers in memory and etcd member IDs on the wire: the codec maps them through `IdMap`.
 * Entries are written as [term u64][index u64][type u8][length u32][data]: the data is the
 * command encoded once by its proposer (node/commands.ts), copied as bytes, never re-encoded. A
 * decoded entry's data is a copy (`slice`) of its bytes, not a view of the frame: stored values
 * keep their entry's data alive (node/commands.ts), and a view would pin the whole frame.
 */
import {
  type ConfState,
  type Entry,
  EntryType,
  type Message,
  MessageType,
  type NodeId,
  type Snapshot,
} from '../consensus/types.js';

/** The peer protocol version this build speaks (in every handshake). */
export const peerProtocolVersion = 1;
/** First bytes of a Hello: "CNCL" (a stray client or another protocol fails at once). */
export const helloMagic = 0x4c434e43;
/** The largest frame accepted (an Append carries at most ~1 MiB of entries, or one larger entry). */
export const frameBytesMax = 64 * 1024 * 1024;
/** Snapshot data per SnapChunk frame. */
export const snapshotChunkBytes = 1024 * 1024;
/** The largest snapshot a member accepts from a peer (it is assembled in one buffer to restore). */
export const snapshotBytesMax = 2 * 1024 * 1024 * 1024 - 1;
/** Entries per message and bytes of a context accepted from a peer (a bound on decoder work). */
export const entriesPerMessageMax = 1_000_000;
export const contextBytesMax = 64 * 1024;

export const FrameKind = {
  Hello: 1,
  Welcome: 2,
  Refuse: 3,
  Message: 4,
  SnapBegin: 5,
  SnapChunk: 6,
  Request: 7,
  Response: 8,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** Bytes before a frame's body: length u32 + kind u8. */
export const frameHeadBytes = 5;

const typeCodes: readonly MessageType[] = [
  MessageType.Append,
  MessageType.AppendResp,
  MessageType.Vote,
  MessageType.VoteResp,
  MessageType.PreVote,
  MessageType.PreVoteResp,
  MessageType.Heartbeat,
  MessageType.HeartbeatResp,
  MessageType.Snapshot,
  MessageType.SnapStatus,
  MessageType.Unreachable,
  MessageType.TimeoutNow,
  MessageType.Propose,
  MessageType.ReadIndex,
  MessageType.ReadIndexResp,
  MessageType.TransferLeader,
];
const codeOfType = new Map<MessageType, number>(typeCodes.map((t, i) => [t, i]));

/** Maps the core's node ids to wire member IDs and back (`undefined`: not a known member). */
export interface IdMap {
  toWire(id: NodeId): bigint | undefined;
  fromWire(id: bigint): NodeId | undefined;
}

export class FrameError extends Error {
  override readonly name = 'FrameError';
}

const EMPTY = new Uint8Array(0);

/** A plain `Uint8Array` copy (a Buffer's `slice` is a view; this must not be). */
const copy = (v: Uint8Array): Uint8Array => new Uint8Array(v);

// ---------------------------------------------------------------------------------------------
// Writing

/** Bytes of a message head: type, from, to, term, index, logTerm, commit, reject, hint, hintTerm. */
const messageHeadFixedBytes = 1 + 8 * 2 + 8 * 4 + 1 + 8 * 2;
const entryHeadBytes = 8 + 8 + 1 + 4;

function varintBytes(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

/** The encoded size of a message's head and entries (not its snapshot). */
export function messageBytes(m: Message): number {
  let n = messageHeadFixedBytes + varintBytes(m.context.length) + m.context.length;
  n += varintBytes(m.entries.length);
  for (const e of m.entries) n += entryHeadBytes + e.data.length;
  return n;
}

/** A cursor over a buffer being written. */
export class Writer {
  readonly buf: Buffer;
  p: number;
  constructor(buf: Buffer, p = 0) {
    this.buf = buf;
    this.p = p;
  }
  u8(v: number): void {
    this.buf[this.p++] = v;
  }
  u16(v: number): void {
    this.buf.writeUInt16LE(v, this.p);
    this.p += 2;
  }
  u32(v: number): void {
    this.buf.writeUInt32LE(v >>> 0, this.p);
    this.p += 4;
  }
  u64(v: number): void {
    this.buf.writeUInt32LE(v >>> 0, this.p);
    this.buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), this.p + 4);
    this.p += 8;
  }
  id(v: bigint): void {
    this.buf.writeBigUInt64LE(v, this.p);
    this.p += 8;
  }
  varint(v: number): void {
    while (v >= 0x80) {
      this.buf[this.p++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.p++] = v;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.p);
    this.p += b.length;
  }
  /** Starts a frame: reserves its length, writes its kind; `end(start)` fills the length in. */
  begin(kind: FrameKind): number {
    const start = this.p;
    this.p += 4;
    this.u8(kind);
    return start;
  }
  end(start: number): void {
    this.buf.writeUInt32LE(this.p - start - 4, start);
  }
}

function wireId(ids: IdMap, id: NodeId): bigint {
  if (id === 0) return 0n;
  const w = ids.toWire(id);
  if (w === undefined) throw new FrameError(`node ${id} has no member ID`);
  return w;
}

function writeHead(w: Writer, m: Message, ids: IdMap): void {
  const code = codeOfType.get(m.type);
  if (code === undefined) throw new FrameError(`unknown message type ${String(m.type)}`);
  w.u8(code);
  w.id(wireId(ids, m.from));
  w.id(wireId(ids, m.to));
  w.u64(m.term);
  w.u64(m.index);
  w.u64(m.logTerm);
  w.u64(m.commit);
  w.u8(m.reject ? 1 : 0);
  w.u64(m.rejectHint);
  w.u64(m.hintTerm);
  w.varint(m.context.length);
  w.bytes(m.context);
}

/** Writes a Message frame (the snapshot, if any, is not included: see `writeSnapBegin`). */
export function encodeMessageInto(w: Writer, m: Message, ids: IdMap): void {
  const start = w.begin(FrameKind.Message);
  writeHead(w, m, ids);
  w.varint(m.entries.length);
  for (const e of m.entries) {
    w.u64(e.term);
    w.u64(e.index);
    w.u8(e.type);
    w.u32(e.data.length);
    w.bytes(e.data);
  }
  w.end(start);
}

/** The size of a Message frame for `m` (head included). */
export function messageFrameBytes(m: Message): number {
  return frameHeadBytes + messageBytes(m);
}

function confStateBytes(c: ConfState): number {
  return (
    varintBytes(c.voters.length) +
    8 * c.voters.length +
    varintBytes(c.learners.length) +
    8 * c.learners.length
  );
}

/** A SnapBegin frame: the Snap message's head and the snapshot's metadata and size. */
export function encodeSnapBegin(stream: number, m: Message, ids: IdMap): Buffer {
  const s = m.snapshot;
  if (!s) throw new FrameError('a snapshot message without a snapshot');
  const c = s.meta.confState;
  const size =
    frameHeadBytes +
    4 +
    messageHeadFixedBytes +
    varintBytes(m.context.length) +
    m.context.length +
    16 +
    confStateBytes(c) +
    8;
  const w = new Writer(Buffer.allocUnsafe(size));
  const start = w.begin(FrameKind.SnapBegin);
  w.u32(stream);
  writeHead(w, m, ids);
  w.u64(s.meta.index);
  w.u64(s.meta.term);
  for (const list of [c.voters, c.learners]) {
    w.varint(list.length);
    for (const id of list) w.id(wireId(ids, id));
  }
  w.u64(s.data.length);
  w.end(start);
  return w.buf.subarray(0, w.p);
}

export function encodeSnapChunk(stream: number, data: Uint8Array): Buffer {
  const w = new Writer(Buffer.allocUnsafe(frameHeadBytes + 4 + data.length));
  const start = w.begin(FrameKind.SnapChunk);
  w.u32(stream);
  w.bytes(data);
  w.end(start);
  return w.buf;
}

export interface Hello {
  readonly version: number;
  readonly clusterId: bigint;
  readonly from: bigint;
  readonly to: bigint;
}

export function encodeHello(h: Hello): Buffer {
  const w = new Writer(Buffer.allocUnsafe(frameHeadBytes + 4 + 2 + 24));
  const start = w.begin(FrameKind.Hello);
  w.u32(helloMagic);
  w.u16(h.version);
  w.id(h.clusterId);
  w.id(h.from);
  w.id(h.to);
  w.end(start);
  return w.buf;
}

export interface Welcome {
  readonly version: number;
  readonly clusterId: bigint;
  readonly memberId: bigint;
}

export function encodeWelcome(h: Welcome): Buffer {
  const w = new Writer(Buffer.allocUnsafe(frameHeadBytes + 2 + 16));
  const start = w.begin(FrameKind.Welcome);
  w.u16(h.version);
  w.id(h.clusterId);
  w.id(h.memberId);
  w.end(start);
  return w.buf;
}

export function encodeRefuse(reason: string): Buffer {
  const r = Buffer.from(reason.slice(0, 1024), 'utf8');
  const w = new Writer(Buffer.allocUnsafe(frameHeadBytes + r.length));
  const start = w.begin(FrameKind.Refuse);
  w.bytes(r);
  w.end(start);
  return w.buf;
}

export function encodeRequest(id: number, kind: number, body: Uint8Array): Buffer {
  const w = new Writer(Buffer.allocUnsafe(frameHeadBytes + 5 + body.length));
  const start = w.begin(FrameKind.Request);
  w.u32(id);
  w.u8(kind);
  w.bytes(body);
  w.end(start);
  return w.buf;
}

export type ResponseBody =
  | { readonly ok: true; readonly body: Uint8Array }
  | { readonly ok: false; readonly code: string; readonly message: string };

export function encodeResponse(id: number, r: ResponseBody): Buffer {
  const parts = r.ok
    ? [r.body]
    : [Buffer.from(r.code.slice(0, 64), 'utf8'), Buffer.from(r.message.slice(0, 4096), 'utf8')];
  let size = frameHeadBytes + 5;
  for (const p of parts) size += r.ok ? p.length : varintBytes(p.length) + p.length;
  const w = new Writer(Buffer.allocUnsafe(size));
  const start = w.begin(FrameKind.Response);
  w.u32(id);
  w.u8(r.ok ? 0 : 1);
  for (const p of parts) {
    if (!r.ok) w.varint(p.length);
    w.bytes(p);
  }
  w.end(start);
  return w.buf;
}

// ---------------------------------------------------------------------------------------------
// Reading

/** A cursor over one frame's body; every read checks bounds and throws `FrameError`. */
export class Reader {
  readonly b: Uint8Array;
  readonly #dv: DataView;
  p: number;
  constructor(b: Uint8Array, p = 0) {
    this.b = b;
    this.#dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.p = p;
  }
  #need(n: number): void {
    if (this.p + n > this.b.length)
      throw new FrameError(`frame truncated at byte ${this.p} (needs ${n} more)`);
  }
  u8(): number {
    this.#need(1);
    return this.b[this.p++]!;
  }
  u16(): number {
    this.#need(2);
    const v = this.#dv.getUint16(this.p, true);
    this.p += 2;
    return v;
  }
  u32(): number {
    this.#need(4);
    const v = this.#dv.getUint32(this.p, true);
    this.p += 4;
    return v;
  }
  u64(): number {
    this.#need(8);
    const lo = this.#dv.getUint32(this.p, true);
    const hi = this.#dv.getUint32(this.p + 4, true);
    if (hi >= 0x20_0000) throw new FrameError(`an integer beyond 2^53 at byte ${this.p}`);
    this.p += 8;
    return hi * 0x1_0000_0000 + lo;
  }
  id(): bigint {
    this.#need(8);
    const v = this.#dv.getBigUint64(this.p, true);
    this.p += 8;
    return v;
  }
  varint(): number {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 0x80;
      if (mul > 2 ** 49) throw new FrameError(`varint too long at byte ${this.p}`);
    }
  }
  /** A view of the next `n` bytes (callers copy what they keep). */
  view(n: number): Uint8Array {
    this.#need(n);
    const out = this.b.subarray(this.p, this.p + n);
    this.p += n;
    return out;
  }
  rest(): Uint8Array {
    return this.view(this.b.length - this.p);
  }
  get done(): boolean {
    return this.p === this.b.length;
  }
}

function nodeId(ids: IdMap, wire: bigint, what: string): NodeId {
  if (wire === 0n) return 0;
  const id = ids.fromWire(wire);
  if (id === undefined) throw new FrameError(`${what}: member ${wire.toString(16)} is not in this cluster`);
  return id;
}

type MessageHead = Omit<Message, 'entries' | 'snapshot'>;

function readHead(r: Reader, ids: IdMap): MessageHead {
  const type = typeCodes[r.u8()];
  if (type === undefined) throw new FrameError('unknown message type code');
  const from = nodeId(ids, r.id(), 'from');
  const to = nodeId(ids, r.id(), 'to');
  const term = r.u64();
  const index = r.u64();
  const logTerm = r.u64();
  const commit = r.u64();
  const reject = r.u8() !== 0;
  const rejectHint = r.u64();
  const hintTerm = r.u64();
  const n = r.varint();
  if (n > contextBytesMax) throw new FrameError(`context of ${n} bytes (max ${contextBytesMax})`);
  const context = n === 0 ? EMPTY : copy(r.view(n));
  return { type, from, to, term, index, logTerm, commit, reject, rejectHint, hintTerm, context };
}

/** Decodes a Message frame's body (after the kind byte). */
export function decodeMessage(body: Uint8Array, ids: IdMap): Message {
  const r = new Reader(body);
  const head = readHead(r, ids);
  const n = r.varint();
  if (n > entriesPerMessageMax)
    throw new FrameError(`${n} entries in one message (max ${entriesPerMessageMax})`);
  const entries: Entry[] = [];
  for (let i = 0; i < n; i++) {
    const term = r.u64();
    const index = r.u64();
    const type = r.u8();
    if (type !== EntryType.Normal && type !== EntryType.ConfChange)
      throw new FrameError(`unknown entry type ${type}`);
    const len = r.u32();
    entries.push({ term, index, type, data: len === 0 ? EMPTY : copy(r.view(len)) });
  }
  if (!r.done) throw new FrameError(`${body.length - r.p} bytes after a message`);
  return { ...head, entries };
}

export interface SnapBegin {
  readonly stream: number;
  readonly head: MessageHead;
  readonly meta: Snapshot['meta'];
  readonly total: number;
}

export function decodeSnapBegin(body: Uint8Array, ids: IdMap): SnapBegin {
  const r = new Reader(body);
  const stream = r.u32();
  const head = readHead(r, ids);
  const index = r.u64();
  const term = r.u64();
  const lists: NodeId[][] = [];
  for (let l = 0; l < 2; l++) {
    const n = r.varint();
    if (n > 1024) throw new FrameError(`a configuration of ${n} members`);
    const list: NodeId[] = [];
    for (let i = 0; i < n; i++) list.push(nodeId(ids, r.id(), 'configuration'));
    lists.push(list);
  }
  const total = r.u64();
  if (total > snapshotBytesMax)
    throw new FrameError(`a snapshot of ${total} bytes (max ${snapshotBytesMax})`);
  if (!r.done) throw new FrameError('bytes after a snapshot header');
  return {
    stream,
    head,
    meta: { index, term, confState: { voters: lists[0]!, learners: lists[1]! } },
    total,
  };
}

export function decodeHello(body: Uint8Array): Hello {
  const r = new Reader(body);
  if (r.u32() !== helloMagic) throw new FrameError('not a Conclave peer (bad hello magic)');
  const h = { version: r.u16(), clusterId: r.id(), from: r.id(), to: r.id() };
  if (!r.done) throw new FrameError('bytes after a hello');
  return h;
}

export function decodeWelcome(body: Uint8Array): Welcome {
  const r = new Reader(body);
  const h = { version: r.u16(), clusterId: r.id(), memberId: r.id() };
  if (!r.done) throw new FrameError('bytes after a welcome');
  return h;
}

export function decodeResponse(body: Uint8Array): { id: number; response: ResponseBody } {
  const r = new Reader(body);
  const id = r.u32();
  const status = r.u8();
  if (status === 0) return { id, response: { ok: true, body: copy(r.rest()) } };
  if (status !== 1) throw new FrameError(`unknown response status ${status}`);
  const code = Buffer.from(r.view(r.varint())).toString('utf8');
  const message = Buffer.from(r.view(r.varint())).toString('utf8');
  return { id, response: { ok: false, code, message } };
}

/**
 * Splits a byte stream into frames. `push` takes each chunk the socket reads and calls `onFrame`
 * with every complete frame's kind and body; a body is a view valid only during the call (of the
 * chunk, or of one buffer the frame was assembled in: a frame spread over chunks is copied once,
 * into a buffer of its exact size, never re-concatenated per chunk).
 */
export class FrameReader {
  readonly #onFrame: (kind: number, body: Uint8Array) => void;
  readonly #head = Buffer.alloc(frameHeadBytes);
  #headFill = 0;
  #frame: Buffer | undefined;
  #frameFill = 0;
  #kind = 0;

  constructor(onFrame: (kind: number, body: Uint8Array) => void) {
    this.#onFrame = onFrame;
  }

  push(chunk: Uint8Array): void {
    let p = 0;
    while (p < chunk.length) {
      if (this.#frame) {
        const n = Math.min(this.#frame.length - this.#frameFill, chunk.length - p);
        this.#frame.set(chunk.subarray(p, p + n), this.#frameFill);
        this.#frameFill += n;
        p += n;
        if (this.#frameFill === this.#frame.length) {
          const f = this.#frame;
          this.#frame = undefined;
          this.#onFrame(this.#kind, f);
        }
        continue;
      }
      // Fast path: a whole frame inside the chunk, read in place.
      if (this.#headFill === 0 && chunk.length - p >= frameHeadBytes) {
        const len = readLength(chunk, p);
        if (chunk.length - p - 4 >= len) {
          this.#onFrame(chunk[p + 4]!, chunk.subarray(p + 5, p + 4 + len));
          p += 4 + len;
          continue;
        }
      }
      const n = Math.min(frameHeadBytes - this.#headFill, chunk.length - p);
      this.#head.set(chunk.subarray(p, p + n), this.#headFill);
      this.#headFill += n;
      p += n;
      if (this.#headFill < frameHeadBytes) return;
      this.#headFill = 0;
      const len = readLength(this.#head, 0);
      this.#kind = this.#head[4]!;
      if (len === 1) this.#onFrame(this.#kind, new Uint8Array(0));
      else {
        this.#frame = Buffer.allocUnsafe(len - 1);
        this.#frameFill = 0;
      }
    }
  }
}

function readLength(b: Uint8Array, p: number): number {
  const len = (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16)) + b[p + 3]! * 0x100_0000;
  if (len < 1 || len > frameBytesMax) throw new FrameError(`a frame of ${len} bytes (1..${frameBytesMax})`);
  return len;
}
