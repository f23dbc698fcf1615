/**
 * `prefixcache` and `prefixwatch`: how fast a write reaches 100 local copies of a prefix.
 * `prefixcache` keeps 100 `PrefixCache`s (recipes/prefix-cache.ts) of one prefix; `prefixwatch`
 * keeps 100 raw watches of the same prefix (the floor a cache is held against). Sequential puts to
 * keys under the prefix (a rotating set of `keys` keys); each waits until every copy has it.
 * ops/s = puts per second; latency = from just before the put to the moment the LAST copy has it;
 * `firstP50Ms` and `perCopyP50/P99Ms` in extra. Conclave client only (the etcd3 client has no
 * prefix cache, and its adapter's watch has no prefix option).
 *
 * Bounds: puts ≤ min(opsMax, prefixPutsMax) and ≤ the duration (checked between puts); each put
 * waits ≤ prefixPutTimeoutMs for every copy, else the phase fails.
 */
import { setMaxListeners } from 'node:events';
import { PrefixCache } from '../../recipes/prefix-cache.js';
import { toText } from '../../src/keys.js';
import type { Watch } from '../../src/types.js';
import { nowMs } from '../clock.js';
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { conclaveKvOf } from './recipes-common.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

/** Most measured puts in one pass (each waits for every copy, so a pass is sequential). */
export const prefixPutsMax = 2000;
/** How long one put may take to reach every copy before the phase fails. */
export const prefixPutTimeoutMs = 15_000;
const warmupPuts = 20;
/** Keys the puts rotate over (the cached prefix holds this many keys). */
const keys = 100;

export function prefixCachePhase(copies: number, raw: boolean): Phase {
  return {
    name: raw ? 'prefixwatch' : 'prefixcache',
    description: raw
      ? `${copies} raw watches of one prefix (${keys} keys); put → every watch has it (the floor for prefixcache)`
      : `${copies} PrefixCaches of one prefix (${keys} keys); put → every cache has it`,
    run: (ctx) => runPrefix(ctx, copies, raw),
  };
}

async function runPrefix(ctx: PhaseContext, copies: number, raw: boolean): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'PrefixCache');
  const prefix = `${ctx.prefix}/cache/`;
  for (let i = 0; i < keys; i++) await kv.put(`${prefix}${i}`, '0', { signal: ctx.signal });
  const stop = new AbortController();
  // Each cache listens on it at start and for its change stream (plus AbortSignal.any inside).
  setMaxListeners(copies * 4 + 16, stop.signal);
  const onAbort = (): void => stop.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  // Per copy: the highest sequence number it has seen.
  const have = new Int32Array(copies).fill(-1);
  let target = -1;
  let reached = 0;
  let startedAt = 0;
  let firstAt = Number.NaN;
  let done: (() => void) | undefined;
  let recording = false;
  const perCopy = new Histogram();
  const seen = (copy: number, seq: number): void => {
    if (seq <= have[copy]! || seq < target) return;
    const before = have[copy]!;
    have[copy] = seq;
    if (before >= target) return;
    const at = nowMs();
    if (reached === 0) firstAt = at;
    if (recording) perCopy.recordMs(at - startedAt);
    if (++reached === copies) done?.();
  };
  const caches: PrefixCache[] = [];
  const watches: Watch[] = [];
  let failure: unknown;
  const consumers: Promise<void>[] = [];
  try {
    for (let c = 0; c < copies; c++) {
      if (raw) {
        const w = kv.watch(prefix, { prefix: true, signal: stop.signal });
        watches.push(w);
        consumers.push(
          (async () => {
            for await (const b of w)
              for (const e of b.events) if (e.type === 'put') seen(c, Number(toText(e.kv.value)));
          })().catch((err) => {
            if (!stop.signal.aborted) failure ??= err;
          }),
        );
      } else {
        const cache = await PrefixCache.start(kv, prefix, { signal: stop.signal });
        caches.push(cache);
        consumers.push(
          (async () => {
            for await (const ch of cache.changes({ signal: stop.signal }))
              for (const e of ch.events) if (e.type === 'put') seen(c, Number(toText(e.kv.value)));
          })().catch((err) => {
            if (!stop.signal.aborted) failure ??= err;
          }),
        );
      }
    }
    await Promise.all(watches.map((w) => w.ready));
    const lat = new Histogram();
    const firstLat = new Histogram();
    let seq = 0;
    const put = async (): Promise<void> => {
      seq++;
      target = seq;
      reached = 0;
      firstAt = Number.NaN;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const all = new Promise<void>((resolve, reject) => {
        done = resolve;
        timer = setTimeout(
          () =>
            reject(
              new Error(`put ${seq} reached ${reached} of ${copies} copies in ${prefixPutTimeoutMs} ms`),
            ),
          prefixPutTimeoutMs,
        );
      });
      all.catch(() => undefined);
      try {
        startedAt = nowMs();
        await kv.put(`${prefix}${seq % keys}`, String(seq), { signal: ctx.signal });
        await all;
        if (failure !== undefined) throw failure;
        if (!recording) return;
        lat.recordMs(nowMs() - startedAt);
        firstLat.recordMs(firstAt - startedAt);
      } finally {
        clearTimeout(timer);
      }
    };
    for (let i = 0; i < warmupPuts && !ctx.signal.aborted; i++) await put();
    recording = true;
    const putsMax = Math.min(ctx.opsMax, prefixPutsMax);
    const before = sampleCpu(ctx.target.serverPids);
    const start = nowMs();
    let puts = 0;
    while (puts < putsMax && nowMs() - start < ctx.durationMs && !ctx.signal.aborted) {
      await put();
      puts++;
    }
    const elapsedMs = nowMs() - start;
    return {
      ops: puts,
      elapsedMs: round(elapsedMs),
      opsPerSec: round((puts * 1000) / elapsedMs),
      latency: lat.summary(),
      cpu: cpuPerOp(before, sampleCpu(ctx.target.serverPids), puts, elapsedMs),
      extra: {
        copies,
        keys,
        copy: raw ? 'raw prefix watch' : 'PrefixCache',
        firstP50Ms: round(firstLat.quantileMs(0.5), 3),
        perCopyP50Ms: round(perCopy.quantileMs(0.5), 3),
        perCopyP99Ms: round(perCopy.quantileMs(0.99), 3),
      },
    };
  } finally {
    stop.abort(new Error('phase over'));
    ctx.signal.removeEventListener('abort', onAbort);
    await Promise.all([
      ...caches.map((c) => c.close()),
      ...watches.map((w) => w.close().catch(() => undefined)),
    ]);
    await Promise.all(consumers);
  }
}
