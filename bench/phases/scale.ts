/**
 * Scale phases: what watchers and leases on other keys cost the store.
 *
 * - `scale-put16-w<N>`: N idle watchers, each on its own key that is never written, then put with
 *   16 in flight over 1,024 other keys (put16's shape). The figure that matters is the ratio to
 *   the same puts with no watcher: each phase with N > 0 first measures that baseline pass itself,
 *   on the same store just before opening its watchers (`putsPerSecNone`, `ratioToNone`), so the
 *   ratio does not depend on what earlier phases left in the store or on drift between phases.
 *   Every measured pass starts from a compacted store (`compactTarget`): without it the first
 *   phase of a run measured a fresh store and the later ones a store holding every revision of
 *   the earlier phases (millions of records, hundreds of MB of heap for an embedded member to
 *   collect), a confound in the "none → some" step of earlier figures. Extra: how long
 *   creating and closing the watchers took, and the event loop's longest stall meanwhile
 *   (`loopLagMaxMs`: the longest synchronous stretch a member's ticks waited behind, for the
 *   embedded store, which runs in this process; `stretchCpuMaxMs`: the same in CPU time, which a
 *   loaded machine does not inflate; `gcPauseMaxMs`: the longest garbage-collection pause of this
 *   process meanwhile, which both include: a stretch no longer than it is the collector's, not
 *   the watchers').
 * - `scale-watch-prefix10k`: 10,000 watchers on one prefix, 100 puts/s into it (open loop);
 *   latency from just before each put to the LAST watcher's event (the main columns), and per
 *   event (extra). On etcd and `conclave serve` the watchers come from several clients, at most
 *   `prefixWatchesPerClient` each (see `watchClients`).
 * - `scale-leases-<N>`: N live leases (TTL 600 s, granted 64 at a time, revoked at the end),
 *   then the member's CPU while idle (`idleCores`: fraction of a core, the least of three idle
 *   windows with nothing sent, after 2 s of quiet) and put throughput with 16 in flight. Needs Conclave's client (leases are not
 *   in the `etcd3` adapter's subset).
 *
 * Bounds: watchers/leases ≤ the phase's N (≤ 100,000), set up `setupConcurrency` at a time within
 * `setupMsMax`; measured passes bounded by --duration-s/--ops-max; every watch closed and every
 * lease revoked in `finally` (revocations bounded by `setupMsMax` too). Watches are opened without
 * the run's abort signal (an AbortSignal with 100,000 listeners costs O(listeners) per add) and
 * closed in `finally`.
 */
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import type { KV } from '../../src/kv.js';
import { limits } from '../../src/limits.js';
import type { Watch, WatchOptions } from '../../src/types.js';
import { ClientKind } from '../clients/types.js';
import { nowMs, sleepMs } from '../clock.js';
import { cpuPerOp, cpuStretchMeter, round, sampleCpu } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { benchValue, measuredLoop, valueBytes } from './measure.js';
import { NotAvailable, type Phase, type PhaseContext, type PhaseResult } from './types.js';

const keySpace = 1024;
const inFlight = 16;
/** Watches or leases set up at once. */
const setupConcurrency = 64;
/**
 * Watch creations (or closes) between two turns of the event loop: a client's watches come one
 * request at a time, so the phase's own batches stay short (~1 ms) and the stretches it reports
 * are the store's, not the batch's.
 */
const watchChunk = 100;
/** The longest set-up (or tear-down) of one phase's watchers or leases. */
const setupMsMax = 300_000;
/** One idle window over which a member's CPU is measured; the least busy of `idleWindows` is reported. */
const idleWindowMs = 2000;
const idleWindows = 3;
/**
 * Quiet time after the grants before the idle windows: V8 collects a heap that stopped growing a
 * few seconds later (its memory reducer), and the collection of the grants' garbage in a window
 * would be counted as what the leases cost an idle member.
 */
