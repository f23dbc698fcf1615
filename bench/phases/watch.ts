/**
 * Watch delivery latency: `watchers` watches on one key, a producer putting to it at `putsPerSec`
 * (open loop: puts are scheduled on a fixed timetable, not after the previous one returns). Each
 * put carries its sequence number; each watcher records, per event, the time from just before the
 * put was sent to the event's arrival ("per-event" p50/p99, the main columns), and the time until
 * the LAST watcher has it is recorded per put ("all-received" p50/p99, in extra).
 *
 * Bounds: measured puts ≤ min(opsMax, putsPerSec × duration), after max(warmupPutsMin,
 * putsPerSec × warmupMs) unmeasured warm-up puts; puts in flight ≤ putsInFlightMax; after the
 * last put, stragglers are awaited ≤ drainMs; then every watch is closed.
 */
import { nowMs, sleepMs } from '../clock.js';
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { valueBytes } from './measure.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

const putsInFlightMax = 1000;
const drainMs = 2000;
/**
 * Unmeasured puts before the measured ones: at least `warmupPutsMin`, and enough to cover
 * `warmupMs`. The first watch round in a fresh process (whichever client runs first) falls
 * ~100 ms behind for its first second (JIT, first grpc/HTTP/2 traffic at 10k messages/s) and
 * catches up only after ~1 s; with a 0.5 s warm-up that backlog landed in the measured puts and
 * made the first-run client's p99 4–10× the other's, independent of the client.
 */
const warmupMs = 2000;
const warmupPutsMin = 50;

function encodeSeq(seq: number): Uint8Array {
  const v = new Uint8Array(valueBytes).fill(0x2e);
  new TextEncoder().encodeInto(`${seq};`, v);
  return v;
}

function decodeSeq(v: Uint8Array): number {
  const end = v.indexOf(0x3b);
  return end > 0 ? Number(new TextDecoder().decode(v.subarray(0, end))) : -1;
}

export function watchPhase(watchers: number, putsPerSec: number): Phase {
  return {
    name: 'watch',
    description: `watch delivery: ${watchers} watchers on one key, ${putsPerSec} puts/s, put → event`,
    run: (ctx) => runWatch(ctx, watchers, putsPerSec),
  };
}

async function runWatch(ctx: PhaseContext, watchers: number, putsPerSec: number): Promise<PhaseResult> {
  const kv = ctx.target.kv;
  const key = `${ctx.prefix}/watched`;
  const warmupPuts = Math.max(warmupPutsMin, Math.ceil((putsPerSec * warmupMs) / 1000));
  const putsMax = warmupPuts + Math.min(ctx.opsMax, Math.ceil((putsPerSec * ctx.durationMs) / 1000));
  const sentAt = new Float64Array(putsMax).fill(Number.NaN);
  const received = new Uint16Array(putsMax);
  const perEvent = new Histogram();
  const allReceived = new Histogram();
  let delivered = 0;
  let unexpected = 0;
  let allDone = 0;
  const onEvent = (value: Uint8Array, at: number): void => {
    const seq = decodeSeq(value);
    if (!(seq >= 0 && seq < putsMax) || Number.isNaN(sentAt[seq]!)) return void unexpected++;
    received[seq]! += 1;
    if (seq < warmupPuts) return;
    delivered++;
    perEvent.recordMs(at - sentAt[seq]!);
    if (received[seq] === watchers) {
      allReceived.recordMs(at - sentAt[seq]!);
      allDone++;
    }
  };
  const ws = Array.from({ length: watchers }, () => kv.watch(key, { signal: ctx.signal }));
  try {
    await Promise.all(ws.map((w) => w.ready));
    const consumers = ws.map(async (w) => {
      for await (const batch of w) {
        const at = nowMs();
        for (const e of batch.events) if (e.type === 'put') onEvent(e.kv.value, at);
      }
    });
    const consumersFailed = Promise.race(consumers).then(
      () => undefined,
      (err: unknown) => err,
    );
    const t = await produce(ctx, key, putsMax, warmupPuts, putsPerSec, sentAt);
    const expectedAll = (putsMax - warmupPuts) * watchers;
    const drainUntil = nowMs() + drainMs;
    while (delivered < expectedAll && nowMs() < drainUntil && !ctx.signal.aborted) await sleepMs(10);
    const measuredPuts = putsMax - warmupPuts;
    const failure = await Promise.race([consumersFailed, sleepMs(0).then(() => undefined)]);
    if (failure !== undefined) throw failure;
    return {
      ops: measuredPuts,
      elapsedMs: round(t.elapsedMs),
      opsPerSec: round((measuredPuts * 1000) / t.elapsedMs),
      latency: perEvent.summary(),
      cpu: cpuPerOp(t.before, sampleCpu(ctx.target.serverPids), measuredPuts, t.elapsedMs),
      extra: {
        watchers,
        eventsPerSec: round((delivered * 1000) / t.elapsedMs),
        allReceivedP50Ms: round(allReceived.quantileMs(0.5), 3),
        allReceivedP99Ms: round(allReceived.quantileMs(0.99), 3),
        missedEvents: expectedAll - delivered,
        ...(unexpected > 0 ? { unexpectedEvents: unexpected } : {}),
        ...(allDone < measuredPuts ? { putsNotSeenByAll: measuredPuts - allDone } : {}),
      },
    };
  } finally {
    await Promise.all(ws.map((w) => w.close().catch(() => undefined)));
  }
}

/** Puts `putsMax` sequenced values on a fixed timetable; the first `warmupPuts` are not measured. */
async function produce(
  ctx: PhaseContext,
  key: string,
  putsMax: number,
  warmupPuts: number,
  rate: number,
  sentAt: Float64Array,
) {
  const intervalMs = 1000 / rate;
  const inFlight = new Set<Promise<unknown>>();
  let failure: unknown;
  let before = sampleCpu(ctx.target.serverPids);
  let measuredStart = nowMs();
  const start = nowMs();
  for (let seq = 0; seq < putsMax && !ctx.signal.aborted && failure === undefined; seq++) {
    await sleepMs(start + seq * intervalMs - nowMs(), ctx.signal);
    if (seq === warmupPuts) {
      before = sampleCpu(ctx.target.serverPids);
      measuredStart = nowMs();
    }
    while (inFlight.size >= putsInFlightMax) await Promise.race(inFlight);
    const value = encodeSeq(seq);
    sentAt[seq] = nowMs();
    const p: Promise<unknown> = ctx.target.kv.put(key, value, { signal: ctx.signal }).then(
      () => {
        inFlight.delete(p);
      },
      (err: unknown) => {
        failure ??= err;
        inFlight.delete(p);
      },
    );
    inFlight.add(p);
  }
  await Promise.all(inFlight);
  if (failure !== undefined) throw failure;
  return { before, elapsedMs: nowMs() - measuredStart };
}
