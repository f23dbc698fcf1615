/**
 * `npm run bench -- …`: side-by-side benchmarks through the KV interface (docs/benchmarks.md).
 *
 * Opens every requested target (starting a private etcd when no endpoints are given), runs each
 * phase on each target — alternating the target order from phase to phase so slow drift on a
 * shared machine does not always favour the same one — prints one JSON line per phase and target,
 * then a table with ratios, and writes everything to a JSON file. Every process it starts is
 * stopped by PID at the end, on error, and on Ctrl-C.
 */

import { setMaxListeners } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BenchConfig, parseBenchArgs, usage } from './args.js';
import { Backend, type BenchTarget, targetLabel } from './clients/types.js';
import { runConsensusScript } from './delegate.js';
import { startOwnEtcd, startOwnServed } from './etcd-cluster.js';
import { describe } from './load.js';
import { describeMachine, etcdVersion, loadAverages, type MachineInfo } from './machine.js';
import { phaseByName } from './phases/index.js';
import { NotAvailable } from './phases/types.js';
import { type Progress, startProgress } from './progress.js';
import { computeRatios, jsonLine, type Row, renderTable } from './report.js';
import { openEmbeddedTarget, openEtcdTarget, type UnavailableTarget } from './targets.js';

const here = dirname(fileURLToPath(import.meta.url));
/** How long deleting a run's keys may take at the end. */
const cleanupTimeoutMs = 10_000;
/** Listeners allowed on the run's abort signal (one per in-flight call or watch). */
const abortListenersMax = 4096;

type Cleanup = () => Promise<void>;

async function openTargets(cfg: BenchConfig, machine: MachineInfo, cleanups: Cleanup[], signal: AbortSignal) {
  const targets: BenchTarget[] = [];
  const unavailable: UnavailableTarget[] = [];
  if (cfg.backends.includes('etcd')) {
    let endpoints = cfg.endpoints;
    let pids: readonly number[] = cfg.serverPids;
    if (endpoints === undefined) {
      const etcd = await startOwnEtcd(cfg.members, signal);
      cleanups.push(etcd.stop);
      endpoints = etcd.endpoints;
      pids = etcd.pids;
      console.error(
        `started etcd: ${cfg.members} member(s) at ${endpoints.join(',')} (pids ${pids.join(',')})`,
      );
    }
    machine.etcdVersion = await etcdVersion(endpoints[0]!);
    for (const client of cfg.clients) {
      const r = await openEtcdTarget(client, endpoints, pids);
      if (r.ok) targets.push(r.target);
      else unavailable.push(r.unavailable);
    }
  }
  if (cfg.backends.includes('served')) {
    const served = await startOwnServed(signal);
    cleanups.push(served.stop);
    console.error(
      `started conclave serve: 3 members at ${served.endpoints.join(',')} (pids ${served.pids.join(',')})`,
    );
    for (const client of cfg.clients) {
      const r = await openEtcdTarget(client, served.endpoints, served.pids, Backend.Served);
      if (r.ok) targets.push(r.target);
      else unavailable.push(r.unavailable);
    }
  }
  if (cfg.backends.includes('embedded')) {
    const r = await openEmbeddedTarget(cfg.nodes, cfg.dataDir);
    if (r.ok) targets.push(r.target);
    else unavailable.push(r.unavailable);
  }
  for (const t of targets) cleanups.push(() => t.kv.close().catch(() => undefined));
  for (const u of unavailable) console.error(`NOT AVAILABLE ${u.backend}/${u.client}: ${u.reason}`);
  return { targets, unavailable };
}

async function runOnce(
  cfg: BenchConfig,
  name: string,
  target: BenchTarget,
  runId: string,
  signal: AbortSignal,
): Promise<Row> {
  const phase = phaseByName(name);
  const base = { phase: name, backend: target.backend, client: target.client };
  console.error(`… ${name} on ${targetLabel(target)}: ${phase.description}`);
  try {
    const prefix = `conclave-bench/${runId}/${target.backend}-${target.client}/${name}`;
    const ctx = { target, prefix, durationMs: cfg.durationMs, opsMax: cfg.opsMax, signal };
    const before = target.storageStats?.();
    let result = await phase.run(ctx);
    if (signal.aborted) throw new Error('interrupted before the phase finished');
    if (before && target.storageStats) {
      // fsyncs per second (all members) and entries per fsync: how much group commit batched.
      const after = target.storageStats();
      const syncs = after.syncs - before.syncs;
      const entries = after.entries - before.entries;
      result = {
        ...result,
        extra: {
          ...result.extra,
          fsyncsPerSec: Math.round((syncs / result.elapsedMs) * 1000),
          entriesPerFsync: syncs > 0 ? Math.round((entries / syncs) * 10) / 10 : 0,
        },
      };
    }
    return { status: 'ok', ...base, notes: target.notes, ...result };
  } catch (err) {
    const status = err instanceof NotAvailable ? 'not-available' : 'failed';
    return { status, ...base, reason: status === 'failed' ? describe(err) : (err as Error).message };
  }
}

/**
 * Each phase runs `rounds` times per target, the target order alternating from pass to pass; the
 * reported row is the round with the median throughput (with the range in `extra`), or the first
 * failure.
 */