const idleSettleMs = 5000;
const leaseTtlSeconds = 600;
/** Delivery phase: puts in flight at most, and how long stragglers are awaited. */
const putsInFlightMax = 1000;
/**
 * How long the delivery phase waits, after its last put, for every watcher to receive every event:
 * 100 puts/s to 10,000 watchers is 1M events/s, more than one client process (the bench's, or the
 * embedded member's consumers) drains as it comes, so the backlog is awaited rather than cut off
 * (with 5 s, a loaded run recorded no put as seen by all).
 */
const drainMs = 20_000;
const warmupPuts = 50;

/**
 * Watchers per client in the prefix-delivery phase, on targets that can open more clients: every
 * watcher there receives every event, and 10,000 of them on one client's stream make one stream
 * carry 10,000 events per put (etcd did not confirm a create within the client's call timeout in
 * that shape). A server's 10,000 prefix watchers come from many processes: 10 clients here.
 */
const prefixWatchesPerClient = 1000;

const count = (n: number) => (n >= 1000 ? `${n / 1000}k` : String(n));

/**
 * Compacts the target to its current revision (Conclave client only: the `etcd3` adapter has no
 * compact), so every measured pass starts from a store holding one revision per key, whatever
 * the earlier phases wrote (etcd deployments compact periodically; a bench run never did).
 * Returns whether it compacted.
 */
async function compactTarget(ctx: PhaseContext): Promise<boolean> {
  const kv = ctx.target.conclave;
  if (kv === undefined) return false;
  const { revision } = await kv.status({ signal: ctx.signal });
  await kv.compact(revision, { signal: ctx.signal });
  return true;
}

/** The longest garbage-collection pause of this process from the call until the returned stop. */
function gcPauses(): () => number {
  let maxMs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) maxMs = Math.max(maxMs, e.duration);
  });
  obs.observe({ entryTypes: ['gc'] });
  return () => {
    obs.disconnect();
    return round(maxMs, 1);
  };
}

/**
 * Event-loop stall monitor (resolution 1 ms) from its first sample on (it does not see a stall
 * that starts before its timer first fires: so it is awaited), with the longest stretch in CPU
 * time beside it (`cpuStretchMeter`: what a loaded machine does not inflate).
 */
async function loopLag(): Promise<() => { lagMs: number; cpuMs: number; gcMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  await sleepMs(5);
  const cpu = cpuStretchMeter();
  const gc = gcPauses();
  return () => {
    h.disable();
    return { lagMs: round(h.max / 1e6, 1), cpuMs: round(cpu(), 1), gcMs: gc() };
  };
}

/** Opens `n` watches into `ws` (which holds those opened so far if this throws); returns the time taken. */
async function openWatches(
  ctx: PhaseContext,
  n: number,
  make: (i: number) => Watch,
  ws: Watch[],
): Promise<number> {
  const t0 = nowMs();
  while (ws.length < n && !ctx.signal.aborted) {
    if (nowMs() - t0 > setupMsMax) throw new Error(`creating ${n} watches took over ${setupMsMax} ms`);
    const chunk: Watch[] = [];
    for (let i = 0; i < watchChunk && ws.length + chunk.length < n; i++)
      chunk.push(make(ws.length + chunk.length));
    ws.push(...chunk);
    // Every watch of the chunk is registered before the next chunk (bounded outstanding creates),
    // and the event loop turns between chunks (as when clients open watches over time).
    await Promise.all(chunk.map((w) => w.ready));
    await new Promise((r) => setImmediate(r));
  }
  return nowMs() - t0;
}

/**
 * Where a phase opens its watches: the target's client, and more clients of the same system when
 * one cannot hold them all. Conclave's etcd client multiplexes a client's watches on one stream
 * and holds at most `limits.watchesPerStreamMax` (10,000) there (a bound on the client's memory
 * and on one stream's fan-out; `conclave serve` bounds a stream the same way); a server's 100,000
 * watchers come from many clients, so the phase spreads them over ceil(n / 10,000) clients, each
 * with its own connection and stream (`openClient`), rather than raising the client's bound. The
 * embedded store has no such per-client bound (only the store's `watchersMax`), nor does the
 * `etcd3` client: one client there.
 */
