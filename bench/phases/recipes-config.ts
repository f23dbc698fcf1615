/**
 * `config` and `config-debounce50`: config propagation to `watchers` `ConfigWatcher`s
 * (recipes/config.ts, `watchConfig` with a zod schema) on one prefix. Sequential updates: each is
 * one `setConfig()` of a three-field config with a new `seq`, and the next starts only when every
 * watcher's change stream has delivered the new typed config. ops/s = updates per second; latency
 * = from just before `setConfig()` is called to the moment the LAST watcher has the new config.
 * In extra: `setConfigP50/P99Ms` (the write alone: one range plus one txn), `firstP50Ms` (the first
 * watcher), `perWatcherP50/P99Ms` (every watcher's own delivery, 100 samples per update).
 *
 * `config` sets `debounceMs: 0` (each write is evaluated at once); `config-debounce50` keeps the
 * default `configDebounceMsDefault` (50 ms of quiet before a burst is applied), which every
 * single-write update waits out.
 *
 * Bounds: updates ≤ min(opsMax, configUpdatesMax) and ≤ the duration (checked between updates);
 * each update waits ≤ configUpdateTimeoutMs for all watchers, else the phase fails.
 */
import { setMaxListeners } from 'node:events';
import { z } from 'zod';
import { type ConfigWatcher, configDebounceMsDefault, setConfig, watchConfig } from '../../recipes/config.js';
import { nowMs } from '../clock.js';
import { cpuPerOp, round, sampleCpu } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { conclaveKvOf } from './recipes-common.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

/** Most measured updates in one pass (each waits for every watcher, so a pass is sequential). */
export const configUpdatesMax = 200;
/** Unmeasured updates before the measured ones. */
const warmupUpdates = 10;
/** How long one update may take to reach every watcher before the phase fails. */
export const configUpdateTimeoutMs = 15_000;

const schema = z.object({
  seq: z.number().int().nonnegative(),
  mode: z.enum(['steady', 'drain']),
  limit: z.number().int().positive(),
});
type BenchConfigShape = z.infer<typeof schema>;

export function configPhase(watchers: number, debounceMs: number | undefined): Phase {
  const debounced = debounceMs === undefined;
  return {
    name: debounced ? `config-debounce${configDebounceMsDefault}` : 'config',
    description: `config: ${watchers} ConfigWatchers (debounce ${debounceMs ?? configDebounceMsDefault} ms); setConfig → all have it`,
    run: (ctx) => runConfig(ctx, watchers, debounceMs),
  };
}

/** Counts, per update, the watchers that have it; resolves the update's waiter at the last one. */
class Propagation {
  readonly have: Int32Array;
  target = 0;
  startedAt = 0;
  count = 0;
  firstAt = Number.NaN;
  perWatcher = new Histogram();
  recording = false;
  #done: (() => void) | undefined;

  constructor(readonly watchers: number) {
    this.have = new Int32Array(watchers).fill(-1);
  }

  begin(target: number, done: () => void): void {
    this.target = target;
    this.count = 0;
    this.firstAt = Number.NaN;
    this.startedAt = nowMs();
    this.#done = done;
  }

  seen(watcher: number, seq: number): void {
    const before = this.have[watcher]!;
    if (seq <= before) return;
    this.have[watcher] = seq;
    if (before >= this.target || seq < this.target) return;
    const at = nowMs();
    if (this.count === 0) this.firstAt = at;
    if (this.recording) this.perWatcher.recordMs(at - this.startedAt);
    if (++this.count === this.watchers) this.#done?.();
  }
}

