/**
 * Memory is bounded in bytes against any server: a hostile gRPC server (test/harness/hostile-grpc.ts)
 * answers with responses that inflate when decoded, responses over the receive limit, and an
 * endless watch, to a consumer that never reads. The client's RSS must stay under a stated bound
 * (growth under 256 MiB here; today's client reached 715 MiB of heap for an 8 MiB response and
 * 1.1-1.4 GB for a watch whose consumer did not read) and the process must live on.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type HostileEtcd, hostileEtcd } from '../harness/hostile-grpc.js';

const MiB = 1024 * 1024;
/** The RSS growth this file allows the client under attack. */
const rssGrowthMax = 256 * MiB;

/** A RangeResponse of `bytes` wire bytes made only of empty KeyValues (field 2, length 0). */
function emptyKvs(bytes: number): Buffer {
  const b = Buffer.alloc(bytes - (bytes % 2));
  for (let i = 0; i < b.length; i += 2) b[i] = 0x12;
  return b;
}

/** A WatchResponse for watch id 0 with one put event of a `valueBytes` value at `rev`. */
function eventResponse(rev: number, valueBytes: number): object {
  return {
    header: { revision: rev },
    watchId: 0,
    events: [
      {
        type: 0,
        kv: {
          key: Buffer.from('fire/k'),
          value: Buffer.alloc(valueBytes, 1),
          modRevision: rev,
          createRevision: 1,
          version: rev,
        },
      },
    ],
  };
}

/** Resolves when the server-side stream can take more (flow control), or at `until`. */
function drained(call: NodeJS.EventEmitter, until: number): Promise<void> {
  return new Promise<void>((r) => {
    const done = () => {
      clearTimeout(t);
      call.off('drain', done);
      call.off('close', done);
      r();
    };
    const t = setTimeout(done, Math.max(0, until - Date.now()));
    call.once('drain', done);
    call.once('close', done);
  });
}

