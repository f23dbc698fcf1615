/**
 * The client listener's HTTP/2 guard (backends/raft/server/h2-authority.ts): a request whose
 * `:authority` nghttp2 refuses (etcd's Go client sends `http://host:port` for Maintenance calls to
 * one member) is served, through a rewriter, and every other connection goes to the HTTP/2 server
 * as the socket itself.
 */
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AuthorityRewriter,
  acceptEtcdAuthority,
  saneAuthority,
} from '../../backends/raft/server/h2-authority.js';
import { toHttp2 } from '../../backends/raft/server/listener.js';

interface Served {
  port: number;
  seen: string[];
  routes: Array<'native' | 'rewrite'>;
  close(): Promise<void>;
}

/** An HTTP/2 server behind the guard, answering each request with its `:authority`. */
async function serve(): Promise<Served> {
  const seen: string[] = [];
  const routes: Array<'native' | 'rewrite'> = [];
  const h2 = http2.createServer();
  h2.on('stream', (s, headers) => {
    seen.push(String(headers[':authority']));
    s.respond({ ':status': 200 });
    s.end(String(headers[':authority']));
  });
  const guard = acceptEtcdAuthority(
    (socket, head) => {
      routes.push('native');
      toHttp2((s) => h2.emit('connection', s))(socket, head);
    },
    (d: Duplex) => {
      routes.push('rewrite');
      h2.emit('connection', d);
    },
  );
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    guard(s, Buffer.alloc(0));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    routes,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      h2.close();
    },
  };
}

function get(c: http2.ClientHttp2Session, authority: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const r = c.request({ ':path': '/x', ':authority': authority });
    let body = '';
    r.setEncoding('utf8');
    r.on('data', (d: string) => {
      body += d;
    });
    r.on('end', () => resolve(body));
    r.on('error', reject);
  });
}

let open: Served | undefined;
afterEach(async () => {
  await open?.close();
  open = undefined;
});

describe('HTTP/2 :authority guard', () => {
  it('serves requests whose :authority is a URL (refused by nghttp2 without the guard)', async () => {
    open = await serve();
    const c = http2.connect(`http://127.0.0.1:${open.port}`);
    try {
      // Several requests on one connection: the first inserts the value into the HPACK dynamic
      // table, later ones refer to it by index (the rewritten entry must be what they find).
      for (let i = 0; i < 3; i++)
        expect(await get(c, `http://localhost:${open.port}`)).toBe(`http:__localhost:${open.port}`);
      // A different, acceptable authority on the same (rewritten) connection passes unchanged.
      expect(await get(c, 'localhost:1')).toBe('localhost:1');
    } finally {
      c.close();
    }
    expect(open.routes).toEqual(['rewrite']);
  });

  it('hands an ordinary connection to the HTTP/2 server as the socket itself', async () => {
    open = await serve();
    const c = http2.connect(`http://127.0.0.1:${open.port}`);
    try {
      expect(await get(c, `localhost:${open.port}`)).toBe(`localhost:${open.port}`);
      expect(await get(c, `localhost:${open.port}`)).toBe(`localhost:${open.port}`);
    } finally {
      c.close();
    }
    expect(open.routes).toEqual(['native']);
  });

  it('without the guard, nghttp2 refuses such a request (the reason it exists)', async () => {
    const h2 = http2.createServer();
    h2.on('stream', (s) => {
      s.respond({ ':status': 200 });
      s.end('ok');
    });
    await new Promise<void>((r) => h2.listen(0, '127.0.0.1', r));
    const port = (h2.address() as net.AddressInfo).port;
    const c = http2.connect(`http://127.0.0.1:${port}`);
    try {
      await expect(get(c, `http://localhost:${port}`)).rejects.toThrow(/PROTOCOL_ERROR/);
    } finally {
      c.close();
      h2.close();
    }
  });

  it('keeps the length of a rewritten value (HPACK table sizes must agree)', () => {
    expect(saneAuthority('http://localhost:20000')).toBe('http:__localhost:20000');
    expect(saneAuthority('localhost:20000')).toBe('localhost:20000');
    expect(saneAuthority('[::1]:2379')).toBe('[::1]:2379');
  });

  it('passes frames other than HEADERS through unchanged, even split across chunks', () => {
    const rw = new AuthorityRewriter();
    // A PING frame (type 6, 8 bytes) fed in two pieces.
    const ping = Buffer.from([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(rw.feed(ping.subarray(0, 5)).length).toBe(0);
    expect(rw.feed(ping.subarray(5))).toEqual(ping);
  });
});
