/**
 * One client port for gRPC and HTTP/1.1 (backends/raft/server/listener.ts): the same port answers
 * a gRPC call and a JSON request, including an HTTP/2 preface that arrives a byte at a time and
 * HTTP/1 requests that follow each other on one kept-alive connection.
 */
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { http2Preface } from '../../backends/raft/server/listener.js';
import { type ServedCluster, serveCluster } from '../server/harness.js';
import { RawClient } from '../server/raw.js';

let cluster: EmbeddedCluster;
let served: ServedCluster;

beforeAll(async () => {
  cluster = await startCluster({ nodes: 1 });
  served = await serveCluster(cluster);
}, 60_000);
afterAll(async () => {
  await served?.close();
  await cluster?.close();
});

const b = (s: string) => Buffer.from(s);

/** Sends `chunks` on a new connection (a pause between them) and returns what came back by `until`. */
async function raw(chunks: Buffer[], until: (s: string) => boolean): Promise<string> {
  const [host, port] = served.endpoints[0]!.split(':');
  const sock = net.connect(Number(port), host);
  let got = '';
  sock.on('data', (d) => {
    got += d.toString('latin1');
  });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  for (const c of chunks) {
    sock.write(c);
    await new Promise((r) => setTimeout(r, 20));
  }
  const deadline = Date.now() + 10_000;
  while (!until(got) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  sock.destroy();
  return got;
}

describe('one port for gRPC and HTTP/1.1', () => {
  it('answers a gRPC call and a JSON request on the same port', async () => {
    const c = new RawClient(served.endpoints[0]!);
    try {
      await c.unary(
        '/etcdserverpb.KV/Put',
        { key: b('same-port'), value: b('v') },
        { req: 'PutRequest', res: 'PutResponse' },
      );
    } finally {
      c.close();
    }
    const r = await fetch(`http://${served.endpoints[0]}/v3/kv/range`, {
      method: 'POST',
      body: JSON.stringify({ key: b('same-port').toString('base64') }),
    });
    expect(r.status).toBe(200);
    const j = (await r.json()) as { kvs: { value: string }[] };
    expect(Buffer.from(j.kvs[0]!.value, 'base64').toString()).toBe('v');
  });

  it('an HTTP/2 preface split into single bytes still reaches gRPC', async () => {
    const chunks = [...http2Preface].map((x) => Buffer.from([x]));
    // An empty SETTINGS frame after the preface: the server answers with its own SETTINGS (type 4).
    chunks.push(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
    const got = await raw(chunks, (s) => s.length >= 9);
    expect(got.length).toBeGreaterThanOrEqual(9);
    expect(got.charCodeAt(3)).toBe(4); // a SETTINGS frame, not an HTTP/1 status line
  });

  it('HTTP/1 requests split across packets and pipelined on one connection are each answered', async () => {
    const req = 'GET /version HTTP/1.1\r\nHost: x\r\n\r\n';
    const got = await raw([b('G'), b(req.slice(1)), b(req + req)], (s) => s.split('HTTP/1.1 200').length > 3);
    expect(got.split('HTTP/1.1 200 OK').length - 1).toBe(3);
    expect(got).toContain('"etcdcluster":"3.4.0"');
  });

  it('a connection that says nothing does not stop others from being served', async () => {
    const [host, port] = served.endpoints[0]!.split(':');
    const idle = net.connect(Number(port), host);
    try {
      const r = await fetch(`http://${served.endpoints[0]}/health`);
      expect(await r.json()).toEqual({ health: 'true' });
    } finally {
      idle.destroy();
    }
  });
});
