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