async function watchClients(
  ctx: PhaseContext,
  n: number,
  per: number = limits.watchesPerStreamMax,
): Promise<{
  watch(i: number, key: string, o?: WatchOptions): Watch;
  count: number;
  close(): Promise<void>;
}> {
  const t = ctx.target;
  const extra: Array<{ kv: Pick<KV, 'watch'>; close(): Promise<void> }> = [];
  try {
    if (t.client === ClientKind.Conclave && t.openClient !== undefined)
      for (let c = per; c < n; c += per) {
        const more = await t.openClient();
        if (more.conclave === undefined) {
          await more.close();
          throw new Error('openClient gave no Conclave client');
        }
        extra.push({ kv: more.conclave, close: () => more.close() });
      }
  } catch (err) {
    await Promise.all(extra.map((e) => e.close().catch(() => undefined)));
    throw err;
  }
  const kvs: Array<Pick<KV, 'watch'>> = [t.kv, ...extra.map((e) => e.kv)];
  return {
    // Round robin: each client holds at most ceil(n / clients) <= per, and creates (one at a time
    // per etcd stream) proceed on every stream at once.
    watch: (i, key, o) => kvs[i % kvs.length]!.watch(key, o),
    count: kvs.length,
    close: async () => {
      await Promise.all(extra.map((e) => e.close().catch(() => undefined)));
    },
  };
}

async function closeAll(ws: readonly Watch[]): Promise<number> {
  const t0 = nowMs();
  for (let i = 0; i < ws.length; i += watchChunk) {
    await Promise.all(ws.slice(i, i + watchChunk).map((w) => w.close().catch(() => undefined)));
    await new Promise((r) => setImmediate(r));
    if (nowMs() - t0 > setupMsMax) break;
  }
  return nowMs() - t0;
}

/** One put16-shaped measured pass (warm-up included) from a compacted store. */
async function putPass(ctx: PhaseContext): Promise<PhaseResult & { compacted: boolean }> {
  const kv = ctx.target.kv;
  const compacted = await compactTarget(ctx);
  const keys = Array.from({ length: keySpace }, (_, i) => `${ctx.prefix}/k${i}`);
  const value = benchValue();
  const r = await measuredLoop(ctx, inFlight, async (_w, seq) => {
    await kv.put(keys[seq % keySpace]!, value, { signal: ctx.signal });
  });
  return { ...r, compacted };
}

export function scalePutPhase(watchers: number): Phase {
  return {
    name: `scale-put16-w${count(watchers)}`,
    description: `put, ${inFlight} in flight, ${keySpace} keys, with ${watchers} idle watchers on other keys`,
    run: async (ctx) => {
      // The baseline: the same puts on the same store with no watcher, just before.
      const none = watchers > 0 ? await putPass(ctx) : undefined;
      const clients = await watchClients(ctx, watchers);
      const lag = await loopLag();
      const ws: Watch[] = [];
      let createMs: number;
      try {
        createMs = await openWatches(ctx, watchers, (i) => clients.watch(i, `${ctx.prefix}/idle/${i}`), ws);
      } catch (err) {
        await closeAll(ws);
        await clients.close();
        throw err;
      }
      const createLag = lag();
      try {
        const { compacted, ...r } = await putPass(ctx);
        const closeLag = await loopLag();
        const closeMs = await closeAll(ws);
        const closed = closeLag();
        return {
          ...r,
          extra: {
            ...r.extra,
            watchers,
            ...(none !== undefined
              ? { putsPerSecNone: none.opsPerSec, ratioToNone: round(r.opsPerSec / none.opsPerSec, 3) }
              : {}),
            createMs: round(createMs),
            closeMs: round(closeMs),
            loopLagMaxMs: Math.max(createLag.lagMs, closed.lagMs),
            stretchCpuMaxMs: Math.max(createLag.cpuMs, closed.cpuMs),
            gcPauseMaxMs: Math.max(createLag.gcMs, closed.gcMs),
            watchClients: clients.count,
            ...(compacted ? {} : { compacted: 'no (etcd3 client)' }),
          },
        };
      } finally {
        await closeAll(ws);
        await clients.close();
      }
    },
  };
}

