/**
 * One nemesis run: a 3-member cluster with proxied peer links, the recorded 8-client workload of
 * test/linearizability (gets, unique-value puts, CAS txns, deletes on 10 keys; lease grants,
 * revokes and puts attached to leases), the seeded fault
 * schedule at the same time, then the linearizability check of the whole history.
 *
 * Clients: half are pinned to one member each (so a member that answers from stale state is read
 * from), half know every endpoint and fail over. Failed operations are classified as the recorder
 * says (certainly no effect: left out; a write with any other error: unknown outcome).
 */
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type CheckResult, checkOperations } from '../linearizability/checker.js';
import {
  checkEtcdHistory,
  etcdModelAt,
  perKeyApplicable,
  resolveFromEvents,
  resolveObservedWrites,
  type StoreEvent,
} from '../linearizability/model.js';
import { type Recorded, runWorkload, type TraceEntry } from '../linearizability/recorder.js';
import { type FaultClusterOptions, startFaulty, type Target } from './cluster.js';
import {
  type FaultEvent,
  type FaultKind,
  runNemesis,
  type ScenarioContext,
  type ScenarioName,
  scenarios,
} from './nemesis.js';

/** How long the workload runs on after the nemesis healed its last fault. */
export const workloadTailMs = 2000;

export interface RunOptions extends FaultClusterOptions {
  target: Target;
  seed: number;
  /** Workload and fault schedule length (ms). */
  durationMs: number;
  /** Operations bound (default: 100 per second of duration + 1,000). */
  opsMax?: number;
  clients?: number;
  kinds?: readonly FaultKind[];
  faultMs?: readonly [number, number];
  quietMs?: readonly [number, number];
  /** A fixed fault scenario instead of the seeded schedule (nemesis.ts `scenarios`). */
  scenario?: ScenarioName;
  /** Lease grants, revokes and puts with leases in the workload (default true). */
  leases?: boolean;
  /** Checker time limit (default 30 s). */
  checkTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface RunSummary {
  readonly target: Target;
  readonly seed: number;
  readonly ops: number;
  readonly unknown: number;
  readonly dropped: number;
  /** Whether unknown writes were resolved from the store's event log too (it could be read). */
  readonly eventLog: boolean;
  /** Lease operations with a known outcome: grants, revokes that found their lease, puts naming one. */
  readonly leaseOps: { grants: number; revokes: number; leasedPuts: number };
  readonly faults: FaultEvent[];
  readonly check: CheckResult;
  /** Per fault kind: ms from healing to the first write that was called after it and succeeded. */
  readonly recoveryMs: Partial<Record<FaultKind, number[]>>;
  /** p99 latency of successful writes while a fault was in force (ms). */
  readonly p99WriteDuringFaultsMs: number | undefined;
  readonly elapsedMs: number;
  /** The command that replays the run. */
  readonly replay: string;
  /** Every operation the clients ran, failed ones included (for `faultTimeline`). */
  readonly trace: readonly TraceEntry[];
}

const dec = new TextDecoder();
/** How long reading the store's event log after a run may take before it is given up. */
export const eventLogTimeoutMs = 15_000;

/**
 * The store's changes under `prefix` after `fromRevision` up to its current revision (a watch from
 * `fromRevision + 1`), keys without the prefix; undefined if they could not all be read in
 * `eventLogTimeoutMs` (then unknown writes are resolved from reads only).
 */
async function eventLog(kv: KV, prefix: string, fromRevision: number): Promise<StoreEvent[] | undefined> {
  const signal = AbortSignal.timeout(eventLogTimeoutMs);
  try {
    const end = (await kv.range(prefix, { prefix: true, limit: 1, signal })).revision;
    if (end <= fromRevision) return [];
    const out: StoreEvent[] = [];
    const w = kv.watch(prefix, { prefix: true, startRevision: fromRevision + 1, signal });
    try {
      for await (const b of w) {
        for (const e of b.events)
          out.push({
            type: e.type,
            key: dec.decode(e.kv.key).slice(prefix.length),
            value: dec.decode(e.kv.value),
            revision: e.kv.modRevision,
          });
        if ((out[out.length - 1]?.revision ?? 0) >= end) return out;
      }
    } finally {
      await w.close();
    }
    return undefined;
  } catch {
    return undefined;
  }
}

export async function runOnce(o: RunOptions): Promise<RunSummary> {
  const t0 = performance.now();
  const cluster = await startFaulty(o.target, o);
  const clients = o.clients ?? 8;
  const kvs: KV[] = [];
  try {
    for (let i = 0; i < clients; i++) {
      const endpoints =
        i % 2 === 0
          ? [cluster.endpoints[(i / 2) % cluster.size]!]
          : [...cluster.endpoints.slice(i % cluster.size), ...cluster.endpoints.slice(0, i % cluster.size)];
      kvs.push(
        await connect({ backend: 'etcd', endpoints, callTimeoutMs: 3000, dialTimeoutMs: 1000, lazy: true }),
      );
    }
    const prefix = `nemesis/${o.seed}/`;
    let stopAt = Number.POSITIVE_INFINITY;
    // Scenarios that wait for the workload: resolved from the recorder's callback.
    const waiters = new Set<{ maxAgeMs: number; resolve: (ok: boolean) => void }>();
    const onOperation = (op: Recorded) => {
      if (waiters.size === 0 || op.output?.type !== 'put' || op.output.leaseMissing) return;
      const age = performance.now() - op.call;
      for (const w of waiters)
        if (age <= w.maxAgeMs) {
          waiters.delete(w);
          w.resolve(true);
        }
    };
    const ctx: ScenarioContext = {
      ackedWrite: (maxAgeMs, timeoutMs) =>
        new Promise((resolve) => {
          const w = { maxAgeMs, resolve };
          waiters.add(w);
          setTimeout(() => {
            if (waiters.delete(w)) resolve(false);
          }, timeoutMs);
        }),
    };
    const nemesis = (
      o.scenario
        ? scenarios[o.scenario](cluster, o.log ?? (() => {}), ctx)
        : runNemesis(cluster, {
            seed: o.seed,
            durationMs: o.durationMs,
            ...(o.kinds ? { kinds: o.kinds } : {}),
            ...(o.faultMs ? { faultMs: o.faultMs } : {}),
            ...(o.quietMs ? { quietMs: o.quietMs } : {}),
            ...(o.log ? { log: o.log } : {}),
          })
    ).finally(() => {
      // The workload goes on a little after the last fault is healed (recovery is recorded too).
      stopAt = performance.now() + workloadTailMs;
    });
    const rec = await runWorkload(kvs, prefix, {
      seed: o.seed,
      clients,
      // Bounded even if a scenario hangs; normally ends `workloadTailMs` after the faults.
      durationMs: 3 * o.durationMs + 60_000,
      stop: () => performance.now() > stopAt,
      opsMax: o.opsMax ?? Math.round(o.durationMs / 10) + 1000,
      opTimeoutMs: 2000,
      leases: o.leases ?? true,
      onOperation,
    });
    const faults = await nemesis;
    // Unknown writes resolved from reads, then from the store's event log when it could be read.
    const events = await eventLog(kvs[1 % kvs.length]!, prefix, rec.initialRevision);
    const observed = resolveObservedWrites(rec.history);
    const history = events ? resolveFromEvents(observed, events) : observed;
    const exact = checkOperations(etcdModelAt(rec.initialRevision), history, {
      timeoutMs: o.checkTimeoutMs ?? 30_000,
    });
    // The exact search hit its limit: the per-key check (a necessary condition, much cheaper on
    // long histories) can still prove the history illegal; its 'ok' proves less than the exact
    // search's, so the verdict then stays 'unknown' and says what did pass.
    let check: CheckResult = exact;
    if (exact.result === 'unknown' && perKeyApplicable(history)) {
      const perKey = checkEtcdHistory(history, {
        initialRevision: rec.initialRevision,
        perKey: true,
        timeoutMs: o.checkTimeoutMs ?? 30_000,
      });
      if (perKey.result === 'illegal') check = perKey;
      else
        check = {
          ...exact,
          elapsedMs: exact.elapsedMs + perKey.elapsedMs,
          reason: `${exact.reason}; the per-key check (each key's part and the revision order) answered ${perKey.result}${perKey.result === 'unknown' ? ` (${perKey.reason})` : ` in ${perKey.partitions} parts`}`,
        };
    }
    // Recovery: after each fault is healed, the first write called after that and acknowledged.
    const writes = rec.history
      .filter((h) => h.output !== undefined && h.input.type !== 'get')
      .sort((a, b) => a.call - b.call);
    const recoveryMs: Partial<Record<FaultKind, number[]>> = {};
    for (const f of faults) {
      const w = writes.find((x) => x.call >= f.end);
      if (w) (recoveryMs[f.kind] ??= []).push(w.return - f.end);
    }
    const during = writes
      .filter((w) => faults.some((f) => w.call < f.end && w.return > f.start))
      .map((w) => w.return - w.call)
      .sort((a, b) => a - b);
    const p99 =
      during.length > 0 ? during[Math.min(during.length - 1, Math.floor(during.length * 0.99))] : undefined;
    const known = history.filter((h) => h.output !== undefined);
    const leaseOps = {
      grants: known.filter((h) => h.input.type === 'grant').length,
      revokes: known.filter((h) => h.output?.type === 'revoke' && h.output.found).length,
      leasedPuts: known.filter((h) => h.input.type === 'put' && h.input.lease !== undefined).length,
    };
    return {
      target: o.target,
      seed: o.seed,
      ops: rec.history.length,
      eventLog: events !== undefined,
      leaseOps,
      unknown: history.filter((h) => h.output === undefined).length,
      dropped: rec.dropped,
      faults,
      check,
      recoveryMs,
      p99WriteDuringFaultsMs: p99,
      elapsedMs: performance.now() - t0,
      trace: rec.trace,
      replay: `npm run -s lincheck -- --target ${o.target} --seed ${o.seed} --seconds ${Math.round(o.durationMs / 1000)}${
        o.kinds ? ` --faults ${o.kinds.join(',')}` : ''
      }${o.scenario ? ` --scenario ${o.scenario}` : ''}${o.faults?.length ? ` --inject ${o.faults.join(',')}` : ''}`,
    };
  } finally {
    await Promise.all(kvs.map((k) => k.close()));
    await cluster.close();
  }
}

/**
 * What each client saw around each fault: per fault, per client, its operations from `beforeMs`
 * before the heal to `afterMs` after it, compressed into runs of the same outcome — e.g.
 * `c3: put ok ×12 [-0.50..+0.00 s] | put deadline-exceeded ×1 [+0.01..+2.01 s]`. For finding why
 * writes resume late after a heal (who was stuck, on what error, for how long).
 */
export function faultTimeline(s: RunSummary, beforeMs = 500, afterMs = 5000): string {
  const lines: string[] = [];
  const writes = s.trace.filter((t) => t.type !== 'get' && !t.error).sort((a, b) => a.call - b.call);
  for (const [i, f] of s.faults.entries()) {
    const w = writes.find((x) => x.call >= f.end);
    const next = s.faults[i + 1];
    lines.push(
      `${f.detail} (${f.kind}) held ${((f.end - f.start) / 1000).toFixed(2)} s; first write called after the heal acknowledged at +${
        w ? ((w.return - f.end) / 1000).toFixed(2) : '-'
      } s; next fault at +${next ? ((next.start - f.end) / 1000).toFixed(2) : '-'} s`,
    );
    const from = f.end - beforeMs;
    const to = f.end + afterMs;
    const byClient = new Map<number, TraceEntry[]>();
    for (const t of s.trace)
      if (t.return >= from && t.call <= to) {
        const l = byClient.get(t.clientId) ?? [];
        l.push(t);
        byClient.set(t.clientId, l);
      }
    const rel = (t: number) => `${t >= f.end ? '+' : ''}${((t - f.end) / 1000).toFixed(2)}`;
    for (const [c, ts] of [...byClient.entries()].sort((a, b) => a[0] - b[0])) {
      ts.sort((a, b) => a.call - b.call);
      const runs: { what: string; n: number; call: number; ret: number }[] = [];
      for (const t of ts) {
        const what = t.error ?? 'ok';
        const last = runs[runs.length - 1];
        if (last && last.what === what) {
          last.n++;
          last.ret = t.return;
        } else runs.push({ what, n: 1, call: t.call, ret: t.return });
      }
      lines.push(
        `  c${c}: ${runs.map((r) => `${r.what} ×${r.n} [${rel(r.call)}..${rel(r.ret)} s]`).join(' | ')}`,
      );
    }
  }
  return lines.join('\n');
}

/** One line for logs and reports. */
export function describeRun(s: RunSummary): string {
  const byKind = new Map<string, number>();
  for (const f of s.faults) byKind.set(f.kind, (byKind.get(f.kind) ?? 0) + 1);
  const kinds = [...byKind.entries()].map(([k, n]) => `${k}×${n}`).join(' ');
  const l = s.leaseOps;
  return `${s.target} seed ${s.seed}: ${s.ops} ops (${s.unknown} unknown${s.eventLog ? ' after resolving from the event log' : ''}, ${s.dropped} failed without effect; lease grants ${l.grants}, revokes ${l.revokes}, leased puts ${l.leasedPuts}), ${s.faults.length} faults [${kinds}] → ${s.check.result} (check ${s.check.elapsedMs.toFixed(0)} ms, run ${(s.elapsedMs / 1000).toFixed(1)} s)`;
}
