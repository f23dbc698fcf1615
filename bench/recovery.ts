/**
 * Recovery time of one durable member: `npm run bench:recovery -- [--keys N] [--tail-mib M] [--dir D]`.
 * Loads N keys (100-byte values, 128 puts per txn) into a single-member durable cluster, takes a
 * snapshot, writes a WAL tail of about M MiB after it (more txns overwriting the same keys), stops,
 * then times a restart until the member has applied its whole log. The restart runs in a fresh
 * child process (as a real restart does: the loading process's heap would otherwise double the
 * memory and the GC work). Prints JSON and a table.
 *
 * Re-running restarts only: with `--dir D` the loaded directory is kept (with `bench-recovery.json`,
 * what was loaded); `--dir D --restarts R` then skips loading and times R restarts, each on a fresh
 * copy of D (a restart writes to its WAL: a new term, the new leader's entry), printing one JSON
 * line per restart with the load average beside it. Run it for two builds on one D to compare.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { EmbeddedCluster, startCluster } from '../backends/raft/embedded.js';
import { DiskStorage } from '../backends/raft/storage/disk-storage.js';
import type { Op } from '../src/types.js';

const { values } = parseArgs({
  options: {
    keys: { type: 'string' },
    'tail-mib': { type: 'string' },
    dir: { type: 'string' },
    /** Restarts only: this many, each on a fresh copy of `--dir` (loaded by an earlier run). */
    restarts: { type: 'string' },
    /** Internal: run as the restarting child, in an existing directory, up to this log index. */
    'restart-to': { type: 'string' },
  },
});
/** How long the restart may take before the run is declared failed. */
const restartTimeoutMs = 300_000;
const keys = Number(values.keys ?? 1_000_000);
const tailMiB = Number(values['tail-mib'] ?? 64);
const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'conclave-recovery-'));
const perTxn = 128;
const value = 'v'.repeat(100);
const key = (i: number) => `bench/recovery/${String(i).padStart(8, '0')}`;

async function writeBatch(kv: Awaited<ReturnType<typeof startCluster>>['kv'], from: number, n: number) {
  const success: Op[] = [];
  for (let i = from; i < from + n && i < keys; i++) success.push({ type: 'put', key: key(i), value });
  await kv.txn({ compare: [], success, failure: [] });
}

const opts = { nodes: 1, dataDir: dir, snapshotEntries: 1_000_000_000, log: () => undefined };

if (values['restart-to'] !== undefined) {
  // The child: open, recover and apply the whole log; report the phases.
  const lastIndex = Number(values['restart-to']);
  const tr = performance.now();
  const cpu0 = process.cpuUsage();
  const again = await EmbeddedCluster.open(opts);
  const openMs = performance.now() - tr;
  const m2 = again.members.get(1)!;
  // The open's phases (ms since the storage began opening): the snapshot file read and checked,
  // the WAL read (the two overlap), the storage open; the rest of `openMs` restores the store.
  const phases = m2.storage instanceof DiskStorage ? m2.storage.recovery.phasesMs : undefined;
  const deadline = tr + restartTimeoutMs;
  let leaderMs = 0;
  while (m2.store.appliedIndex < lastIndex || !m2.isLeader) {
    if (performance.now() > deadline) throw new Error(`restart: not recovered within ${restartTimeoutMs} ms`);
    if (m2.isLeader && leaderMs === 0) leaderMs = performance.now() - tr;
    await new Promise((r) => setTimeout(r, 5));
  }
  if (leaderMs === 0) leaderMs = performance.now() - tr;
  const recoveryMs = performance.now() - tr;
  // CPU time (user + system, all threads) to recovery: steadier than wall time on a shared machine.
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  // Memory as recovered, before the count below reads (and so decodes) every key.
  const mem = process.memoryUsage();
  const count = (await again.kv.range('bench/recovery/', { prefix: true, countOnly: true })).count;
  await again.close();
  console.log(
    JSON.stringify({
      count,
      openMs: Math.round(openMs),
      snapshotReadMs: Math.round(phases?.snapshot ?? 0),
      walReadMs: Math.round(phases?.wal ?? 0),
      storageMs: Math.round(phases?.total ?? 0),
      leaderMs: Math.round(leaderMs),
      recoveryMs: Math.round(recoveryMs),
      cpuMs: Math.round(cpuMs),
      heapMiB: Math.round(mem.heapUsed / 1048576),
      rssMiB: Math.round(mem.rss / 1048576),
    }),
  );
  process.exit(0);
}

/**
 * The restart inherits the environment; `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (transparent huge
 * pages for large allocations, see docs/storage.md "Recovery time") changes its figures a lot on
 * some machines, so it is printed beside them.
 */
const tunables = process.env.GLIBC_TUNABLES ? { glibcTunables: process.env.GLIBC_TUNABLES } : {};

/** What a loading run leaves in a kept directory, for `--restarts`. */
const metaFile = join(dir, 'bench-recovery.json');