async function runPhases(
  cfg: BenchConfig,
  targets: readonly BenchTarget[],
  runId: string,
  signal: AbortSignal,
) {
  const rows: Row[] = [];
  const progress = startProgress('bench', cfg.phases.length * cfg.rounds * targets.length);
  try {
    await eachRun(cfg, targets, runId, signal, rows, progress);
  } finally {
    progress.stop();
  }
  return rows;
}

async function eachRun(
  cfg: BenchConfig,
  targets: readonly BenchTarget[],
  runId: string,
  signal: AbortSignal,
  rows: Row[],
  progress: Progress,
): Promise<void> {
  for (const [i, name] of cfg.phases.entries()) {
    const perTarget = new Map<BenchTarget, Row[]>(targets.map((t) => [t, []]));
    for (let round = 0; round < cfg.rounds && !signal.aborted; round++) {
      const order = (i + round) % 2 === 0 ? targets : [...targets].reverse();
      for (const target of order) {
        if (signal.aborted) break;
        progress.note(`${name} on ${targetLabel(target)}${cfg.rounds > 1 ? `, round ${round + 1}` : ''}`);
        const row = await runOnce(cfg, name, target, runId, signal);
        perTarget.get(target)!.push(row);
        progress.advance(1, row.status === 'failed' ? 1 : 0);
        console.log(jsonLine(row, cfg.rounds > 1 ? { round: round + 1 } : {}));
      }
    }
    for (const results of perTarget.values()) if (results.length > 0) rows.push(medianRow(results));
  }
}

function medianRow(results: readonly Row[]): Row {
  const failed = results.find((r) => r.status !== 'ok');
  if (failed !== undefined || results.length === 1) return failed ?? results[0]!;
  const ok = results.flatMap((r) => (r.status === 'ok' ? [r] : []));
  ok.sort((a, b) => a.opsPerSec - b.opsPerSec);
  const median = ok[Math.floor((ok.length - 1) / 2)]!;
  const range = `${Math.round(ok[0]!.opsPerSec)}..${Math.round(ok[ok.length - 1]!.opsPerSec)}`;
  return { ...median, extra: { ...median.extra, rounds: ok.length, opsPerSecRange: range } };
}

/** Deletes the run's keys so an external etcd is left as it was found (bounded in time). */
async function deleteRunKeys(targets: readonly BenchTarget[], runId: string): Promise<void> {
  for (const t of targets) {
    try {
      await t.kv.delete(`conclave-bench/${runId}/`, {
        prefix: true,
        signal: AbortSignal.timeout(cleanupTimeoutMs),
      });
    } catch (err) {
      console.error(`could not delete this run's keys on ${targetLabel(t)}: ${describe(err)}`);
    }
  }
}

function writeResults(path: string, doc: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(doc, null, 2)}\n`);
  console.error(`results written to ${path}`);
}

async function bench(cfg: BenchConfig, signal: AbortSignal, cleanups: Cleanup[]): Promise<number> {
  const startedAt = new Date();
  const runId = startedAt.toISOString().replace(/[:.]/g, '-');
  const machine = describeMachine();
  const { targets, unavailable } = await openTargets(cfg, machine, cleanups, signal);
  const skipped: Row[] = unavailable.flatMap((u) =>
    cfg.phases.map((phase) => ({ status: 'not-available' as const, phase, ...u })),
  );
  const rows = [...(await runPhases(cfg, targets, runId, signal)), ...skipped];
  await deleteRunKeys(targets, runId);
  machine.loadAvgAtEnd = loadAverages();
  const ratios = computeRatios(rows);
  console.log(`\n${renderTable(rows, ratios)}`);
  const path = cfg.jsonPath ?? join(here, 'results', `${runId}.json`);
  writeResults(path, { startedAt: startedAt.toISOString(), machine, config: cfg, results: rows, ratios });
  if (signal.aborted) return 130;
  return targets.length === 0 ? 2 : rows.some((r) => r.status === 'failed') ? 1 : 0;
}

async function main(): Promise<number> {
  let cfg: BenchConfig | 'help';
  try {
    cfg = parseBenchArgs(process.argv.slice(2));
  } catch (err) {
    console.error((err as Error).message);
    return 64;
  }
  if (cfg === 'help') {
    console.log(usage);
    return 0;
  }
  const ac = new AbortController();
  // Every in-flight call and every watch listens on this signal: 128 puts, 100 watches, and more.
  setMaxListeners(abortListenersMax, ac.signal);
  const onSignal = (): void => {
    if (ac.signal.aborted) return;
    console.error('interrupted: finishing the current operations and stopping what this run started…');
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const cleanups: Cleanup[] = [];
  try {
    if (cfg.consensus) {
      const passOn = [
        '--duration-s',
        String(cfg.durationMs / 1000),
        ...(cfg.jsonPath ? ['--json', cfg.jsonPath] : []),
      ];
      return await runConsensusScript(passOn, ac.signal);
    }
    return await bench(cfg, ac.signal, cleanups);
  } catch (err) {
    console.error(`bench failed: ${describe(err)}`);
    return 1;
  } finally {
    for (const c of cleanups.reverse()) await c().catch((err) => console.error(`cleanup: ${describe(err)}`));
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

process.exitCode = await main();
// Clients may keep sockets or timers alive for a while after close(); the run is over.
process.exit();
