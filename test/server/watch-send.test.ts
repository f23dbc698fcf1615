/**
 * How a Watch stream hands responses to grpc-js. A stream sends one response per watch per
 * revision (etcd's wire format: one watch ID per response), so 100 watches on one key make 100
 * responses per put. They must all go to grpc-js at once: the member once waited for grpc-js's
 * 'drain' whenever its Writable held 16 messages (its high-water mark), and grpc-js writes one
 * message per HTTP/2 write completion, so 100 watches at 100 puts/s fell seconds behind (watch
 * delivery p50 ~2 s against etcd's ~6 ms). Here a fake call whose writes complete only when the
 * test says shows how many responses the stream hands over while none is written yet.
 */
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { ServerContext } from '../../backends/raft/server/context.js';
import { clientServerDefaults } from '../../backends/raft/server/grpc.js';
import { WatchStream, writeBuffered } from '../../backends/raft/server/watch.js';
import { root } from '../../src/protocol/codec.js';
import { embeddedBackend, serveCluster } from './harness.js';
import { RawClient, waitFor } from './raw.js';

const WatchResponse = root.lookupType('etcdserverpb.WatchResponse');

/** A server stream whose writes complete only on `release()` (HTTP/2 slow to take them). */
class HeldCall extends Duplex {
  readonly metadata = new grpc.Metadata();
  /** Every message handed to `write`, in order. */
  readonly written: Record<string, unknown>[] = [];
  readonly #held: Array<() => void> = [];
  holding = false;
  /** Messages passed to `_write` (to HTTP/2, in a real call). */
  taken = 0;

  constructor() {
    super({ objectMode: true });
  }

  override write(msg: unknown, ...rest: unknown[]): boolean {
    // Event responses are handed over encoded (watch.ts `watchResponseBytes`): decoded to look at.
    this.written.push(
      Buffer.isBuffer(msg)
        ? WatchResponse.toObject(WatchResponse.decode(msg), { longs: Number })
        : (msg as Record<string, unknown>),
    );
    return super.write(msg, ...(rest as []));
  }

  override _write(_m: unknown, _e: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.taken++;
    if (this.holding) this.#held.push(() => cb());
    else setImmediate(cb);
  }

  override _read(): void {}