interface RestartReport {
  count: number;
  openMs: number;
  snapshotReadMs: number;
  walReadMs: number;
  storageMs: number;
  leaderMs: number;
  recoveryMs: number;
  cpuMs: number;
  heapMiB: number;
  rssMiB: number;
}

/** Runs the restarting child in `runDir`; exits the process if it fails. */
function restartChild(runDir: string, keyCount: number, lastIndex: number): RestartReport {
  const child = spawnSync(
    process.execPath,
    [
      ...process.execArgv,
      process.argv[1]!,
      '--dir',
      runDir,
      '--keys',
      String(keyCount),
      '--restart-to',
      String(lastIndex),
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: restartTimeoutMs + 10_000 },
  );
  if (child.status !== 0) {
    console.error(`restart child failed (status ${child.status}, signal ${child.signal})`);
    process.exit(1);
  }
  return JSON.parse(child.stdout.trim().split('\n').pop()!) as RestartReport;
}

if (values.restarts !== undefined) {
  if (values.dir === undefined || !existsSync(metaFile)) {
    console.error(
      '--restarts needs --dir of a directory loaded by an earlier run (with bench-recovery.json)',
    );
    process.exit(2);
  }
  const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as { keys: number; lastIndex: number };
  const runDir = `${dir.replace(/\/+$/, '')}.restart`;
  for (let i = 0; i < Number(values.restarts); i++) {
    rmSync(runDir, { recursive: true, force: true });
    cpSync(dir, runDir, { recursive: true });
    const load = loadavg().map((l) => Math.round(l * 100) / 100);
    const r = restartChild(runDir, meta.keys, meta.lastIndex);
    console.log(JSON.stringify({ run: i + 1, loadAverage: load, ...r, ...tunables }));
  }
  rmSync(runDir, { recursive: true, force: true });
  process.exit(0);
}

const c = await startCluster(opts);
const t0 = performance.now();
for (let i = 0; i < keys; i += perTxn * 8)
  await Promise.all(Array.from({ length: 8 }, (_, j) => writeBatch(c.kv, i + j * perTxn, perTxn)));
const loadMs = performance.now() - t0;
const member = c.members.get(1)!;
const ts = performance.now();
await member.snapshot();
const snapshotMs = performance.now() - ts;
const statsBefore = c.storageStats();
let tailTxns = 0;
while (c.storageStats().bytes - statsBefore.bytes < tailMiB * 1024 * 1024) {
  await Promise.all(
    Array.from({ length: 8 }, () => writeBatch(c.kv, Math.floor(Math.random() * (keys - perTxn)), perTxn)),
  );
  tailTxns += 8;
}
const tailBytes = c.storageStats().bytes - statsBefore.bytes;
const lastIndex = member.storage.lastIndex();
await c.close();

let restart: RestartReport;
if (values.dir === undefined) {
  restart = restartChild(dir, keys, lastIndex);
  rmSync(dir, { recursive: true, force: true });
} else {
  // Kept for `--restarts`: the restart below runs on a copy, so the directory stays as loaded.
  writeFileSync(metaFile, JSON.stringify({ keys, tailMiB, lastIndex }));
  const runDir = `${dir.replace(/\/+$/, '')}.restart`;
  cpSync(dir, runDir, { recursive: true });
  restart = restartChild(runDir, keys, lastIndex);
  rmSync(runDir, { recursive: true, force: true });
}

const result = {
  keys,
  keysAfterRecovery: restart.count,
  loadSeconds: Math.round(loadMs / 100) / 10,
  snapshotMs: Math.round(snapshotMs),
  walTailMiB: Math.round((tailBytes / 1024 / 1024) * 10) / 10,
  walTailEntries: tailTxns,
  lastIndex,
  /**
   * Open: snapshot file read, store restored, WAL read; then election and applying the tail. The
   * open's phases, in ms since the storage began opening: snapshot read and checked, WAL read and
   * replayed (they overlap), storage opened; the rest of `openMs` restores the store.
   */
  openMs: restart.openMs,
  snapshotReadMs: restart.snapshotReadMs,
  walReadMs: restart.walReadMs,
  storageMs: restart.storageMs,
  leaderMs: restart.leaderMs,
  recoveryMs: restart.recoveryMs,
  cpuMs: restart.cpuMs,
  heapMiB: restart.heapMiB,
  rssMiB: restart.rssMiB,
  ...tunables,
};
console.log(JSON.stringify(result));
console.log(
  `\nkeys       WAL tail   recovery   (open ${result.openMs} ms, leader at ${result.leaderMs} ms; snapshot took ${result.snapshotMs} ms; load ${result.loadSeconds} s; RSS ${result.rssMiB} MiB)`,
);
console.log(`${String(keys).padEnd(10)} ${`${result.walTailMiB} MiB`.padEnd(10)} ${result.recoveryMs} ms`);
if (restart.count !== keys) {
  console.error(`recovered ${restart.count} keys, expected ${keys}`);
  process.exit(1);
}
