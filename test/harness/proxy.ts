/** A TCP proxy on loopback whose connections a test can cut and restore. */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface CutProxy {
  /** host:port of the proxy. */
  readonly endpoint: string;
  /** Destroys every live connection and refuses new ones until restore(). */
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startProxy(target: string): Promise<CutProxy> {
  const [host, portText] = [
    target.slice(0, target.lastIndexOf(':')),
    target.slice(target.lastIndexOf(':') + 1),
  ];
  const port = Number(portText);
  const live = new Set<Socket>();
  let cut = false;
  const server: Server = createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host, port });
    live.add(client);
    live.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (typeof addr !== 'object' || !addr) throw new Error('proxy: no address');
  return {
    endpoint: `127.0.0.1:${addr.port}`,
    async cut() {
      cut = true;
      for (const s of live) s.destroy();
      live.clear();
    },
    async restore() {
      cut = false;
    },
    async close() {
      cut = true;
      for (const s of live) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A fault-injecting network for a cluster's peer links: one `PeerProxy` in front of each member's
 * peer listener, and the member advertises the proxy's URL as its peer URL, so every connection
 * *to* member j passes through proxy j. etcd (and Conclave) advertise one peer URL per member, so
 * a proxy cannot tell links apart by address; it tells them apart by the first bytes the dialer
 * sends, which name the dialing member (`identify`): etcd's rafthttp puts `X-Server-From: <hex
 * member id>` on every stream and pipeline request, Conclave's peer transport opens with a Hello
 * frame carrying the dialer's member id. Knowing (dialer, acceptor) per connection makes every
 * fault per link and per direction: bytes on a connection dialed by i to j flow i→j one way and
 * j→i the other.
 *
 * Faults, per direction src→dst, changed at any time and applied to live connections at once:
 * - blocked (a blackhole): bytes sent that way are read and discarded, as packets lost in the
 *   network; a connection that lost bytes is reset when the block lifts (its stream has a hole, as
 *   a TCP connection whose retransmissions gave up), and the dialer reconnects. Holding the bytes
 *   instead would deliver, after the heal, what a member sent before it was SIGKILLed — a ghost no
 *   real network produces;
 * - delayed: each chunk is held `delayMs` (± `jitterMs`, order kept);
 * - reset (`cut`): live connections between two members are destroyed (the dialer reconnects).
 * A connection whose dialer cannot be identified (etcd's /version probes, lease forwarding) is
 * blocked only while its acceptor is cut off from every other member.
 */
export type Identify = (head: Buffer) => number | null | undefined;

/** Bytes read while waiting for a connection's dialer to identify itself before it counts as unknown. */
export const identifyBytesMax = 16 * 1024;
/** Bytes one direction of a connection may hold in a delay queue before the proxy stops reading it. */
export const delayQueueBytesMax = 4 * 1024 * 1024;

interface LinkFault {
  blocked: boolean;
  delayMs: number;
  jitterMs: number;
}

interface Pipe {
  /** Bytes were discarded (blocked): the connection is reset once the block lifts. */
  holed: boolean;
  readonly from: number | undefined;
  readonly to: number | undefined;
  readonly src: Socket;
  readonly dst: Socket;
  queue: Array<{ buf: Buffer; due: number }>;
  queued: number;
  lastDue: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  paused: boolean;
}

export interface NetworkStats {
  connections: number;
  unidentified: number;
  resets: number;
}

export class PeerNetwork {
  readonly members: number;
  readonly proxies: PeerProxy[] = [];
  readonly stats: NetworkStats = { connections: 0, unidentified: 0, resets: 0 };
  readonly #faults = new Map<string, LinkFault>();
  readonly #pipes = new Set<Pipe>();
  readonly #conns = new Set<{ dialer: number | undefined; acceptor: number; sockets: Socket[] }>();
  readonly #random: () => number;

  constructor(members: number, random: () => number = Math.random) {
    this.members = members;
    this.#random = random;
  }

  #fault(src: number | undefined, dst: number | undefined): LinkFault | undefined {
    if (src !== undefined && dst !== undefined) return this.#faults.get(`${src}>${dst}`);
    // Unknown end: blocked only when the known end is cut off from everyone.
    const known = src ?? dst;
    if (known === undefined) return undefined;
    const others = [...Array(this.members).keys()].filter((k) => k !== known);
    const all = others.every((k) =>
      src === undefined
        ? this.#faults.get(`${k}>${known}`)?.blocked
        : this.#faults.get(`${known}>${k}`)?.blocked,
    );
    return all ? { blocked: true, delayMs: 0, jitterMs: 0 } : undefined;
  }

  #set(src: number, dst: number, f: Partial<LinkFault>): void {
    const k = `${src}>${dst}`;
    const cur = this.#faults.get(k) ?? { blocked: false, delayMs: 0, jitterMs: 0 };
    const next = { ...cur, ...f };
    if (!next.blocked && next.delayMs === 0 && next.jitterMs === 0) this.#faults.delete(k);
    else this.#faults.set(k, next);
  }

  /** Blocks (or unblocks) the direction src→dst. */
  block(src: number, dst: number, blocked = true): void {
    this.#set(src, dst, { blocked });
    this.#kick();
  }

  /** Cuts member i off from every other member, both directions. */
  isolate(i: number): void {
    for (let k = 0; k < this.members; k++)
      if (k !== i) {
        this.#set(i, k, { blocked: true });
        this.#set(k, i, { blocked: true });
      }
    this.#kick();
  }

  /** Blocks every link between members of different groups (members in no group are in their own). */
  partition(groups: readonly (readonly number[])[]): void {
    const groupOf = (m: number) => groups.findIndex((g) => g.includes(m));
    for (let a = 0; a < this.members; a++)
      for (let b = 0; b < this.members; b++) {
        if (a === b) continue;
        const ga = groupOf(a);
        if (ga === -1 || ga !== groupOf(b)) this.#set(a, b, { blocked: true });
      }
    this.#kick();
  }

  /** Delays every chunk src→dst by `ms` (± `jitterMs`). */
  delay(src: number, dst: number, ms: number, jitterMs = 0): void {
    this.#set(src, dst, { delayMs: ms, jitterMs });
    this.#kick();
  }

  /** Destroys the live connections between members a and b (either dialing); the dialer reconnects. */
  cut(a: number, b: number): void {
    for (const c of this.#conns)
      if ((c.dialer === a && c.acceptor === b) || (c.dialer === b && c.acceptor === a)) {
        for (const s of c.sockets) s.destroy();
        this.stats.resets++;
      }
  }

  /** Lifts every fault; held bytes flow again. */
  heal(): void {
    this.#faults.clear();
    this.#kick();
  }

  /** A short account of the faults in force, e.g. "0>1 blocked, 2>0 +50ms". */
  describe(): string {
    return (
      [...this.#faults.entries()]
        .map(([k, f]) => `${k}${f.blocked ? ' blocked' : ''}${f.delayMs ? ` +${f.delayMs}ms` : ''}`)
        .join(', ') || 'none'
    );
  }

  #kick(): void {
    for (const p of this.#pipes) this.#pump(p);
  }

  /** Adds a connection dialed by `dialer` (undefined: unidentified) to member `acceptor`. */
  attach(client: Socket, upstream: Socket, dialer: number | undefined, acceptor: number, head: Buffer): void {
    this.stats.connections++;
    if (dialer === undefined) this.stats.unidentified++;
    const conn = { dialer, acceptor, sockets: [client, upstream] };
    this.#conns.add(conn);
    const fwd = this.#pipe(client, upstream, dialer, acceptor);
    const back = this.#pipe(upstream, client, acceptor, dialer);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.#conns.delete(conn);
      for (const p of [fwd, back]) {
        if (p.timer) clearTimeout(p.timer);
        this.#pipes.delete(p);
      }
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    if (head.length > 0) this.#push(fwd, head);
  }

  #pipe(src: Socket, dst: Socket, from: number | undefined, to: number | undefined): Pipe {
    const p: Pipe = {
      holed: false,
      from,
      to,
      src,
      dst,
      queue: [],
      queued: 0,
      lastDue: 0,
      timer: undefined,
      paused: false,
    };
    this.#pipes.add(p);
    src.on('data', (b: Buffer) => this.#push(p, b));
    return p;
  }

  #push(p: Pipe, buf: Buffer): void {
    const f = this.#fault(p.from, p.to);
    if (f?.blocked) {
      p.holed = true;
      return;
    }
    const jitter = f?.jitterMs ? (this.#random() * 2 - 1) * f.jitterMs : 0;
    const due = Math.max(p.lastDue, performance.now() + (f?.delayMs ?? 0) + jitter);
    p.lastDue = due;
    p.queue.push({ buf, due });
    p.queued += buf.length;
    this.#pump(p);
  }

  #pump(p: Pipe): void {
    if (p.dst.destroyed) return;
    const f = this.#fault(p.from, p.to);
    if (f?.blocked) {
      // What was queued (delayed) when the block began is lost too.
      if (p.queue.length > 0) p.holed = true;
      p.queue = [];
      p.queued = 0;
    } else if (p.holed) {
      this.stats.resets++;
      p.src.destroy();
      p.dst.destroy();
      return;
    }
    const now = performance.now();
    while (p.queue.length > 0) {
      const head = p.queue[0]!;
      if (head.due > now) {
        if (!p.timer)
          p.timer = setTimeout(
            () => {
              p.timer = undefined;
              this.#pump(p);
            },
            Math.ceil(head.due - now),
          );
        break;
      }
      p.queue.shift();
      p.queued -= head.buf.length;
      p.dst.write(head.buf);
    }
    // Too much held in a delay queue: stop reading (TCP back-pressure holds the rest in the sender).
    const hold = p.queued > delayQueueBytesMax;
    if (hold && !p.paused) {
      p.paused = true;
      p.src.pause();
    } else if (!hold && p.paused && p.queued <= delayQueueBytesMax / 2) {
      p.paused = false;
      p.src.resume();
    }
  }

  /** Closes every proxy and connection. */
  async close(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.close()));
  }
}

export interface PeerProxy {
  /** The port the proxy listens on (the member's advertised peer port). */
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Starts a proxy on `listenPort` (127.0.0.1) in front of member `acceptor`'s real peer listener on
 * `targetPort`, adding its connections to `net`. `identify` names the dialing member from the
 * first bytes (undefined: need more bytes; null: not identifiable).
 */
export async function startPeerProxy(
  net: PeerNetwork,
  acceptor: number,
  listenPort: number,
  targetPort: number,
  identify: Identify,
): Promise<PeerProxy> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    let head = Buffer.alloc(0);
    const onData = (b: Buffer) => {
      head = Buffer.concat([head, b]);
      let who = identify(head);
      if (who === undefined && head.length < identifyBytesMax) return;
      if (who === undefined) who = null;
      // Hand the socket over synchronously (no 'data' event can come in between).
      client.off('data', onData);
      const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
      sockets.add(upstream);
      upstream.once('close', () => sockets.delete(upstream));
      net.attach(client, upstream, who ?? undefined, acceptor, head);
    };
    client.on('data', onData);
    client.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  const proxy: PeerProxy = {
    port: listenPort,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  net.proxies.push(proxy);
  return proxy;
}

/** etcd's rafthttp: the dialer's member id in the `X-Server-From` header of its first request. */
export function identifyEtcd(idToIndex: ReadonlyMap<string, number>): Identify {
  return (head) => {
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const m = /\r\nx-server-from:\s*([0-9a-f]+)\r\n/i.exec(head.subarray(0, end + 2).toString('latin1'));
    return m ? (idToIndex.get(m[1]!.toLowerCase()) ?? null) : null;
  };
}

/**
 * Conclave's peer transport: the first frame is a Hello, [length u32 LE][kind u8][magic u32][version
 * u16][cluster id u64][from id u64][to id u64] (backends/raft/transport/codec.ts); `from` names the dialer.
 */
export function identifyConclave(idToIndex: ReadonlyMap<string, number>): Identify {
  const fromAt = 4 + 1 + 4 + 2 + 8;
  return (head) => {
    if (head.length < fromAt + 8) return undefined;
    const id = head.readBigUInt64LE(fromAt).toString(16);
    return idToIndex.get(id) ?? null;
  };
}