export function scaleWatchPrefixPhase(watchers: number, putsPerSec: number): Phase {
  return {
    name: `scale-watch-prefix${count(watchers)}`,
    description: `watch delivery: ${watchers} watchers on one prefix, ${putsPerSec} puts/s, put → last watcher's event`,
    run: (ctx) => runPrefix(ctx, watchers, putsPerSec),
  };
}

/**
 * The decimal number after the key's last '/' (NaN if none): read from the bytes, as 10,000
 * consumers do it for every event (a TextDecoder per event made the consumers, not the system
 * under test, the cost that was measured).
 */
function seqOf(key: Uint8Array): number {
  let n = 0;
  let i = key.lastIndexOf(0x2f) + 1;
  if (i === 0 || i >= key.length) return Number.NaN;
  for (; i < key.length; i++) {
    const d = key[i]! - 0x30;
    if (d < 0 || d > 9) return Number.NaN;
    n = n * 10 + d;
  }
  return n;
}

async function runPrefix(ctx: PhaseContext, watchers: number, putsPerSec: number): Promise<PhaseResult> {
  const kv = ctx.target.kv;
  const dir = `${ctx.prefix}/p/`;
  const putsMax = warmupPuts + Math.min(ctx.opsMax, Math.ceil((putsPerSec * ctx.durationMs) / 1000));
  const sentAt = new Float64Array(putsMax).fill(Number.NaN);
  const received = new Uint32Array(putsMax);
  const perEvent = new Histogram();
  const allReceived = new Histogram();
  let delivered = 0;
  let allDone = 0;
  await compactTarget(ctx);
  const clients = await watchClients(ctx, watchers, prefixWatchesPerClient);
  const ws: Watch[] = [];
  try {
    await openWatches(ctx, watchers, (i) => clients.watch(i, dir, { prefix: true }), ws);
    const consumers = ws.map(async (w) => {
      for await (const batch of w) {
        const at = nowMs();
        for (const e of batch.events) {
          const seq = seqOf(e.kv.key);
          if (!(seq >= 0 && seq < putsMax)) continue;
          received[seq]! += 1;
          if (seq < warmupPuts) continue;
          delivered++;
          perEvent.recordMs(at - sentAt[seq]!);
          if (received[seq] === watchers) {
            allReceived.recordMs(at - sentAt[seq]!);
            allDone++;
          }
        }
      }
    });
    const failed = Promise.race(consumers).then(
      () => undefined,
      (err: unknown) => err,
    );
    const value = new Uint8Array(valueBytes).fill(0x2e);
    const inFlightPuts = new Set<Promise<unknown>>();
    let failure: unknown;
    let before = sampleCpu(ctx.target.serverPids);
    let measuredStart = nowMs();
    const start = nowMs();
    for (let seq = 0; seq < putsMax && !ctx.signal.aborted && failure === undefined; seq++) {
      await sleepMs(start + (seq * 1000) / putsPerSec - nowMs(), ctx.signal);
      if (seq === warmupPuts) {
        before = sampleCpu(ctx.target.serverPids);
        measuredStart = nowMs();
      }
      while (inFlightPuts.size >= putsInFlightMax) await Promise.race(inFlightPuts);
      sentAt[seq] = nowMs();
      const p: Promise<unknown> = kv.put(`${dir}${seq}`, value, { signal: ctx.signal }).then(
        () => inFlightPuts.delete(p),
        (err: unknown) => {
          failure ??= err;
          inFlightPuts.delete(p);
        },
      );
      inFlightPuts.add(p);
    }
    await Promise.all(inFlightPuts);
    if (failure !== undefined) throw failure;
    const elapsedMs = nowMs() - measuredStart;
    const measured = putsMax - warmupPuts;
    const drainUntil = nowMs() + drainMs;
    while (allDone < measured && nowMs() < drainUntil && !ctx.signal.aborted) await sleepMs(10);
    const err = await Promise.race([failed, sleepMs(0).then(() => undefined)]);
    if (err !== undefined) throw err;
    return {
      ops: measured,
      elapsedMs: round(elapsedMs),
      opsPerSec: round((measured * 1000) / elapsedMs),
      latency: allReceived.summary(),
      cpu: cpuPerOp(before, sampleCpu(ctx.target.serverPids), measured, elapsedMs),
      extra: {
        watchers,
        watchClients: clients.count,
        perEventP50Ms: round(perEvent.quantileMs(0.5), 3),
        perEventP99Ms: round(perEvent.quantileMs(0.99), 3),
        eventsPerSec: round((delivered * 1000) / elapsedMs),
        missedEvents: measured * watchers - delivered,
        ...(allDone < measured ? { putsNotSeenByAll: measured - allDone } : {}),
      },
    };
  } finally {
    await closeAll(ws);
    await clients.close();
  }
}

