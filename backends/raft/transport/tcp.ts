/**
 * The peer transport of `conclave serve`: Raft messages and side-channel requests between
 * members over plain TCP (frames: codec.ts).
 *
 * Design (etcd's rafthttp keeps long-lived streams per peer for the same reasons):
 * - One long-lived connection per peer pair and direction. A member dials each peer and sends its
 *   messages (and its side-channel requests) on that connection; it receives on the connections
 *   its peers dialed (and answers requests on them). Each direction has one writer, so no
 *   ordering or tie-breaking between simultaneous dials is needed, and a slow link in one
 *   direction never holds up the other.
 * - The dialer opens with Hello {protocol version, cluster ID, its member ID, the member ID it
 *   expects}; the acceptor answers Welcome or Refuse. A peer of another cluster, an unknown
 *   member, or a version this build does not speak is refused with one log line on each side, and
 *   the dialer waits `refusedRetryMs` before trying again (a misconfigured peer is not a storm).
 * - Batching: `send` only queues; one microtask later every peer's queue is encoded into one
 *   buffer and written with one socket write (`TCP_NODELAY`: Nagle with delayed ACKs would add
 *   tens of ms to every commit round). Consecutive forwarded proposals to one peer are merged into
 *   one message.
 * - Bounds: a peer's queue holds at most `queuedMessagesMax` messages / `queuedBytesMax` bytes, and
 *   nothing more is written while the socket holds `socketBacklogBytesMax` unsent bytes; beyond
 *   that, and while a peer is unreachable, messages are dropped and counted (Raft retransmits).
 *   The member is told a peer is unreachable (an `Unreachable` message), as etcd reports
 *   `ReportUnreachable`, so the leader probes it instead of streaming appends into the void.
 * - Reconnect: exponential backoff from `reconnectDelayMsMin` to `reconnectDelayMsMax`, each delay
 *   jittered to 50–100 % so that members restarted together do not dial in lockstep; a link in
 *   backoff dials at once when its peer dials in (the peer is back: `PeerLink.peerIsUp`).
 * - Snapshots: streamed as SnapChunk frames of `snapshotChunkBytes`, one chunk in the socket at a
 *   time, interleaved with the peer's other messages. When the last chunk is written the member
 *   is told `SnapStatus` ok; a broken connection reports it failed (etcd's ReportSnapshot).
 * - Side channel (`PeerRequests`): numeric request ids, one deadline sweep per
 *   `requestSweepMs` (no timer per request), at most `pendingRequestsMax` waiting.
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { msg } from '../consensus/raft.js';
import { type Entry, type Message, MessageType, type NodeId } from '../consensus/types.js';
import {
  decodeHello,
  decodeMessage,
  decodeResponse,
  decodeSnapBegin,
  decodeWelcome,
  encodeHello,
  encodeMessageInto,
  encodeRefuse,
  encodeRequest,
  encodeResponse,
  encodeSnapBegin,
  encodeSnapChunk,
  encodeWelcome,
  FrameError,
  FrameKind,
  FrameReader,
  type IdMap,
  messageFrameBytes,
  peerProtocolVersion,
  type ResponseBody,
  type SnapBegin,
  snapshotChunkBytes,
  Writer,
} from './codec.js';
import type { PeerRequests, Transport } from './transport.js';

/** Messages queued for one peer between flushes (beyond: dropped and counted). */
export const queuedMessagesMax = 8192;
/** Bytes queued for one peer between flushes. */
export const queuedBytesMax = 64 * 1024 * 1024;
/** Unsent bytes a peer's socket may hold before new messages to it are dropped. */
export const socketBacklogBytesMax = 32 * 1024 * 1024;
/** Reconnect backoff bounds (each delay jittered to 50–100 %). */
export const reconnectDelayMsMin = 50;
export const reconnectDelayMsMax = 2000;
/** The wait before dialing again a peer that refused the handshake. */
export const refusedRetryMs = 5000;
/** A connection that has not completed its handshake within this is closed. */
export const handshakeTimeoutMs = 5000;
/** Side-channel requests waiting for an answer, per transport. */
export const pendingRequestsMax = 10_000;
/** Side-channel requests a member serves at once per inbound connection. */
export const servingRequestsMax = 1024;
/**
 * Inbound connections held at once (peers dial one each; the rest are strays or reconnects that
 * have not completed their handshake yet). Beyond it new connections are closed at once.
 */
export const inboundConnectionsMax = 64;
/** How often request deadlines are checked. */
export const requestSweepMs = 50;

/** The logger shape the transport writes events to (pino's, and anything like it). */
export interface TransportLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface TcpPeer {
  readonly nodeId: NodeId;
  readonly memberId: bigint;
  readonly host: string;
  readonly port: number;
}

