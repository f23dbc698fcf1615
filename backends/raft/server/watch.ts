/**
 * The Watch service: one bidirectional stream multiplexes many watches (etcd's
 * api/v3rpc/watch.go), each served by a watch of the member's KV.
 *
 * Wire behaviour kept from etcd 3.4:
 * - Requests on a stream are handled in order, and each create is answered by a `created` response
 *   before any event of that watch; clients match created responses to their creates by order.
 *   IDs are per stream, from 0 upwards, unless the client picks one (`watch_id` != 0); a taken
 *   one is refused "mvcc: duplicate watch ID provided on the WatchStream".
 * - An empty key means "\0"; a range end of "\0" means every key from `key`; a range end not
 *   after the key is refused "mvcc: watcher range is empty". A refused create is answered with
 *   `created` and `canceled` both set, watch ID -1 and the reason.
 * - A start revision that was compacted: `created`, then `canceled` with `compact_revision`.
 * - History replayed from a past start revision comes in responses of up to `watchBatchMaxRevs`
 *   revisions each, the header revision the last one covered (etcd's syncWatchers); live events
 *   come one response per revision.
 * - Cancel of an unknown ID: no answer. Cancel of a live one: `canceled`, then nothing more for it.
 * - Progress request: one response with watch ID -1 at the current revision, once every watch of
 *   the stream has delivered everything up to it (later etcd releases wait the same way; 3.4.23
 *   answered at once, which could claim a revision whose events were still queued).
 * - `progress_notify`: every `progressNotifyIntervalMs` (etcd: 10 min), a watch that sent nothing
 *   since the last tick and is caught up gets an empty response at the current revision.
 * - `fragment`: a response larger than max-request-bytes + 512 KiB is split, each part but the
 *   last flagged `fragment` (etcd's sendFragments).
 *
 * Slow consumers: past `watchSendBytesMax` bytes handed to grpc-js and not yet written to HTTP/2
 * (the client's flow-control window is full), every watch of the stream pauses until half are;
 * meanwhile each watch's KV buffer fills to
 * `watchBufferBatchesMax` batches, and a watch that overflows it is resynced from history at its
 * first undelivered revision — etcd's "victim"/unsynced catch-up — or canceled with
 * `compact_revision` when that revision was compacted meanwhile. Memory per stream is bounded by
 * watches × buffer, never by how far behind the client is.
 *
 * Encoding: etcd's wire format has one watch ID per response, so an event that 100 watches of a
 * stream see is sent in 100 responses. Each event is encoded once (the hub hands every watcher of
 * a revision the same event object; `encodedEvent`), each revision's header once per stream, and
 * a response is those bytes behind its watch ID (`watchResponseBytes`), written to grpc-js
 * pre-encoded (`watchResponseSerializer` passes bytes through).
 */
import { status as grpcStatus, type ServerDuplexStream } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { num, root } from '../../../src/protocol/codec.js';
import type { Watch, WatchBatch, WatchEvent, WatchOptions } from '../../../src/types.js';
import { type OpenStream, requiresLeader, type ServerContext } from './context.js';
import { etcdErrors, type GrpcFailure } from './errors.js';
import { bytesOf, eventToPb } from './wire.js';

/**
 * Revisions of replayed history per watch response at most: etcd's watchBatchMaxRevs
 * (mvcc/watcher_group.go). A watch from a past revision gets its history in responses of up to
 * this many revisions, as from etcd, not one response per revision.
 */
export const watchBatchMaxRevs = 1000;

/** etcd's grpcOverheadBytes: a fragmented watch response part stays under max-request-bytes + this. */
export const grpcOverheadBytes = 512 * 1024;

interface PbWatchCreate {
  key?: Uint8Array;
  rangeEnd?: Uint8Array;
  startRevision?: unknown;
  progressNotify?: boolean;
  filters?: number[];
  prevKv?: boolean;
  watchId?: unknown;
  fragment?: boolean;
}
export interface PbWatchRequest {
  createRequest?: PbWatchCreate | null;
  cancelRequest?: { watchId?: unknown } | null;
  progressRequest?: object | null;
}

