/**
 * Watch delivery on a `conclave serve` cluster under half the bench's watch load: 100
 * watches on one key through Conclave's etcd client (one multiplexed Watch stream: one response
 * per watch per revision), a producer putting on a fixed timetable. Every watch gets every put,
 * and the put → event p50 stays far below the seconds a member took when its watches waited for
 * grpc-js's 'drain' on every revision and grpc-js passed one message at a time to HTTP/2.
 * Half the rate and a generous bound, because a member at the bench's rate needs most of a core
 * and this runs beside other test files on loaded CI machines: an end-to-end guard (every event
 * delivered, no seconds of lag); test/server/watch-send.test.ts checks the sending itself exactly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const watchers = 100;
const putsPerSec = 50;
const puts = 250;
/**
 * Puts not measured: a fresh process's first second of thousands of messages a second (JIT, the first
 * HTTP/2 traffic) runs ~100 ms behind before it catches up, on etcd too (see bench/phases/watch.ts).
 */
const warmupPuts = 75;
/** Events still missing this long after the last put fail the test. */
const drainMs = 10_000;
const p50BoundMs = 500;

let c: ServedCluster | undefined;
let kv: KV | undefined;

beforeAll(async () => {
  c = await startServed({ members: 3 });
  kv = await connect(`etcd://${c.endpoints.join(',')}`);
}, 60_000);

afterAll(async () => {
  await kv?.close();
  await c?.close();
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('watch delivery on a served cluster', () => {
  it(`${watchers} watches on one key each get every one of ${puts} puts at ${putsPerSec}/s, p50 under ${p50BoundMs} ms`, async () => {
    const key = 'watch-latency/k';
    const sentAt = new Float64Array(puts).fill(Number.NaN);
    const received = new Uint16Array(puts);
    const latencies: number[] = [];
    let unexpected = 0;
    let delivered = 0;
    const trace: string[] = [];
    const ws = Array.from({ length: watchers }, () => kv!.watch(key));
    try {
      await Promise.all(ws.map((w) => w.ready));
      const consumers = ws.map(async (w) => {
        for await (const batch of w) {
          const at = performance.now();
          for (const e of batch.events) {
            const seq = Number(Buffer.from(e.kv.value).toString());
            if (!(seq >= 0 && seq < puts) || Number.isNaN(sentAt[seq]!)) {
              unexpected++;
              continue;
            }
            received[seq]! += 1;
            delivered++;
            if (seq >= warmupPuts) latencies.push(at - sentAt[seq]!);
            if (seq % 25 === 0 && received[seq] === 1) trace.push(`${seq}:${(at - sentAt[seq]!).toFixed(0)}`);
          }
        }
      });
      const t0 = performance.now();
      const acks: Promise<unknown>[] = [];
      for (let i = 0; i < puts; i++) {
        const wait = t0 + (i * 1000) / putsPerSec - performance.now();
        if (wait > 0) await sleep(wait);
        sentAt[i] = performance.now();
        acks.push(kv!.put(key, String(i)));
      }
      await Promise.all(acks);
      const until = performance.now() + drainMs;
      while (delivered < puts * watchers && performance.now() < until) await sleep(20);
      await Promise.all(ws.map((w) => w.close()));
      await Promise.all(consumers);
    } finally {
      await Promise.all(ws.map((w) => w.close().catch(() => undefined)));
    }
    expect(unexpected).toBe(0);
    const missing = received.reduce((n, r) => n + (watchers - r), 0);
    expect(missing).toBe(0);
    latencies.sort((a, b) => a - b);
    const p50 = latencies[latencies.length >> 1]!;
    expect(
      p50,
      `put → event p50 ${p50.toFixed(1)} ms (put:ms of the first watch to get it: ${trace.join(' ')})`,
    ).toBeLessThan(p50BoundMs);
  }, 90_000);
});