export interface TcpTransportOptions {
  readonly clusterId: bigint;
  readonly nodeId: NodeId;
  readonly memberId: bigint;
  /** Every other member of the cluster. */
  readonly peers: readonly TcpPeer[];
  /** Where to accept peer connections (the first of `--listen-peer-urls`). */
  readonly listen: { readonly host: string; readonly port: number };
  /**
   * The other `--listen-peer-urls`: each accepts peer connections exactly as `listen` does (etcd
   * serves its peer handler on every listen peer URL, embed/etcd.go configurePeerListeners);
   * peers dial the advertised URLs, so these are for operators' networks (several interfaces).
   */
  readonly listenMore?: readonly { readonly host: string; readonly port: number }[];
  readonly log: TransportLogger;
  /** For backoff jitter (default Math.random). */
  readonly random?: () => number;
  /** The protocol version announced (default `peerProtocolVersion`; tests announce others). */
  readonly version?: number;
  /** TLS on peer connections (`https://` peer URLs; server/tls.ts `peerTls`); plain TCP without. */
  readonly tls?: PeerTls;
  /** Members removed from the cluster (refused as removed at the handshake). */
  readonly removed?: readonly bigint[];
  /**
   * A peer refused this member's connection: `removed` when it says this member was removed from
   * the cluster, `cluster` when it belongs to another cluster (etcd exits in both cases).
   */
  readonly onRefused?: (kind: 'removed' | 'cluster', reason: string) => void;
}

/**
 * The TLS seam: a server that completes (and on failure logs and closes) the TLS handshake before
 * handing a verified socket over, and a dialer whose socket emits 'secureConnect' once verified.
 */
export interface PeerTls {
  createServer(what: string, onSecure: (s: Socket) => void): Server;
  connect(host: string, port: number): Socket;
}

/** What a member answers a removed member that dials it (etcd: "the member has been permanently removed from the cluster"). */
export const removedRefusal = 'the member has been permanently removed from the cluster';

/** The pseudo-peer of a discovery connection: it may only send requests (the member answers only `Members`). */
const discoveryPeer: TcpPeer = Object.freeze({ nodeId: 0, memberId: 0n, host: '', port: 0 });

export interface PeerStats {
  sentMessages: number;
  droppedMessages: number;
  receivedMessages: number;
  writes: number;
  connects: number;
  refusals: number;
  /** Snapshots streamed to the peer completely. */
  snapshotsSent: number;
  /** Bytes written to the peer and read from it, on either connection (etcd_network_peer_*_bytes_total). */
  sentBytes: number;
  receivedBytes: number;
}

type RequestHandler = (from: NodeId, kind: number, body: Uint8Array) => Promise<Uint8Array>;

interface PendingRequest {
  readonly to: NodeId;
  readonly deadline: number;
  resolve(b: Uint8Array): void;
  reject(e: unknown): void;
}

const hex = (id: bigint) => id.toString(16);

export class TcpTransport implements Transport, PeerRequests {
  readonly #o: TcpTransportOptions;
  readonly #ids: IdMap;
  readonly #links = new Map<NodeId, PeerLink>();
  readonly #byMember = new Map<bigint, TcpPeer>();
  readonly #inbound = new Set<InboundConn>();
  /** One server per listen address: `listen` first, then `listenMore`. */
  readonly #servers: Server[];
  #handler: ((m: Message) => void) | undefined;
  #requestHandler: RequestHandler | undefined;
  readonly #requests = new Map<number, PendingRequest>();
  #requestSeq = 0;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #flushScheduled = false;
  #closed = false;
  readonly #dirty = new Set<PeerLink>();

  readonly #byNode = new Map<NodeId, bigint>();
  readonly #byWire = new Map<bigint, NodeId>();
  /** Members removed from the cluster: their connections are refused as removed (they must not rejoin). */
  readonly #removed = new Set<bigint>();