/** Sizes a watch response for fragmenting (the encoder of WatchResponse). */
export type SizeOf = (msg: object) => number;

class ServedWatch {
  readonly id: number;
  readonly key: Uint8Array;
  readonly options: WatchOptions;
  readonly progressNotify: boolean;
  readonly fragment: boolean;
  /** First revision not yet delivered: where a resync starts. */
  nextRev: number;
  inner: Watch | undefined;
  /** Waiting for the next batch with nothing held back: everything applied so far was sent. */
  idle = false;
  /** Sent events since the last progress tick (etcd's `progress[id] = false`). */
  sentSinceTick = false;
  canceled = false;
  /** Resyncs from history after the KV buffer overflowed (for tests and diagnostics). */
  resyncs = 0;

  constructor(id: number, key: Uint8Array, options: WatchOptions, c: PbWatchCreate, startRev: number) {
    this.id = id;
    this.key = key;
    this.options = options;
    this.progressNotify = !!c.progressNotify;
    this.fragment = !!c.fragment;
    this.nextRev = startRev;
  }
}

export class WatchStream implements OpenStream {
  readonly requireLeader: boolean;
  readonly #ctx: ServerContext;
  readonly #call: ServerDuplexStream<PbWatchRequest, object>;
  readonly #sizeOf: SizeOf;
  readonly #watches = new Map<number, ServedWatch>();
  #nextId = 0;
  readonly #requests: PbWatchRequest[] = [];
  #handling = false;
  #readPaused = false;
  /** Bytes handed to grpc-js and not yet taken by HTTP/2 (bounded by `watchSendBytesMax`). */
  #queuedBytes = 0;
  /** Set while more than `watchSendBytesMax` bytes are queued: senders wait until half are sent. */
  #drain: Promise<void> | undefined;
  /** Resolves `#drain`: when the queue is half sent, or the stream closes (senders see `#done`). */
  #drained: (() => void) | undefined;
  #progressWanted = false;
  #done = false;