async function runConfig(
  ctx: PhaseContext,
  watchers: number,
  debounceMs: number | undefined,
): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'ConfigWatcher');
  const prefix = `${ctx.prefix}/config/`;
  const config = (seq: number): BenchConfigShape => ({
    seq,
    mode: seq % 2 === 0 ? 'steady' : 'drain',
    limit: 100 + seq,
  });
  const initial = await setConfig(kv, prefix, config(0), { signal: ctx.signal });
  if (initial.isErr()) throw new Error('the initial setConfig conflicted (unguarded: cannot happen)');
  const stopIterators = new AbortController();
  // One listener per watcher's change stream.
  setMaxListeners(watchers + 16, stopIterators.signal);
  const onAbort = (): void => stopIterators.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  const ws: ConfigWatcher<BenchConfigShape>[] = [];
  const prop = new Propagation(watchers);
  let iteratorFailure: unknown;
  try {
    for (let i = 0; i < watchers; i++)
      ws.push(
        await watchConfig(kv, prefix, {
          schema,
          signal: ctx.signal,
          ...(debounceMs !== undefined ? { debounceMs } : {}),
        }),
      );
    for (const [i, w] of ws.entries()) prop.seen(i, w.current.seq);
    const iterators = ws.map(async (w, i) => {
      try {
        for await (const c of w.changes({ signal: stopIterators.signal }))
          if (c.result.isOk()) prop.seen(i, c.config.seq);
      } catch (err) {
        if (!stopIterators.signal.aborted) iteratorFailure ??= err;
      }
    });
    const setLat = new Histogram();
    const allLat = new Histogram();
    const firstLat = new Histogram();
    let seq = 0;
    const update = async (): Promise<void> => {
      seq++;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const reached = new Promise<void>((resolve, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `update ${seq} reached ${prop.count} of ${watchers} watchers in ${configUpdateTimeoutMs} ms`,
              ),
            ),
          configUpdateTimeoutMs,
        );
        prop.begin(seq, resolve);
      });
      // Observed below; this keeps a rejection while setConfig is still running from going unhandled.
      reached.catch(() => undefined);
      try {
        const t0 = prop.startedAt;
        const r = await setConfig(kv, prefix, config(seq), { signal: ctx.signal });
        if (r.isErr()) throw new Error(`setConfig ${seq} conflicted (unguarded: cannot happen)`);
        const written = nowMs();
        await reached;
        if (iteratorFailure !== undefined) throw iteratorFailure;
        if (!prop.recording) return;
        setLat.recordMs(written - t0);
        allLat.recordMs(nowMs() - t0);
        firstLat.recordMs(prop.firstAt - t0);
      } finally {
        clearTimeout(timer);
      }
    };
    for (let i = 0; i < warmupUpdates && !ctx.signal.aborted; i++) await update();
    prop.recording = true;
    const updatesMax = Math.min(ctx.opsMax, configUpdatesMax);
    const before = sampleCpu(ctx.target.serverPids);
    const start = nowMs();
    let updates = 0;
    while (updates < updatesMax && nowMs() - start < ctx.durationMs && !ctx.signal.aborted) {
      await update();
      updates++;
    }
    const elapsedMs = nowMs() - start;
    const cpu = cpuPerOp(before, sampleCpu(ctx.target.serverPids), updates, elapsedMs);
    stopIterators.abort(new Error('phase over'));
    await Promise.all(iterators);
    return {
      ops: updates,
      elapsedMs: round(elapsedMs),
      opsPerSec: round((updates * 1000) / elapsedMs),
      latency: allLat.summary(),
      cpu,
      extra: {
        watchers,
        debounceMs: debounceMs ?? configDebounceMsDefault,
        setConfigP50Ms: round(setLat.quantileMs(0.5), 3),
        setConfigP99Ms: round(setLat.quantileMs(0.99), 3),
        firstP50Ms: round(firstLat.quantileMs(0.5), 3),
        perWatcherP50Ms: round(prop.perWatcher.quantileMs(0.5), 3),
        perWatcherP99Ms: round(prop.perWatcher.quantileMs(0.99), 3),
      },
    };
  } finally {
    stopIterators.abort(new Error('phase over'));
    ctx.signal.removeEventListener('abort', onAbort);
    await Promise.all(ws.map((w) => w.close().catch(() => undefined)));
  }
}