  constructor(o: TcpTransportOptions) {
    this.#o = o;
    this.#byNode.set(o.nodeId, o.memberId);
    this.#byWire.set(o.memberId, o.nodeId);
    for (const p of o.peers) {
      this.#byNode.set(p.nodeId, p.memberId);
      this.#byWire.set(p.memberId, p.nodeId);
      this.#byMember.set(p.memberId, p);
    }
    for (const id of o.removed ?? []) this.#removed.add(id);
    this.#ids = { toWire: (id) => this.#byNode.get(id), fromWire: (w) => this.#byWire.get(w) };
    for (const p of o.peers) this.#links.set(p.nodeId, new PeerLink(this, p));
    this.#servers = [o.listen, ...(o.listenMore ?? [])].map((at) =>
      o.tls
        ? o.tls.createServer(`peer URL ${at.host}:${at.port}`, (s) => this.#accept(s))
        : createServer({ noDelay: true }, (s) => this.#accept(s)),
    );
  }

  /**
   * A member joined the cluster (a membership change applied): it is dialed, and its connections
   * accepted, from now on. Adding a peer already known with the same address changes nothing; a
   * known peer with another address is redialed there (MemberUpdate).
   */
  addPeer(p: TcpPeer): void {
    if (this.#closed || p.nodeId === this.#o.nodeId) return;
    const known = this.#links.get(p.nodeId);
    if (known && known.peer.host === p.host && known.peer.port === p.port) return;
    if (known) known.close();
    this.#byNode.set(p.nodeId, p.memberId);
    this.#byWire.set(p.memberId, p.nodeId);
    this.#byMember.set(p.memberId, p);
    const link = new PeerLink(this, p);
    this.#links.set(p.nodeId, link);
    if (this.#handler) link.start();
  }

  /** A member left the cluster: its link is closed and its future connections refused as removed. */
  removePeer(nodeId: NodeId): void {
    const link = this.#links.get(nodeId);
    const memberId = this.#byNode.get(nodeId);
    if (memberId === undefined || nodeId === this.#o.nodeId) return;
    this.#removed.add(memberId);
    this.#byMember.delete(memberId);
    if (link) {
      this.#links.delete(nodeId);
      link.close();
      this.failRequests(nodeId, `member ${hex(memberId)} was removed from the cluster`);
    }
    for (const c of this.#inbound) if (c.peer?.nodeId === nodeId) c.close();
  }

  get ids(): IdMap {
    return this.#ids;
  }
  get options(): TcpTransportOptions {
    return this.#o;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Starts listening for peers on every listen address; resolves with the port bound for
   * `listen`. If one address cannot be bound, the ones already bound are closed and it rejects.
   */
  async listen(): Promise<number> {
    const at = [this.#o.listen, ...(this.#o.listenMore ?? [])];
    const ports: number[] = [];
    try {
      for (const [i, server] of this.#servers.entries())
        ports.push(
          await new Promise<number>((resolve, reject) => {
            server.once('error', reject);
            server.listen(at[i]!.port, at[i]!.host, () => {
              server.off('error', reject);
              const a = server.address();
              resolve(typeof a === 'object' && a ? a.port : at[i]!.port);
            });
          }),
        );
    } catch (err) {
      await this.#closeServers();
      throw err;
    }
    return ports[0]!;
  }

  #closeServers(): Promise<void> {
    return Promise.all(
      this.#servers.map(
        (server) =>
          new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve())),
      ),
    ).then(() => undefined);
  }

  register(id: NodeId, onMessage: (m: Message) => void): void {
    if (id !== this.#o.nodeId)
      throw new RangeError(`tcp transport of node ${this.#o.nodeId} cannot register ${id}`);
    this.#handler = onMessage;
    for (const l of this.#links.values()) l.start();
    this.#sweep ??= setInterval(() => this.#sweepRequests(), requestSweepMs);
  }

  unregister(id: NodeId): void {
    if (id === this.#o.nodeId) this.#handler = undefined;
  }

  /** Delivers a message (or a driver report) to the registered member. */
  deliver(m: Message): void {
    if (!this.#closed) this.#handler?.(m);
  }

  send(messages: readonly Message[]): void {
    if (this.#closed) return;
    for (const m of messages) {
      const link = this.#links.get(m.to);
      if (!link) continue; // not a peer (removed member): dropped
      link.enqueue(m);
      this.#dirty.add(link);
    }
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#dirty.size === 0) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      const dirty = [...this.#dirty];
      this.#dirty.clear();
      for (const l of dirty) l.flush();
    });
  }

  /** Counts bytes read from `peer` on a connection it dialed (its link's `receivedBytes`). */
  countReceived(peer: NodeId, bytes: number): void {
    const l = this.#links.get(peer);
    if (l) l.stats.receivedBytes += bytes;
  }

  stats(): Map<NodeId, Readonly<PeerStats>> {
    return new Map([...this.#links].map(([id, l]) => [id, { ...l.stats }]));
  }

  /** True when the outbound connection to `id` has completed its handshake. */
  connected(id: NodeId): boolean {
    return this.#links.get(id)?.ready ?? false;
  }

  // --------------------------------------------------------------------------------------------
  // Side channel

  serve(handler: RequestHandler): void {
    this.#requestHandler = handler;
  }

  request(to: NodeId, kind: number, body: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    const link = this.#links.get(to);
    if (!link)
      return Promise.reject(new ConclaveError(ErrorCode.Unavailable, `member node ${to} is not a peer`));
    if (this.#requests.size >= pendingRequestsMax)
      return Promise.reject(
        new ConclaveError(
          ErrorCode.TooManyRequests,
          `more than ${pendingRequestsMax} peer requests pending; retry`,
        ),
      );
    const id = (this.#requestSeq = (this.#requestSeq + 1) >>> 0);
    return new Promise<Uint8Array>((resolve, reject) => {
      if (!link.sendFrame(encodeRequest(id, kind, body))) {
        reject(
          new ConclaveError(
            ErrorCode.Unavailable,
            `peer ${hex(link.peer.memberId)} is not connected; retry (its member may be down)`,
          ),
        );
        return;
      }
      this.#requests.set(id, { to, deadline: performance.now() + timeoutMs, resolve, reject });
    });
  }

  /** Answers a request id (from a Response frame on the connection to `from`). */
  answer(from: NodeId, body: Uint8Array): void {
    const { id, response } = decodeResponse(body);
    const r = this.#requests.get(id);
    if (!r || r.to !== from) return;
    this.#requests.delete(id);
    if (response.ok) r.resolve(response.body);
    else {
      const code = (Object.values(ErrorCode) as string[]).includes(response.code)
        ? (response.code as ErrorCode)
        : ErrorCode.Internal;
      r.reject(new ConclaveError(code, response.message));
    }
  }

  /** Fails the requests waiting on `to` (its connection broke: they may never be answered). */
  failRequests(to: NodeId, why: string): void {
    for (const [id, r] of this.#requests) {
      if (r.to !== to) continue;
      this.#requests.delete(id);
      r.reject(new ConclaveError(ErrorCode.Unavailable, why));
    }
  }

  #sweepRequests(): void {
    const now = performance.now();
    for (const [id, r] of this.#requests) {
      if (r.deadline > now) continue;
      this.#requests.delete(id);
      r.reject(new ConclaveError(ErrorCode.Unavailable, 'the peer did not answer in time; retry'));
    }
  }

  /** Serves one request from an inbound connection (answers on the same connection). */
  async handleRequest(conn: InboundConn, body: Uint8Array): Promise<void> {
    const id = (body[0]! | (body[1]! << 8) | (body[2]! << 16)) + body[3]! * 0x100_0000;
    const kind = body[4];
    let r: ResponseBody;
    if (kind === undefined) throw new FrameError('a request without a kind');
    if (!this.#requestHandler)
      r = { ok: false, code: ErrorCode.Unavailable, message: 'member not serving yet' };
    else if (conn.serving >= servingRequestsMax)
      r = { ok: false, code: ErrorCode.TooManyRequests, message: 'too many peer requests; retry' };
    else {
      conn.serving++;
      try {
        r = { ok: true, body: await this.#requestHandler(conn.peer!.nodeId, kind, body.subarray(5)) };
      } catch (err) {
        r = ConclaveError.is(err)
          ? { ok: false, code: err.code, message: err.message }
          : { ok: false, code: ErrorCode.Internal, message: String(err) };
      } finally {
        conn.serving--;
      }
    }
    conn.write(encodeResponse(id, r));
  }

  // --------------------------------------------------------------------------------------------
  // Accepting

  /** Inbound connections closed because `inboundConnectionsMax` were open. */
  refusedInbound = 0;

  #accept(s: Socket): void {
    if (this.#closed) {
      s.destroy();
      return;
    }
    if (this.#inbound.size >= inboundConnectionsMax) {
      if (this.refusedInbound++ === 0)
        this.#o.log.warn(
          { max: inboundConnectionsMax },
          'too many inbound peer connections: closing new ones',
        );
      s.destroy();
      return;
    }
    const c = new InboundConn(this, s);
    this.#inbound.add(c);
    s.once('close', () => this.#inbound.delete(c));
  }

  /** Checks a Hello; returns the peer, or the reason to refuse it. */
  checkHello(h: ReturnType<typeof decodeHello>): TcpPeer | string {
    // A member about to join asks for the membership on a connection of its own (`discoverCluster`).
    if (h.clusterId === 0n && h.from === 0n && h.version === peerProtocolVersion) return discoveryPeer;
    if (h.version !== peerProtocolVersion)
      return `peer protocol version ${h.version} is not spoken here (this member speaks ${peerProtocolVersion})`;
    if (h.clusterId !== this.#o.clusterId)
      return `cluster ID mismatch: the dialer is in cluster ${hex(h.clusterId)}, this member in ${hex(this.#o.clusterId)}`;
    if (h.to !== this.#o.memberId)
      return `member ID mismatch: the dialer expected member ${hex(h.to)}, this is ${hex(this.#o.memberId)}`;
    const p = this.#byMember.get(h.from);
    if (this.#removed.has(h.from)) return `${removedRefusal} (member ${hex(h.from)})`;
    if (!p) return `member ${hex(h.from)} is not a member of cluster ${hex(this.#o.clusterId)}`;
    return p;
  }

  /** A newer inbound connection from the same peer replaces an older one. */
  adopt(c: InboundConn): void {
    for (const o of this.#inbound) if (o !== c && o.peer?.nodeId === c.peer?.nodeId) o.close();
    if (c.peer) this.#links.get(c.peer.nodeId)?.peerIsUp();
  }

  onSnapshot(m: Message): void {
    this.deliver(m);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweep);
    for (const l of this.#links.values()) l.close();
    for (const c of this.#inbound) c.close();
    for (const id of this.#links.keys()) this.failRequests(id, 'the transport closed');
    await this.#closeServers();
  }
}

/** One outbound connection: this member's messages and requests to one peer. */
class PeerLink {
  readonly peer: TcpPeer;
  readonly stats: PeerStats = {
    sentMessages: 0,
    droppedMessages: 0,
    receivedMessages: 0,
    writes: 0,
    connects: 0,
    refusals: 0,
    snapshotsSent: 0,
    sentBytes: 0,
    receivedBytes: 0,
  };
  readonly #t: TcpTransport;
  #socket: Socket | undefined;
  ready = false;
  #queue: Message[] = [];
  #queuedBytes = 0;
  #frames: Buffer[] = [];
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #started = false;
  /** The snapshot being streamed: its data and the next offset (-1: SnapBegin not yet written). */
  #snap: { m: Message; stream: number; offset: number } | undefined;
  #snapStream = 0;
  #chunkInFlight = false;
  /** Reported the peer unreachable since the last successful connect. */
  #reported = false;
  #lastRefusal = '';

  constructor(t: TcpTransport, peer: TcpPeer) {
    this.#t = t;
    this.peer = peer;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#dial();
  }

  enqueue(m: Message): void {
    if (m.type === MessageType.Snapshot) {
      if (this.#snap || !this.ready) {
        this.stats.droppedMessages++;
        // Tell the core at once so it falls back to probing and tries again later.
        queueMicrotask(() => this.#snapStatus(true));
        return;
      }
      this.#snap = { m, stream: ++this.#snapStream, offset: -1 };
      return;
    }
    const size = messageFrameBytes(m);
    if (!this.ready && this.#socket === undefined) {
      this.#drop();
      return;
    }
    if (this.#queue.length >= queuedMessagesMax || this.#queuedBytes + size > queuedBytesMax) {
      this.stats.droppedMessages++;
      return;
    }
    // Forwarded proposals of one turn travel as one message (the leader appends them together).
    // `queuedBytes` counts each merged message's head too: a slight overestimate, on the safe side.
    const last = this.#queue[this.#queue.length - 1];
    if (m.type === MessageType.Propose && last?.type === MessageType.Propose && last.from === m.from) {
      if (this.#merged !== last) {
        this.#merged = { ...last, entries: [...last.entries] };
        this.#queue[this.#queue.length - 1] = this.#merged;
      }
      (this.#merged.entries as Entry[]).push(...m.entries);
    } else this.#queue.push(m);
    this.#queuedBytes += size;
  }

  /** The last queued message when it is a merge of forwarded proposals this link made (owns its entries). */
  #merged: Message | undefined;

  #drop(): void {
    this.stats.droppedMessages++;
    if (this.#reported) return;
    this.#reported = true;
    const id = this.peer.nodeId;
    queueMicrotask(() => this.#t.deliver(unreachable(id, this.#t.options.nodeId)));
  }

  /** Writes a ready-made frame (requests); false when not connected. */
  sendFrame(f: Buffer): boolean {
    if (!this.ready || !this.#socket) return false;
    this.#frames.push(f);
    this.flush();
    return true;
  }

  /** Encodes the queue into one buffer and writes it (one socket write per peer per turn). */
  flush(): void {
    const s = this.#socket;
    if (!this.ready || !s) return;
    if (this.#queue.length > 0) {
      if (s.writableLength > socketBacklogBytesMax) {
        this.stats.droppedMessages += this.#queue.length;
      } else {
        const size = this.#queue.reduce((n, m) => n + messageFrameBytes(m), 0);
        const w = new Writer(Buffer.allocUnsafe(size));
        for (const m of this.#queue) encodeMessageInto(w, m, this.#t.ids);
        this.#frames.push(w.buf);
        this.stats.sentMessages += this.#queue.length;
      }
      this.#queue = [];
      this.#queuedBytes = 0;
      this.#merged = undefined;
    }
    if (this.#frames.length > 0) {
      const out = this.#frames.length === 1 ? this.#frames[0]! : Buffer.concat(this.#frames);
      this.#frames = [];
      s.write(out);
      this.stats.writes++;
      this.stats.sentBytes += out.length;
    }
    this.#pumpSnapshot();
  }

  #pumpSnapshot(): void {
    const sn = this.#snap;
    const s = this.#socket;
    if (!sn || !s || this.#chunkInFlight) return;
    const data = sn.m.snapshot!.data;
    let frame: Buffer;
    if (sn.offset < 0) {
      frame = encodeSnapBegin(sn.stream, sn.m, this.#t.ids);
      sn.offset = 0;
    } else {
      const end = Math.min(data.length, sn.offset + snapshotChunkBytes);
      frame = encodeSnapChunk(sn.stream, data.subarray(sn.offset, end));
      sn.offset = end;
    }
    const last = sn.offset >= data.length;
    this.#chunkInFlight = true;
    this.stats.sentBytes += frame.length;
    s.write(frame, (err) => {
      this.#chunkInFlight = false;
      if (this.#snap !== sn) return;
      if (err) return; // the close handler reports the failure
      if (last && sn.offset >= data.length && (data.length === 0 || sn.offset > 0)) {
        this.#snap = undefined;
        this.stats.snapshotsSent++;
        this.#t.options.log.info(
          { peer: hex(this.peer.memberId), index: sn.m.snapshot!.meta.index, bytes: data.length },
          'snapshot sent to peer',
        );
        this.#snapStatus(false);
        return;
      }
      this.#pumpSnapshot();
    });
  }

  #snapStatus(failed: boolean): void {
    this.#t.deliver({
      ...unreachable(this.peer.nodeId, this.#t.options.nodeId),
      type: MessageType.SnapStatus,
      reject: failed,
    });
  }

  #dial(): void {
    if (this.#closed || this.#t.closed) return;
    const o = this.#t.options;
    const s = o.tls
      ? o.tls.connect(this.peer.host, this.peer.port)
      : tcpConnect({ host: this.peer.host, port: this.peer.port, noDelay: true });
    this.#socket = s;
    let secured = !o.tls;
    let handshake = true;
    const hs = setTimeout(() => s.destroy(new Error('handshake timed out')), handshakeTimeoutMs);
    const reader = new FrameReader((kind, body) => {
      if (handshake) {
        handshake = false;
        clearTimeout(hs);
        this.#onHandshake(s, kind, body);
        return;
      }
      if (kind === FrameKind.Response) this.#t.answer(this.peer.nodeId, body);
      else throw new FrameError(`unexpected frame kind ${kind} from the acceptor`);
    });
    s.on(o.tls ? 'secureConnect' : 'connect', () => {
      secured = true;
      s.write(
        encodeHello({
          version: o.version ?? peerProtocolVersion,
          clusterId: o.clusterId,
          from: o.memberId,
          to: this.peer.memberId,
        }),
      );
    });
    s.on('data', (chunk: Buffer) => {
      this.stats.receivedBytes += chunk.length;
      try {
        reader.push(chunk);
      } catch (err) {
        o.log.warn(
          { peer: hex(this.peer.memberId), err: String(err) },
          'peer sent a malformed frame; reconnecting',
        );
        s.destroy();
      }
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      // 'close' follows. A TLS handshake the peer failed (untrusted certificate, wrong name) is a
      // configuration error: logged once per distinct reason, retried after `refusedRetryMs`.
      if (secured || !o.tls || err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET') return;
      const why = `TLS handshake failed: ${err.message}`;
      if (why !== this.#lastRefusal)
        o.log.error(
          { peer: hex(this.peer.memberId), address: `${this.peer.host}:${this.peer.port}`, reason: why },
          'could not connect to peer over TLS',
        );
      this.#lastRefusal = why;
      this.#refused = true;
    });
    s.on('close', () => {
      clearTimeout(hs);
      this.#onClose(s);
    });
  }

  #onHandshake(s: Socket, kind: number, body: Uint8Array): void {
    const o = this.#t.options;
    if (kind === FrameKind.Refuse) {
      const reason = Buffer.from(body).toString('utf8');
      this.stats.refusals++;
      if (reason !== this.#lastRefusal)
        o.log.error(
          { peer: hex(this.peer.memberId), address: `${this.peer.host}:${this.peer.port}`, reason },
          'peer refused the connection',
        );
      this.#lastRefusal = reason;
      this.#refused = true;
      s.destroy();
      if (reason.startsWith(removedRefusal)) o.onRefused?.('removed', reason);
      else if (reason.startsWith('cluster ID mismatch')) o.onRefused?.('cluster', reason);
      return;
    }
    let why: string | undefined;
    if (kind !== FrameKind.Welcome) why = `unexpected frame kind ${kind} instead of a welcome`;
    else {
      const w = decodeWelcome(body);
      if (w.version !== peerProtocolVersion)
        why = `peer speaks protocol version ${w.version}, this member ${peerProtocolVersion}`;
      else if (w.clusterId !== o.clusterId) {
        why = `cluster ID mismatch: the peer is in cluster ${hex(w.clusterId)}, this member in ${hex(o.clusterId)}`;
        o.onRefused?.('cluster', why);
      } else if (w.memberId !== this.peer.memberId)
        why = `member ID mismatch: expected ${hex(this.peer.memberId)}, the peer is ${hex(w.memberId)}`;
    }
    if (why !== undefined) {
      this.stats.refusals++;
      if (why !== this.#lastRefusal)
        o.log.error({ peer: hex(this.peer.memberId), reason: why }, 'refusing a peer at the handshake');
      this.#lastRefusal = why;
      this.#refused = true;
      s.end(encodeRefuse(why));
      s.destroy();
      return;
    }
    this.ready = true;
    this.#attempt = 0;
    this.#reported = false;
    this.#lastRefusal = '';
    this.stats.connects++;
    o.log.info({ peer: hex(this.peer.memberId) }, 'connected to peer');
    this.flush();
  }

  #refused = false;
  /** The reconnect timer pending is the wait after a refusal (`refusedRetryMs`), not a backoff. */
  #waitingRefused = false;

  /**
   * The peer just completed a handshake on a connection it dialed, so it is up: if this link is
   * waiting out its reconnect backoff, it dials now. A member that restarts dials its peers at
   * once, but their links to it had backed off (up to `reconnectDelayMsMax`) while it was down, so
   * it heard nothing from the leader — no appends, no commit index for the writes it forwarded —
   * for up to that long after it was back (etcd's stream readers redial every 100 ms). Not after a
   * refusal: that wait is for a misconfiguration, which a peer dialing us does not fix.
   */
  peerIsUp(): void {
    if (this.#closed || this.#t.closed || this.#socket !== undefined || this.#waitingRefused) return;
    if (this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#attempt = 0;
    this.#dial();
  }

  #onClose(s: Socket): void {
    if (this.#socket !== s) return;
    const wasReady = this.ready;
    this.ready = false;
    this.#socket = undefined;
    this.stats.droppedMessages += this.#queue.length;
    this.#merged = undefined;
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#frames = [];
    this.#chunkInFlight = false;
    if (this.#snap) {
      this.#snap = undefined;
      this.#snapStatus(true);
    }
    this.#t.failRequests(this.peer.nodeId, `the connection to peer ${hex(this.peer.memberId)} broke; retry`);
    if (wasReady) {
      this.#t.options.log.warn({ peer: hex(this.peer.memberId) }, 'lost the connection to peer');
      if (!this.#reported) {
        this.#reported = true;
        this.#t.deliver(unreachable(this.peer.nodeId, this.#t.options.nodeId));
      }
    }
    if (this.#closed || this.#t.closed) return;
    let delay: number;
    if (this.#refused) delay = refusedRetryMs;
    else {
      const base = Math.min(reconnectDelayMsMax, reconnectDelayMsMin * 2 ** Math.min(this.#attempt, 16));
      delay = base * (0.5 + 0.5 * (this.#t.options.random ?? Math.random)());
    }
    this.#waitingRefused = this.#refused;
    this.#refused = false;
    this.#attempt++;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#dial();
    }, delay);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#socket?.destroy();
  }
}

/** One connection a peer dialed: its messages and requests to this member. */
class InboundConn {
  peer: TcpPeer | undefined;
  serving = 0;
  readonly #t: TcpTransport;
  readonly #s: Socket;
  #snap: { begin: SnapBegin; buf: Buffer; fill: number } | undefined;

  constructor(t: TcpTransport, s: Socket) {
    this.#t = t;
    this.#s = s;
    s.setNoDelay(true);
    const hs = setTimeout(() => s.destroy(), handshakeTimeoutMs);
    const reader = new FrameReader((kind, body) => this.#onFrame(kind, body, hs));
    s.on('data', (chunk: Buffer) => {
      if (this.peer) t.countReceived(this.peer.nodeId, chunk.length);
      try {
        reader.push(chunk);
      } catch (err) {
        t.options.log.warn(
          { peer: this.peer ? hex(this.peer.memberId) : s.remoteAddress, err: String(err) },
          'peer sent a malformed frame; closing its connection',
        );
        s.destroy();
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => clearTimeout(hs));
  }

  #onFrame(kind: number, body: Uint8Array, hs: ReturnType<typeof setTimeout>): void {
    const t = this.#t;
    if (!this.peer) {
      clearTimeout(hs);
      if (kind !== FrameKind.Hello) throw new FrameError(`expected a hello, got frame kind ${kind}`);
      const h = decodeHello(body);
      const p = t.checkHello(h);
      if (typeof p === 'string') {
        t.options.log.error(
          { peer: hex(h.from), address: `${this.#s.remoteAddress}:${this.#s.remotePort}`, reason: p },
          'refusing a peer at the handshake',
        );
        this.#s.end(encodeRefuse(p));
        return;
      }
      this.peer = p;
      if (p !== discoveryPeer) t.adopt(this);
      this.write(
        encodeWelcome({
          version: peerProtocolVersion,
          clusterId: t.options.clusterId,
          memberId: t.options.memberId,
        }),
      );
      return;
    }
    if (this.peer === discoveryPeer && kind !== FrameKind.Request)
      throw new FrameError(`a discovery connection sent frame kind ${kind}`);
    switch (kind) {
      case FrameKind.Message: {
        const m = decodeMessage(body, t.ids);
        t.deliver(m);
        return;
      }
      case FrameKind.SnapBegin: {
        const b = decodeSnapBegin(body, t.ids);
        this.#snap = { begin: b, buf: Buffer.allocUnsafe(b.total), fill: 0 };
        if (b.total === 0) this.#finishSnapshot();
        return;
      }
      case FrameKind.SnapChunk: {
        const sn = this.#snap;
        const stream = (body[0]! | (body[1]! << 8) | (body[2]! << 16)) + body[3]! * 0x100_0000;
        if (!sn || sn.begin.stream !== stream) throw new FrameError('a snapshot chunk of no open snapshot');
        const data = body.subarray(4);
        if (sn.fill + data.length > sn.buf.length) throw new FrameError('a snapshot longer than announced');
        sn.buf.set(data, sn.fill);
        sn.fill += data.length;
        if (sn.fill === sn.buf.length) this.#finishSnapshot();
        return;
      }
      case FrameKind.Request:
        void t.handleRequest(this, new Uint8Array(body)).catch((err: unknown) => {
          t.options.log.warn({ err: String(err) }, 'malformed peer request');
          this.#s.destroy();
        });
        return;
      default:
        throw new FrameError(`unexpected frame kind ${kind} from a dialer`);
    }
  }

  #finishSnapshot(): void {
    const sn = this.#snap!;
    this.#snap = undefined;
    const data = new Uint8Array(sn.buf.buffer, sn.buf.byteOffset, sn.buf.length);
    this.#t.options.log.info(
      {
        peer: this.peer ? hex(this.peer.memberId) : this.#s.remoteAddress,
        index: sn.begin.meta.index,
        bytes: data.length,
      },
      'snapshot received from peer',
    );
    this.#t.onSnapshot({ ...sn.begin.head, entries: [], snapshot: { meta: sn.begin.meta, data } });
  }

  write(b: Buffer): void {
    if (!this.#s.destroyed) this.#s.write(b);
  }

  close(): void {
    this.#s.destroy();
  }
}

function unreachable(from: NodeId, to: NodeId): Message {
  return msg({ type: MessageType.Unreachable, from, to, term: 0 });
}

/**
 * Asks the member listening for peers at `host:port` a side-channel request on a discovery
 * connection (a Hello with cluster and member IDs 0): how a member joining with
 * `--initial-cluster-state existing` learns the cluster it was added to, as etcd's new member asks
 * a peer's `/members`. Resolves with the answer body and the peer's cluster and member IDs.
 */
export function discoverRequest(
  peer: { host: string; port: number },
  kind: number,
  timeoutMs: number,
  tls?: PeerTls,
): Promise<{ clusterId: bigint; memberId: bigint; body: Uint8Array }> {
  return new Promise((resolve, reject) => {
    // An https:// peer URL: over TLS with this member's peer certificate (the peer may require it).
    const s = tls
      ? tls.connect(peer.host, peer.port)
      : tcpConnect({ host: peer.host, port: peer.port, noDelay: true });
    let welcome: { clusterId: bigint; memberId: bigint } | undefined;
    const timer = setTimeout(
      () => s.destroy(new Error(`no answer from ${peer.host}:${peer.port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const done = (err: Error | undefined, v?: Uint8Array) => {
      clearTimeout(timer);
      s.destroy();
      if (err) reject(err);
      else resolve({ ...welcome!, body: v! });
    };
    const reader = new FrameReader((k, body) => {
      if (!welcome) {
        if (k === FrameKind.Refuse) return done(new Error(Buffer.from(body).toString('utf8')));
        if (k !== FrameKind.Welcome) return done(new Error(`unexpected frame kind ${k}`));
        const w = decodeWelcome(body);
        welcome = { clusterId: w.clusterId, memberId: w.memberId };
        s.write(encodeRequest(1, kind, new Uint8Array(0)));
        return;
      }
      if (k !== FrameKind.Response) return done(new Error(`unexpected frame kind ${k}`));
      const { response } = decodeResponse(body);
      if (response.ok) done(undefined, new Uint8Array(response.body));
      else done(new Error(response.message));
    });
    s.on(tls ? 'secureConnect' : 'connect', () =>
      s.write(encodeHello({ version: peerProtocolVersion, clusterId: 0n, from: 0n, to: 0n })),
    );
    s.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        done(err as Error);
      }
    });
    s.on('error', (err) => done(err));
    s.on('close', () => done(new Error(`${peer.host}:${peer.port} closed the connection`)));
  });
}
