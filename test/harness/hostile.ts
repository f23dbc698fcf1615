/**
 * Hostile and broken peers for the etcd client's tests, all on loopback, all closed by the test:
 *   - recordingListener: accepts TCP, records the first bytes a client sends, then hangs up
 *     (what a passive observer of the network sees);
 *   - silentListener: accepts TCP and never answers nor closes (a wedged server, a black hole);
 *   - refusedEndpoint: a port nobody listens on;
 *   - hostileEtcd (hostile-grpc.ts): a gRPC server speaking etcd's wire API with answers chosen by
 *     the test (oversized, endless, never).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { freePort } from './etcd.js';

export interface RecordingListener {
  readonly endpoint: string;
  /** The first bytes of every connection, in accept order. */
  readonly received: Buffer[];
  /** Resolves when some connection sent at least `n` bytes (or after `timeoutMs`). */
  waitForBytes(n: number, timeoutMs: number): Promise<Buffer | undefined>;
  close(): Promise<void>;
}

/** Bytes kept per connection: enough for a TLS ClientHello or an HTTP/2 preface plus a request. */
const recordBytesMax = 64 * 1024;

function listen(server: Server): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      if (typeof a !== 'object' || !a) reject(new Error('no address'));
      else resolve(`127.0.0.1:${a.port}`);
    });
  });
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  sockets.clear();
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * Records what a client sends. It keeps the connection open for `holdMs` (so a client writes its
 * first request, if it is going to write one in the clear) and then closes it.
 */
export async function recordingListener(holdMs = 500): Promise<RecordingListener> {
  const received: Buffer[] = [];
  const sockets = new Set<Socket>();
  const waiters = new Set<() => void>();
  const server = createServer((sock) => {
    sockets.add(sock);
    const index = received.push(Buffer.alloc(0)) - 1;
    sock.on('data', (d: Buffer) => {
      if (received[index]!.length < recordBytesMax) {
        received[index] = Buffer.concat([received[index]!, d]).subarray(0, recordBytesMax);
        for (const w of waiters) w();
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => sockets.delete(sock));
    setTimeout(() => sock.destroy(), holdMs).unref();
  });
  const endpoint = await listen(server);
  return {
    endpoint,
    received,
    waitForBytes(n, timeoutMs) {
      return new Promise((resolve) => {
        const check = () => {
          const b = received.find((r) => r.length >= n);
          if (b) {
            waiters.delete(check);
            clearTimeout(t);
            resolve(b);
          }
        };
        const t = setTimeout(() => {
          waiters.delete(check);
          resolve(undefined);
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    close: () => closeServer(server, sockets),
  };
}

export interface SilentListener {
  readonly endpoint: string;
  /** Connections accepted so far. */
  readonly accepted: () => number;
  close(): Promise<void>;
}

/** Accepts every connection and never writes a byte nor closes it (until close()). */
export async function silentListener(): Promise<SilentListener> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((sock) => {
    accepted++;
    sockets.add(sock);
    sock.on('error', () => undefined);
    sock.on('close', () => sockets.delete(sock));
    // Read and discard, so the client's writes never block on a full socket buffer.
    sock.resume();
  });
  const endpoint = await listen(server);
  return { endpoint, accepted: () => accepted, close: () => closeServer(server, sockets) };
}

/** A loopback host:port nobody listens on (connections are refused). */
export async function refusedEndpoint(): Promise<string> {
  return `127.0.0.1:${await freePort()}`;
}