export function scaleLeasesPhase(leases: number): Phase {
  return {
    name: `scale-leases-${count(leases)}`,
    description: `idle CPU, then put with ${inFlight} in flight, with ${leases} live leases (TTL ${leaseTtlSeconds} s)`,
    run: (ctx) => runLeases(ctx, leases),
  };
}

/** Runs `op(i)` for i < n, `setupConcurrency` at a time, within `setupMsMax`. */
async function bounded(ctx: PhaseContext, n: number, op: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const t0 = nowMs();
  const worker = async () => {
    while (next < n && !ctx.signal.aborted) {
      if (nowMs() - t0 > setupMsMax) throw new Error(`setting up ${n} leases took over ${setupMsMax} ms`);
      await op(next++);
    }
  };
  await Promise.all(Array.from({ length: Math.min(setupConcurrency, n) }, worker));
}

async function runLeases(ctx: PhaseContext, n: number): Promise<PhaseResult> {
  const kv: KV | undefined = ctx.target.conclave;
  if (kv === undefined)
    throw new NotAvailable('leases need the Conclave client (the etcd3 adapter has no lease calls)');
  const ids: bigint[] = [];
  try {
    const t0 = nowMs();
    await bounded(ctx, n, async () => {
      ids.push((await kv.lease.grant(leaseTtlSeconds, { signal: ctx.signal })).id);
    });
    const grantMs = nowMs() - t0;
    // Idle: nothing sent; the member only ticks (and, on the leader, checks lease deadlines).
    // After the grants settle (replies, garbage collection of the burst), the least busy of
    // `idleWindows` windows: one collection landing in a window is not the steady state.
    await sleepMs(idleSettleMs, ctx.signal);
    let idleCpuMs = Number.POSITIVE_INFINITY;
    let idleGcMs = 0;
    let onServer = false;
    for (let i = 0; i < idleWindows && !ctx.signal.aborted; i++) {
      // This process's collections in the window (for the embedded store, the members' heap).
      let gcMs = 0;
      const obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) gcMs += e.duration;
      });
      obs.observe({ entryTypes: ['gc'] });
      const a = sampleCpu(ctx.target.serverPids);
      await sleepMs(idleWindowMs, ctx.signal);
      const b = sampleCpu(ctx.target.serverPids);
      obs.disconnect();
      onServer = a.serverMs !== undefined && b.serverMs !== undefined;
      const cpuMs = onServer ? b.serverMs! - a.serverMs! : b.clientMs - a.clientMs;
      if (cpuMs < idleCpuMs) {
        idleCpuMs = cpuMs;
        idleGcMs = gcMs;
      }
    }
    const { compacted: _, ...r } = await putPass(ctx);
    return {
      ...r,
      extra: {
        ...r.extra,
        leases: n,
        grantMs: round(grantMs),
        idleCores: round(idleCpuMs / idleWindowMs, 4),
        idleCpuOf: onServer ? 'server' : 'this process (in-process members)',
        ...(onServer ? {} : { idleGcMs: round(idleGcMs, 1) }),
      },
    };
  } finally {
    const left = [...ids];
    await bounded(ctx, left.length, async (i) => {
      await kv.lease.revoke(left[i]!).catch(() => undefined);
    }).catch(() => undefined);
  }
}