  constructor(ctx: ServerContext, call: ServerDuplexStream<PbWatchRequest, object>, sizeOf: SizeOf) {
    this.#ctx = ctx;
    this.#call = call;
    this.#sizeOf = sizeOf;
    this.requireLeader = requiresLeader(call.metadata);
    writeBuffered(call);
    call.on('data', (req: PbWatchRequest) => this.#onRequest(req));
    // A client that half-closes keeps receiving (etcd's recvLoop ends, the send loop does not).
    call.on('end', () => undefined);
    call.on('cancelled', () => this.#close());
    call.on('error', () => this.#close());
    call.on('close', () => this.#close());
  }

  /** Watches open on this stream (tests and diagnostics). */
  get size(): number {
    return this.#watches.size;
  }

  /** Resyncs done on this stream's watches so far (tests and diagnostics). */
  get resyncs(): number {
    let n = 0;
    for (const w of this.#watches.values()) n += w.resyncs;
    return n;
  }

  fail(f: GrpcFailure): void {
    if (this.#done) return;
    this.#close();
    this.#call.emit('error', { code: f.code, details: f.details });
  }

  #close(): void {
    if (this.#done) return;
    this.#done = true;
    this.#ctx.streams.delete(this);
    for (const w of this.#watches.values()) {
      w.canceled = true;
      void w.inner?.close();
    }
    this.#watches.clear();
    this.#requests.length = 0;
    this.#drain = undefined;
    this.#drained?.();
  }

  #onRequest(req: PbWatchRequest): void {
    if (this.#done) return;
    this.#requests.push(req);
    if (!this.#readPaused && this.#requests.length >= this.#ctx.o.streamRequestsPendingMax) {
      // Stop reading: HTTP/2 flow control pushes back on the client.
      this.#readPaused = true;
      this.#call.pause();
    }
    if (!this.#handling) void this.#handleAll();
  }

  async #handleAll(): Promise<void> {
    this.#handling = true;
    try {
      while (!this.#done) {
        const req = this.#requests.shift();
        if (!req) break;
        if (this.#readPaused && this.#requests.length < this.#ctx.o.streamRequestsPendingMax / 2) {
          this.#readPaused = false;
          this.#call.resume();
        }
        if (req.createRequest) await this.#create(req.createRequest);
        else if (req.cancelRequest) await this.#cancel(num(req.cancelRequest.watchId as never));
        else if (req.progressRequest) {
          this.#progressWanted = true;
          this.#maybeProgress();
        }
        // An empty request union: ignored, as etcd does.
      }
    } catch (err) {
      this.fail(this.#ctx.failure(err));
    } finally {
      this.#handling = false;
    }
  }

  /**
   * Hands `msg` (about `bytes` long) to grpc-js without waiting for it to be written, so the
   * watches of a stream do not take turns per message. Past `watchSendBytesMax` bytes not yet
   * taken by HTTP/2, senders wait until half of it is: a client that stops reading stalls its
   * stream's watches (which then buffer, and resync from history) at a bounded cost.
   *
   * Not the Writable's own back-pressure: grpc-js's high-water mark is 16 messages, and a watch
   * stream sends one message per watch per revision (etcd's wire format), so 100 watches on one
   * key would wait for 'drain' on every revision — each wait the whole queue written one message
   * at a time — and fall seconds behind at 100 writes/s.
   */
  async #send(msg: object, bytes = smallResponseBytes): Promise<void> {
    while (this.#drain) await this.#drain;
    if (this.#done) return;
    this.#queuedBytes += bytes;
    this.#call.write(msg, () => {
      this.#queuedBytes -= bytes;
      if (this.#drained && this.#queuedBytes <= this.#ctx.o.watchSendBytesMax / 2) {
        const resolve = this.#drained;
        this.#drain = undefined;
        this.#drained = undefined;
        resolve();
      }
    });
    if (this.#queuedBytes > this.#ctx.o.watchSendBytesMax && !this.#drain)
      this.#drain = new Promise<void>((resolve) => {
        this.#drained = resolve;
      });
  }

  /** `created` + `canceled` with watch ID -1: etcd's answer to a create it refused. */
  #refuse(reason: string): Promise<void> {
    return this.#send({
      header: this.#ctx.currentHeader(),
      watchId: -1,
      created: true,
      canceled: true,
      cancelReason: reason,
    });
  }

  async #create(c: PbWatchCreate): Promise<void> {
    const ctx = this.#ctx;
    let key = bytesOf(c.key);
    if (key.length === 0) key = ZERO;
    let end: Uint8Array | undefined = bytesOf(c.rangeEnd);
    if (end.length === 0) end = undefined;
    else if (end.length === 1 && end[0] === 0) end = ZERO;
    if (end !== undefined && end !== ZERO && Buffer.compare(key, end) >= 0)
      return this.#refuse('mvcc: watcher range is empty');
    // Auth enabled (or a token sent): read permission on the watched range (etcd's isWatchPermitted).
    const gate = ctx.authGate;
    if (gate?.active(this.#call)) {
      // etcd checks the range after turning an empty key into "\0"; its cancel reason is the Go
      // text of the rpctypes error: "rpc error: code = <code> desc = <text>".
      const denied = gate.check(this.#call, key, bytesOf(c.rangeEnd), false);
      if (denied)
        return this.#refuse(`rpc error: code = ${goCodeName(denied.code)} desc = ${denied.details}`);
    }
    const wanted = num(c.watchId as never);
    if (wanted !== 0 && this.#watches.has(wanted))
      return this.#refuse('mvcc: duplicate watch ID provided on the WatchStream');
    if (this.#watches.size >= ctx.o.watchesPerStreamMax)
      return this.#refuse(
        `etcdserver: too many watches on one stream (max ${ctx.o.watchesPerStreamMax}); open another stream`,
      );
    let id = wanted;
    if (id === 0) {
      while (this.#watches.has(this.#nextId)) this.#nextId++;
      id = this.#nextId++;
    }
    const options: WatchOptions = {
      bufferBatchesMax: ctx.o.watchBufferBatchesMax,
      replayBatchRevisionsMax: watchBatchMaxRevs,
    };
    if (end !== undefined) options.end = end;
    if (c.prevKv) options.prevKv = true;
    const filters = c.filters ?? [];
    if (filters.length > 0) {
      const f: ('noput' | 'nodelete')[] = [];
      for (const x of filters) {
        if (x === 0) f.push('noput');
        else if (x === 1) f.push('nodelete');
      }
      if (f.length > 0) options.filters = f;
    }
    // etcd: a start revision of 0 is the next revision. A negative one is passed on by etcd and
    // replays from the oldest revision kept (or is canceled as compacted): the same as 1 here.
    const asked = num(c.startRevision as never);
    const start = asked < 0 ? 1 : asked;
    const w = new ServedWatch(id, key, options, c, start);
    this.#watches.set(id, w);
    let inner: Watch;
    try {
      inner = ctx.backend.kv.watch(key, start > 0 ? { ...options, startRevision: start } : options);
    } catch (err) {
      this.#watches.delete(id);
      return this.#refuse(ctx.failure(err).details);
    }
    w.inner = inner;
    let registered: number;
    try {
      registered = await inner.ready;
    } catch (err) {
      if (ConclaveError.is(err, ErrorCode.Compacted)) {
        await this.#send({ header: ctx.currentHeader(), watchId: id || undefined, created: true });
        await this.#sendCompacted(w, err);
        return;
      }
      this.#watches.delete(id);
      if (w.canceled || this.#done) return;
      return this.#refuse(ctx.failure(err).details);
    }
    if (w.nextRev === 0) w.nextRev = registered + 1;
    await this.#send({ header: ctx.header(registered), watchId: id || undefined, created: true });
    void this.#run(w, inner);
  }

  async #sendCompacted(w: ServedWatch, err: ConclaveError): Promise<void> {
    this.#watches.delete(w.id);
    w.canceled = true;
    // etcd: the compacted response carries only the watch ID and the compact revision.
    await this.#send({
      header: this.#ctx.header(0),
      watchId: w.id || undefined,
      canceled: true,
      compactRevision: err.compactRevision ?? 0,
    });
  }

  async #cancel(id: number): Promise<void> {
    const w = this.#watches.get(id);
    if (!w) return;
    this.#watches.delete(id);
    w.canceled = true;
    await w.inner?.close();
    await this.#send({ header: this.#ctx.currentHeader(), watchId: id || undefined, canceled: true });
    this.#maybeProgress();
  }

  async #run(w: ServedWatch, first: Watch): Promise<void> {
    let inner = first;
    for (;;) {
      try {
        const it = inner[Symbol.asyncIterator]();
        for (;;) {
          w.idle = true;
          if (this.#progressWanted) this.#maybeProgress();
          const n = await it.next();
          w.idle = false;
          if (n.done || w.canceled || this.#done) return;
          const b = n.value;
          w.nextRev = b.revision + 1;
          if (b.events.length === 0) continue;
          await this.#sendBatch(w, b);
          if (w.canceled || this.#done) return;
        }
      } catch (caught) {
        let err = caught;
        w.idle = false;
        if (w.canceled || this.#done) return;
        if (ConclaveError.is(err, ErrorCode.WatchOverflow)) {
          // The stream fell behind: catch up from history, from the first undelivered revision.
          w.resyncs++;
          this.#ctx.watchResyncs++;
          try {
            inner = this.#ctx.backend.kv.watch(w.key, { ...w.options, startRevision: w.nextRev });
            w.inner = inner;
            continue;
          } catch (e) {
            err = e;
          }
        }
        if (ConclaveError.is(err, ErrorCode.Compacted)) {
          await this.#sendCompacted(w, err);
          return;
        }
        if (ConclaveError.is(err, ErrorCode.Closed)) {
          // The member is stopping: etcd ends the whole stream.
          this.fail(etcdErrors.stopped);
          return;
        }
        this.#watches.delete(w.id);
        w.canceled = true;
        await this.#send({
          header: this.#ctx.currentHeader(),
          watchId: w.id || undefined,
          canceled: true,
          cancelReason: this.#ctx.failure(err).details,
        });
        return;
      }
    }
  }

  /** The encoded header of the last revision sent on this stream (shared by its watches). */
  #header: { revision: number; raftTerm: number; bytes: Uint8Array } | undefined;

  #headerBytes(revision: number): Uint8Array {
    const h = this.#ctx.header(revision);
    const c = this.#header;
    if (c !== undefined && c.revision === revision && c.raftTerm === h.raftTerm) return c.bytes;
    const bytes = ResponseHeaderType.encode(h as unknown as Record<string, unknown>).finish();
    this.#header = { revision, raftTerm: h.raftTerm, bytes };
    return bytes;
  }

  async #sendBatch(w: ServedWatch, b: WatchBatch): Promise<void> {
    if (!w.fragment || b.events.length < 2) {
      const bytes = watchResponseBytes(this.#headerBytes(b.revision), w.id, b.events);
      if (bytes !== undefined) {
        w.sentSinceTick = true;
        return this.#send(bytes, bytes.length);
      }
    }
    const events = new Array<Record<string, unknown>>(b.events.length);
    for (let i = 0; i < events.length; i++) events[i] = eventToPb(b.events[i]!);
    const msg = { header: this.#ctx.header(b.revision), watchId: w.id || undefined, events };
    w.sentSinceTick = true;
    if (!w.fragment || events.length < 2) return this.#send(msg, batchBytes(b));
    const max = this.#ctx.o.maxRequestBytes + grpcOverheadBytes;
    const whole = this.#sizeOf(msg);
    if (whole < max) return this.#send(msg, whole);
    // etcd's sendFragments: fill each part until the next event would reach the limit.
    let i = 0;
    while (i < events.length) {
      const part: Record<string, unknown>[] = [events[i++]!];
      let size = this.#sizeOf({
        header: msg.header,
        watchId: w.id || undefined,
        events: part,
        fragment: true,
      });
      while (i < events.length) {
        const s = this.#sizeOf({ events: [events[i]!] });
        if (size + s >= max) break;
        part.push(events[i++]!);
        size += s;
      }
      const last = i >= events.length;
      await this.#send(
        last
          ? { header: msg.header, watchId: w.id || undefined, events: part }
          : { header: msg.header, watchId: w.id || undefined, events: part, fragment: true },
        size,
      );
      if (w.canceled || this.#done) return;
    }
  }

  /** Answers a pending progress request once every watch of the stream is caught up. */
  #maybeProgress(): void {
    // A watch being created is not idle until its loop starts, so it holds the answer back too.
    if (!this.#progressWanted || this.#done) return;
    for (const w of this.#watches.values()) if (!w.idle) return;
    this.#progressWanted = false;
    void this.#send({ header: this.#ctx.currentHeader(), watchId: -1 });
  }

  /** A progress tick (etcd's progressTicker): notify caught-up watches that sent nothing since. */
  progressTick(): void {
    if (this.#done) return;
    for (const w of this.#watches.values()) {
      if (!w.progressNotify) continue;
      if (!w.sentSinceTick && w.idle && !this.#drain)
        void this.#send({ header: this.#ctx.currentHeader(), watchId: w.id || undefined });
      w.sentSinceTick = false;
    }
  }
}

const ZERO = new Uint8Array([0]);

const ResponseHeaderType = root.lookupType('etcdserverpb.ResponseHeader');
const EventType = root.lookupType('etcdserverpb.Event');

/** Encoded `Event` messages, by the event object the hub shares among a revision's watchers. */
const encodedEvents = new WeakMap<WatchEvent, Uint8Array>();

/** An event's `Event` message bytes, encoded on first use (etcd's field layout: wire.ts `eventToPb`). */
export function encodedEvent(ev: WatchEvent): Uint8Array {
  let b = encodedEvents.get(ev);
  if (b === undefined) {
    b = EventType.encode(eventToPb(ev)).finish();
    encodedEvents.set(ev, b);
  }
  return b;
}

/** Bytes of a varint (non-negative, below 2^53). */
function varintBytes(n: number): number {
  let len = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function putVarint(buf: Uint8Array, at: number, n: number): number {
  while (n >= 128) {
    buf[at++] = (n % 128) | 128;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

/** Field tags of WatchResponse: header = 1 (bytes), watch_id = 2 (varint), events = 11 (bytes). */
const headerTag = (1 << 3) | 2;
const watchIdTag = (2 << 3) | 0;
const eventsTag = (11 << 3) | 2;

/**
 * A WatchResponse {header, watch_id, events} as protobuf bytes, from the header's bytes and each
 * event's (encoded once, `encodedEvent`); byte for byte what encoding the object would give
 * (fields in number order, watch ID 0 left out as proto3 does). Undefined for a watch ID that is
 * not a safe integer >= 0 (encoded the ordinary way).
 */
export function watchResponseBytes(
  header: Uint8Array,
  watchId: number,
  events: readonly WatchEvent[],
): Buffer | undefined {
  if (!Number.isSafeInteger(watchId) || watchId < 0) return undefined;
  const encoded = new Array<Uint8Array>(events.length);
  let size = 1 + varintBytes(header.length) + header.length;
  if (watchId !== 0) size += 1 + varintBytes(watchId);
  for (let i = 0; i < events.length; i++) {
    const e = encodedEvent(events[i]!);
    encoded[i] = e;
    size += 1 + varintBytes(e.length) + e.length;
  }
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  out[at++] = headerTag;
  at = putVarint(out, at, header.length);
  out.set(header, at);
  at += header.length;
  if (watchId !== 0) {
    out[at++] = watchIdTag;
    at = putVarint(out, at, watchId);
  }
  for (const e of encoded) {
    out[at++] = eventsTag;
    at = putVarint(out, at, e.length);
    out.set(e, at);
    at += e.length;
  }
  return out;
}

/**
 * The Watch stream's serializer: a response handed over as bytes (`watchResponseBytes`) is
 * written as is; any other is encoded as a WatchResponse.
 */
export function watchResponseSerializer(t: {
  encode(m: Record<string, unknown>): { finish(): Uint8Array };
}): (m: object) => Buffer {
  return (m) => {
    if (Buffer.isBuffer(m)) return m;
    const u = t.encode(m as Record<string, unknown>).finish();
    return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  };
}

/** What a response without events counts against `watchSendBytesMax` (header and IDs). */
const smallResponseBytes = 64;

/** About the encoded size of a batch's response (counted against `watchSendBytesMax`). */
function batchBytes(b: WatchBatch): number {
  let n = smallResponseBytes;
  for (const e of b.events) {
    n += 48 + e.kv.key.length + e.kv.value.length;
    if (e.prevKv) n += 48 + e.prevKv.key.length + e.prevKv.value.length;
  }
  return n;
}

type WriteCallback = (err?: Error | null) => void;
interface StreamWrites {
  _write(chunk: unknown, encoding: BufferEncoding, cb: WriteCallback): void;
  _writev?: ((chunks: { chunk: unknown; encoding: BufferEncoding }[], cb: WriteCallback) => void) | null;
  /** grpc-js's call under the stream (its BaseServerInterceptingCall), when it is one. */
  call?: GrpcCallInternals;
}

/** What `writeBuffered` uses of grpc-js's server call (1.x; absent in another shape: not used). */
interface GrpcCallInternals {
  serializeMessage(value: unknown): Buffer;
  handler?: { serialize?(value: unknown): Buffer };
}

/** Bytes of gRPC-framed messages handed to HTTP/2 in one write at most (larger queues: several). */
export const framedWriteBytesMax = 256 * 1024;

/**
 * Several responses already framed for the wire (each a gRPC length-prefixed message), handed to
 * grpc-js as one message: `writeBuffered`'s serializer passes its bytes through unframed.
 */
class Framed {
  constructor(readonly bytes: Buffer) {}
}

/**
 * Lets a server stream hand every message queued behind a write in flight to HTTP/2 at once.
 *
 * Why: grpc-js's server stream is a Node Writable with only `_write`, and `_write` calls back when
 * the HTTP/2 stream has taken the message off to the socket: the Writable passes one message at a
 * time, each a turn of the event loop. A watch stream sends one response per watch per revision
 * (etcd's wire format has one watch ID per response), so 100 watches on a key written 100 times a
 * second are 10,000 messages a second, one per loop turn: on a busy member that fell seconds
 * behind (watch delivery p50 ~2 s where etcd, whose gRPC server coalesces frames into one socket
 * write, delivers in ms). With `_writev` the Writable passes everything queued meanwhile in one
 * call, and the batch calls back when the last one has. Back-pressure is unchanged: `write` still
 * returns false past the Writable's high-water mark.
 *
 * On a grpc-js call (the stream's `call` has `serializeMessage`), the queued messages are framed
 * here (gRPC's 5-byte prefix: flag 0, no compression, as grpc-js writes it, then the length,
 * big-endian) and written to the HTTP/2 stream together, up to `framedWriteBytesMax` bytes per
 * write: one serializer call and one HTTP/2 stream write per batch instead of one per message
 * (100 watches on a key: one write per put instead of 100). The client reads the same messages
 * in the same order. Elsewhere each message goes to `_write` in turn.
 */
export function writeBuffered(call: object): void {
  const s = call as StreamWrites;
  if (typeof s._write !== 'function' || typeof s._writev === 'function') return;
  const inner = s.call;
  const serialize = inner?.handler?.serialize;
  const framing = typeof inner?.serializeMessage === 'function' && typeof serialize === 'function';
  if (framing) {
    const own = inner!.serializeMessage;
    inner!.serializeMessage = function (this: GrpcCallInternals, value: unknown): Buffer {
      return value instanceof Framed ? value.bytes : own.call(this, value);
    };
  }
  s._writev = (chunks, cb) => {
    let batches: unknown[] = [];
    if (framing) {
      let parts: Buffer[] = [];
      let bytes = 0;
      const close = (): void => {
        if (parts.length > 0) batches.push(new Framed(Buffer.concat(parts, bytes)));
        parts = [];
        bytes = 0;
      };
      try {
        for (const c of chunks) {
          const body = serialize!.call(inner!.handler, c.chunk);
          const head = Buffer.allocUnsafe(5);
          head[0] = 0;
          head.writeUInt32BE(body.byteLength, 1);
          if (bytes > 0 && bytes + 5 + body.byteLength > framedWriteBytesMax) close();
          parts.push(head, body);
          bytes += 5 + body.byteLength;
        }
        close();
      } catch {
        // A message that does not serialize: one at a time, so grpc-js answers it as it does.
        batches = chunks.map((c) => c.chunk);
      }
    } else for (const c of chunks) batches.push(c.chunk);
    let left = batches.length;
    let failed = false;
    const one: WriteCallback = (err) => {
      if (failed) return;
      if (err) {
        failed = true;
        cb(err);
      } else if (--left === 0) cb();
    };
    for (const b of batches) s._write.call(s, b, chunks[0]!.encoding, one);
  };
}

/** A gRPC status code as grpc-go's codes.Code.String() names it (PermissionDenied, …). */
function goCodeName(code: number): string {
  const n = (grpcStatus as unknown as Record<number, string>)[code] ?? String(code);
  return n
    .toLowerCase()
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');
}