/** A TxnResponse nesting `depth` txns inside txns (TxnResponse.responses[0].response_txn …). */
function nestedTxns(depth: number): Buffer {
  const varintLen = (n: number) => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : 4);
  // Sizes from the innermost (an empty TxnResponse) outwards.
  const txn: number[] = [0];
  const op: number[] = [0];
  for (let k = 1; k <= depth; k++) {
    op[k] = 1 + varintLen(txn[k - 1]!) + txn[k - 1]!;
    txn[k] = 1 + varintLen(op[k]!) + op[k]!;
  }
  const out = Buffer.alloc(txn[depth]!);
  let pos = 0;
  const varint = (n: number) => {
    while (n >= 0x80) {
      out[pos++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    out[pos++] = n;
  };
  for (let k = depth; k >= 1; k--) {
    out[pos++] = 0x1a; // TxnResponse.responses (3), length-delimited
    varint(op[k]!);
    out[pos++] = 0x22; // ResponseOp.response_txn (4), length-delimited
    varint(txn[k - 1]!);
  }
  return out;
}

function rss(): number {
  return process.memoryUsage().rss;
}

describe('etcd client — memory bounded in bytes against a hostile server', () => {
  let hostile: HostileEtcd | undefined;
  afterEach(async () => {
    await hostile?.close();
    hostile = undefined;
  });

  it('a response that would inflate when decoded is refused (response-too-large), RSS bounded', async () => {
    // 15 MiB of empty KeyValues: under the 16 MiB receive limit, ~7.9 M objects once decoded.
    const body = emptyKvs(15 * MiB);
    hostile = await hostileEtcd({ unary: { range: () => body } });
    await using kv = await connect({ backend: 'etcd', endpoints: [hostile.endpoint] });
    const before = rss();
    for (let i = 0; i < 3; i++) {
      await expect(kv.range('a', { prefix: true })).rejects.toMatchObject({
        code: 'response-too-large',
        retryable: false,
      });
    }
    expect(rss() - before).toBeLessThan(rssGrowthMax);
  });

  it('a response nesting txns 20,000 deep is refused (response-too-large), not decoded recursively', async () => {
    const body = nestedTxns(20_000);
    hostile = await hostileEtcd({ unary: { txn: () => body } });
    await using kv = await connect({ backend: 'etcd', endpoints: [hostile.endpoint] });
    await expect(
      kv.txn({ compare: [], success: [{ type: 'get', key: 'k' }], failure: [] }),
    ).rejects.toMatchObject({
      code: 'response-too-large',
      retryable: false,
      message: expect.stringMatching(/nested deeper/),
    });
  });

  it('a response over maxReceiveBytes is refused before it is buffered whole', async () => {
    const body = emptyKvs(40 * MiB);
    hostile = await hostileEtcd({ unary: { range: () => body } });
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [hostile.endpoint],
      maxReceiveBytes: 4 * MiB,
    });
    await expect(kv.get('a')).rejects.toMatchObject({ code: 'response-too-large', retryable: false });
  });

  it('a firehose watch to a consumer that never reads overflows at the per-watch byte bound; RSS bounded', async () => {
    let sent = 0;
    hostile = await hostileEtcd({
      bidi: {
        watch: (call) => {
          call.once('data', async () => {
            call.write({ header: { revision: 1 }, watchId: 0, created: true });
            // Bounded: at most 4,000 responses of 64 KiB (250 MiB) or 15 s.
            const until = Date.now() + 15_000;
            for (let rev = 2; rev < 4002 && Date.now() < until && !call.cancelled; rev++) {
              sent += 64 * 1024;
              if (!call.write(eventResponse(rev, 64 * 1024))) await drained(call, until);
            }
          });
        },
      },
    });
    const before = rss();
    await using kv = await connect({ backend: 'etcd', endpoints: [hostile.endpoint] });
    const w = kv.watch('fire/', { prefix: true });
    await w.ready;
    // Let the server push well past the per-watch bound (8 MiB) while nobody reads.
    const until = Date.now() + 10_000;
    while (sent < 48 * MiB && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(rss() - before).toBeLessThan(rssGrowthMax);
    let delivered = 0;
    let err: (Error & { code?: string; details?: { resumeRevision?: number } }) | undefined;
    try {
      for await (const b of w) for (const e of b.events) delivered += e.kv.value.length;
    } catch (e) {
      err = e as typeof err;
    }
    expect(err).toMatchObject({ code: 'watch-overflow' });
    expect(delivered).toBeLessThanOrEqual(8 * MiB + 64 * 1024);
    expect(err!.details!.resumeRevision).toBe(2 + delivered / (64 * 1024));
  }, 30_000);

  it('past the client-wide bound the watch stream pauses (the server is held back) and resumes when the consumer reads', async () => {
    let sent = 0;
    hostile = await hostileEtcd({
      bidi: {
        watch: (call) => {
          call.once('data', async () => {
            call.write({ header: { revision: 1 }, watchId: 0, created: true });
            const until = Date.now() + 20_000;
            for (let rev = 2; rev < 4002 && Date.now() < until && !call.cancelled; rev++) {
              if (!call.write(eventResponse(rev, 64 * 1024))) await drained(call, until);
              sent++;
            }
          });
        },
      },
    });
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [hostile.endpoint],
      watchBufferBytesMax: 1024 * MiB,
      watchBuffersBytesMax: 8 * MiB,
      watchPausedMsMax: 60_000,
    });
    const w = kv.watch('fire/', { prefix: true, bufferBatchesMax: 100_000 });
    await w.ready;
    // The stream pauses at 4 MiB buffered; HTTP/2 windows and socket buffers hold a few MiB more.
    // Wait until the server is held back: no write got through for 1.5 s (at most 15 s).
    let held = -1;
    for (const stop = Date.now() + 15_000; Date.now() < stop; ) {
      const before = sent;
      await new Promise((r) => setTimeout(r, 1500));
      if (sent > 0 && sent - before <= 1) {
        held = sent;
        break;
      }
    }
    expect(held, 'the server was never held back').toBeGreaterThan(0);
    expect(held * 64 * 1024).toBeLessThan(48 * MiB);
    // Reading drains the buffer and the stream resumes: the server sends again.
    const it = w[Symbol.asyncIterator]();
    const until = Date.now() + 10_000;
    let read = 0;
    while (sent < held + 200 && Date.now() < until) {
      await it.next();
      read++;
    }
    expect(sent).toBeGreaterThanOrEqual(held + 200);
    expect(read).toBeGreaterThan(0);
    await w.close();
  }, 40_000);
});
