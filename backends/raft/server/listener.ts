/**
 * One client port for gRPC (HTTP/2) and the JSON gateway (HTTP/1.1), as etcd serves both on each
 * client URL (etcd's embed/serve.go puts a cmux in front of its gRPC server and its HTTP mux).
 *
 * A connection's first bytes decide: the HTTP/2 client connection preface
 * (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, RFC 9113 §3.4) means gRPC, anything else is HTTP/1.1. The
 * bytes read while deciding are given to the chosen server first, so neither sees a difference.
 *
 * The seam: `dispatchConnection` takes any socket (plain here; a TLS socket once TLS is added,
 * where ALPN may decide before any byte is read) and hands it to one of two sinks. `listenClients`
 * is the plain-TCP source of sockets.
 */
import * as net from 'node:net';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

/** The HTTP/2 client connection preface (RFC 9113 §3.4). */
export const http2Preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * How long a new connection may take to send the bytes that decide its protocol before it is
 * closed: a client that connects and says nothing holds a socket at most this long.
 */
export const sniffTimeoutMsMax = 10_000;

/**
 * Where sorted connections go, each with the bytes already read from it (`head`), which the sink
 * must feed to its server first: Node's HTTP/2 session takes bytes put back with `unshift`
 * (`toHttp2` below), its HTTP/1 parser consumes the socket natively and needs them as a 'data'
 * event (`toHttp1`).
 */
export interface ConnectionSinks {
  /** A connection that opened with the HTTP/2 preface (gRPC). */
  http2(socket: net.Socket, head: Buffer): void;
  /** Any other connection (HTTP/1.x: the JSON gateway, /health, /version, /metrics). */
  http1(socket: net.Socket, head: Buffer): void;
}

/** Hands a sniffed socket to an HTTP/2 server (grpc-js's connection injector, an Http2Server). */
export function toHttp2(inject: (s: net.Socket) => void): (socket: net.Socket, head: Buffer) => void {
  return (socket, head) => {
    socket.pause();
    if (head.length > 0) socket.unshift(head);
    inject(socket);
  };
}

/** Hands a sniffed socket to an HTTP/1 server (`server.emit('connection')`), then its first bytes. */
export function toHttp1(server: net.Server): (socket: net.Socket, head: Buffer) => void {
  return (socket, head) => {
    server.emit('connection', socket);
    if (head.length > 0) socket.emit('data', head);
  };
}

/**
 * Reads just enough of `socket` to tell HTTP/2 from HTTP/1.x and hands it, with the bytes read,
 * to the matching sink. A socket that closes or sends nothing within `sniffTimeoutMsMax` is
 * destroyed.
 */
export function dispatchConnection(socket: net.Socket, sinks: ConnectionSinks): void {
  let seen: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => socket.destroy(), sniffTimeoutMsMax);
  timer.unref();
  const done = (to: (s: net.Socket, head: Buffer) => void): void => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('error', onError);
    socket.off('close', onClose);
    to(socket, seen);
  };
  const onData = (chunk: Buffer): void => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, http2Preface.length);
    // A byte that differs from the preface decides HTTP/1 at once (a request line never starts
    // with "PRI * HTTP/2.0"); a full preface decides HTTP/2; a shorter matching prefix waits.
    if (seen.compare(http2Preface, 0, n, 0, n) !== 0) done(sinks.http1);
    else if (n === http2Preface.length) done(sinks.http2);
  };
  const onError = (): void => {
    clearTimeout(timer);
    socket.destroy();
  };
  const onClose = (): void => clearTimeout(timer);
  socket.on('data', onData);
  socket.on('error', onError);
  socket.on('close', onClose);
}

export interface ClientListener {
  readonly server: net.Server;
  readonly port: number;
  /** Stops accepting new connections at once (those handed on are their servers' to close). */
  close(): Promise<void>;
}

/**
 * Listens on `host:port` (0 picks a free port) and dispatches every accepted connection. Fails
 * with `unavailable` when the address cannot be bound.
 */
export async function listenClients(
  host: string,
  port: number,
  sinks: ConnectionSinks,
): Promise<ClientListener> {
  const server = net.createServer({ noDelay: true }, (socket) => dispatchConnection(socket, sinks));
  await listenOn(server, host, port, 'clients');
  // A listener error after binding (e.g. EMFILE on accept) must not crash the member: it is
  // retried by Node on the next connection; nothing else to do here.
  server.on('error', () => undefined);
  const addr = server.address() as net.AddressInfo;
  return {
    server,
    port: addr.port,
    close: () => {
      // Not awaiting the server's 'close': it waits for every accepted connection to end, and
      // those belong to the HTTP/2 and HTTP/1 servers now, which close them themselves.
      server.close();
      return Promise.resolve();
    },
  };
}

/**
 * Binds `server` to host:port, or fails `unavailable` naming what the port was for (e.g.
 * 'clients', 'metrics') and the system's reason (EADDRINUSE, EACCES, …).
 */
export async function listenOn(server: net.Server, host: string, port: number, what: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err: unknown) => {
    throw new ConclaveError(
      ErrorCode.Unavailable,
      `conclave serve: cannot listen for ${what} on ${host}:${port}: ${(err as Error).message}`,
      { cause: err },
    );
  });
}