  release(): void {
    this.holding = false;
    for (const f of this.#held.splice(0)) f();
  }
}

let cluster: EmbeddedCluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

describe('watch stream sending', () => {
  it("100 watches on one key: a put's 100 responses all go to grpc-js before any is written", async () => {
    cluster = await startCluster({ nodes: 3 });
    const backend = embeddedBackend(cluster, cluster.ids[0]!, () => []);
    const d = clientServerDefaults;
    const ctx = new ServerContext(backend, {
      maxRequestBytes: backend.limits.maxRequestBytes,
      maxTxnOps: backend.limits.maxTxnOps,
      pendingRequestsMax: d.pendingRequestsMax,
      streamsMax: d.streamsMax,
      watchesPerStreamMax: d.watchesPerStreamMax,
      watchBufferBatchesMax: d.watchBufferBatchesMax,
      watchSendBytesMax: d.watchSendBytesMax,
      streamRequestsPendingMax: d.streamRequestsPendingMax,
    });
    const call = new HeldCall();
    const stream = new WatchStream(ctx, call as never, () => 0);
    const key = Buffer.from('held/k');
    const watches = 100;
    for (let i = 0; i < watches; i++) call.emit('data', { createRequest: { key } });
    await waitFor(() => call.written.length >= watches, 10_000, 'every created response');
    expect(call.written.every((m) => m.created === true)).toBe(true);
    expect(stream.size).toBe(watches);

    call.holding = true;
    const kv = cluster.client();
    await kv.put('held/k', 'v1');
    const events = () => call.written.filter((m) => Array.isArray(m.events));
    // The put's responses reach grpc-js though none of them is written yet (the old code handed
    // over 16, then waited for 'drain').
    await waitFor(
      () => events().length >= watches,
      10_000,
      `${watches} event responses while none is written`,
    );
    expect(call.writableLength).toBeGreaterThanOrEqual(watches - 1);
    expect(new Set(events().map((m) => m.watchId ?? 0)).size).toBe(watches);

    call.release();
    await kv.put('held/k', 'v2');
    await waitFor(() => events().length >= 2 * watches, 10_000, 'the next put to every watch');
    call.destroy();
  }, 30_000);

  it('messages queued behind a write in flight go to the transport together, not one per write', async () => {
    const call = new HeldCall();
    writeBuffered(call);
    call.holding = true;
    for (let i = 0; i < 50; i++) call.write({ i });
    expect(call.taken).toBe(1);
    // Completing the first write hands the 49 queued behind it over at once (grpc-js's Writable
    // has no _writev of its own: it would pass one, then wait for that one to be written).
    call.release();
    call.holding = true;
    await new Promise((r) => setImmediate(r));
    expect(call.taken).toBe(50);
    call.release();
    await new Promise((r) => setImmediate(r));
    expect(call.writableLength).toBe(0);
    call.destroy();
  });

  it('past watchSendBytesMax queued, watches wait until half is written, then go on', async () => {
    cluster = await startCluster({ nodes: 3 });
    const backend = embeddedBackend(cluster, cluster.ids[0]!, () => []);
    const d = clientServerDefaults;
    const ctx = new ServerContext(backend, {
      maxRequestBytes: backend.limits.maxRequestBytes,
      maxTxnOps: backend.limits.maxTxnOps,
      pendingRequestsMax: d.pendingRequestsMax,
      streamsMax: d.streamsMax,
      watchesPerStreamMax: d.watchesPerStreamMax,
      watchBufferBatchesMax: d.watchBufferBatchesMax,
      watchSendBytesMax: 64 * 1024,
      streamRequestsPendingMax: d.streamRequestsPendingMax,
    });
    const call = new HeldCall();
    new WatchStream(ctx, call as never, () => 0);
    call.emit('data', { createRequest: { key: Buffer.from('big/k') } });
    await waitFor(() => call.written.length >= 1, 10_000, 'created');
    call.holding = true;
    const kv = cluster.client();
    const value = Buffer.alloc(16 * 1024, 120);
    for (let i = 0; i < 10; i++) await kv.put('big/k', value);
    const events = () => call.written.filter((m) => Array.isArray(m.events)).length;
    // Over 16 KiB per response against 64 KiB: the fourth goes over the bound, the fifth waits.
    await waitFor(() => events() >= 4, 10_000, 'responses up to the bound');
    await new Promise((r) => setTimeout(r, 200));
    expect(events()).toBe(4);
    call.release();
    await waitFor(() => events() >= 10, 10_000, 'the rest once written');
    call.destroy();
  }, 30_000);

  it('over grpc-js, responses queued together reach HTTP/2 framed in one write, and the client reads each of them in order', async () => {
    cluster = await startCluster({ nodes: 1 });
    const served = await serveCluster(cluster);
    const raw = new RawClient(served.endpoints[0]!);
    // Every write to a Duplex in this process: the HTTP/2 stream's among them. A write of several
    // gRPC messages is one whose first length prefix covers less than the write.
    const own = Duplex.prototype.write;
    let multiMessageWrites = 0;
    Duplex.prototype.write = function (this: Duplex, chunk: unknown, ...rest: unknown[]) {
      if (
        Buffer.isBuffer(chunk) &&
        chunk.length > 5 &&
        chunk[0] === 0 &&
        chunk.readUInt32BE(1) + 5 < chunk.length
      )
        multiMessageWrites++;
      return (own as (...a: unknown[]) => boolean).apply(this, [chunk, ...rest]);
    } as typeof own;
    try {
      const probe = raw.watch();
      const watches = 100;
      for (let i = 0; i < watches; i++) probe.send({ createRequest: { key: Buffer.from('framed/k') } });
      await waitFor(() => probe.responses.length >= watches, 10_000, 'every created response');
      const kv = cluster.client();
      const puts = 5;
      for (let p = 0; p < puts; p++) await kv.put('framed/k', `v${p}`);
      const events = () => probe.responses.filter((m) => Array.isArray(m.events));
      await waitFor(() => events().length >= watches * puts, 10_000, 'every event response');
      // Each watch got each put once, in order.
      const seen = new Map<string, string[]>();
      for (const m of events()) {
        const id = String(m.watchId ?? '0');
        const list = seen.get(id) ?? [];
        for (const e of m.events as { kv: { value: string } }[])
          list.push(Buffer.from(e.kv.value, 'base64').toString());
        seen.set(id, list);
      }
      expect(seen.size).toBe(watches);
      for (const list of seen.values()) expect(list).toEqual(['v0', 'v1', 'v2', 'v3', 'v4']);
      // The old path wrote one message per HTTP/2 write.
      expect(multiMessageWrites).toBeGreaterThan(0);
      probe.close();
    } finally {
      Duplex.prototype.write = own;
      raw.close();
      await served.close();
    }
  }, 30_000);
});
