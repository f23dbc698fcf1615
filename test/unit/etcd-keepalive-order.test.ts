/**
 * The etcd client's shared LeaseKeepAlive stream answers requests in order (etcd's v3rpc
 * LeaseKeepAlive: one response per request, or the stream ends). A keep-alive the caller gave up
 * on (aborted) still gets its answer on the stream; that answer must be dropped, never handed to a
 * later keep-alive of the same lease: the Session dates a granted TTL from when *its* request was
 * sent, and the server renewed at the earlier request, so a late answer read as the new one would
 * push the Session's deadline past the server's.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { KeepAliveStream } from '../../backends/etcd/keepalive.js';

class FakeStream extends EventEmitter {
  readonly written: unknown[] = [];
  write(m: unknown): boolean {
    this.written.push(m);
    return true;
  }
  cancel(): void {}
}

function fakeConnection(stream: FakeStream, callTimeoutMs = 5_000, opened = { count: 0 }) {
  return {
    callTimeoutMs,
    currentIndex: 0,
    token: undefined,
    client: () => ({
      makeBidiStreamRequest: () => {
        opened.count++;
        return stream;
      },
    }),
    deserializer: () => (b: Buffer) => b,
    streamMetadata: () => undefined,
    failover: () => undefined,
    refreshToken: async () => undefined,
  };
}

describe('etcd keep-alive stream: answers matched to their own request', () => {
  it("an aborted keep-alive's late answer is not taken as the next keep-alive's", async () => {
    const s = new FakeStream();
    // biome-ignore lint/suspicious/noExplicitAny: a fake of the connection's few members used here
    const ka = new KeepAliveStream(fakeConnection(s) as any);
    const id = 0x1234n;
    const ctl = new AbortController();
    const first = ka.keepAliveOnce(id, ctl.signal);
    ctl.abort();
    await expect(first).rejects.toBeDefined();
    const second = ka.keepAliveOnce(id, undefined);
    expect(s.written.length).toBe(2);
    // The server answers the first request (renewed then, TTL 60), then the second (expired: TTL 0).
    s.emit('data', { ID: Number(id), TTL: 60 });
    let settled: { ttlSeconds: number } | undefined;
    void second.then((r) => (settled = r));
    await new Promise((r) => setImmediate(r));
    expect(settled, 'the first answer belongs to the aborted request').toBeUndefined();
    s.emit('data', { ID: Number(id), TTL: 0 });
    await expect(second).resolves.toEqual({ id, ttlSeconds: 0 });
    ka.close();
  });

  it('answers for a lease nobody waits for are dropped; later keep-alives still match', async () => {
    const s = new FakeStream();
    // biome-ignore lint/suspicious/noExplicitAny: as above
    const ka = new KeepAliveStream(fakeConnection(s) as any);
    const a = ka.keepAliveOnce(1n, undefined);
    const b = ka.keepAliveOnce(2n, undefined);
    s.emit('data', { ID: 2, TTL: 5 });
    s.emit('data', { ID: 1, TTL: 7 });
    await expect(a).resolves.toEqual({ id: 1n, ttlSeconds: 7 });
    await expect(b).resolves.toEqual({ id: 2n, ttlSeconds: 5 });
    ka.close();
  });

  it('a stream that never answers an aborted keep-alive is still replaced after callTimeoutMs', async () => {
    const s = new FakeStream();
    const opened = { count: 0 };
    // biome-ignore lint/suspicious/noExplicitAny: as above
    const ka = new KeepAliveStream(fakeConnection(s, 50, opened) as any);
    const ctl = new AbortController();
    const first = ka.keepAliveOnce(7n, ctl.signal);
    ctl.abort();
    await expect(first).rejects.toBeDefined();
    expect(opened.count).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    // The silent stream was dropped: the next keep-alive opens a new one.
    const next = ka.keepAliveOnce(7n, undefined);
    expect(opened.count).toBe(2);
    s.emit('data', { ID: 7, TTL: 3 });
    await expect(next).resolves.toEqual({ id: 7n, ttlSeconds: 3 });
    ka.close();
  });
});
