/**
 * `npm run bench:served-memory -- [keys]`: memory of one `conclave serve` member holding N keys
 * (default 1,000,000) of 100-byte values, written through the etcd client (txns of 100 puts,
 * 8 in flight). The member's RSS (from /proc/<pid>/status) and the `db size` it reports are read:
 * after loading, after compacting to the last revision and taking a snapshot (--snapshot-count is
 * set so the load ends with one), and again after a restart on its data dir, once it serves.
 * The bound: under 1 GiB RSS for 1M keys, after compaction and after restart. It also
 * prints RSS / db size, the ratio behind the default `--quota-backend-bytes` (backends/raft/heap.ts).
 * Results go to stdout as one JSON line; nothing is written to docs.
 */
import { readFileSync } from 'node:fs';
import { connect } from '../backends/connect.js';
import type { KV } from '../src/kv.js';
import { startServed } from '../test/harness/served.js';

const n = Number(process.argv[2] ?? 1_000_000);
if (!Number.isInteger(n) || n < 1 || n > 10_000_000) {
  console.error('usage: served-memory [keys: 1..10,000,000]');
  process.exit(2);
}
/** Puts per txn, and txns in flight, while loading. */
const batch = 100;
const inFlight = 8;
/** Bound on the whole load (a member that stops answering must not hang the script). */
const loadMsMax = 30 * 60_000;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : Number.NaN;
}

const mib = (b: number | undefined) => Math.round(((b ?? 0) / 1024 / 1024) * 10) / 10;

const c = await startServed({
  members: 1,
  heartbeatMs: 100,
  electionTimeoutMs: 1000,
  // The first snapshot is taken after the load (n / batch txns), the compaction and 50 more puts,
  // so "db size" is the whole compacted store.
  extraArgs: [`--snapshot-count=${Math.ceil(n / batch) + 50}`],
});
let kv: KV | undefined;
try {
  kv = await connect({ backend: 'etcd', endpoints: c.endpoints });
  const pid = c.pids()[0]!;
  if (pid === undefined) throw new Error('the member has no pid');
  const value = 'x'.repeat(100);
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < n && performance.now() - t0 < loadMsMax) {
      const from = next;
      next = Math.min(n, next + batch);
      const success = [];
      for (let i = from; i < next; i++)
        success.push({ type: 'put' as const, key: `key/${i.toString().padStart(8, '0')}`, value });
      await kv!.txn({ compare: [], success, failure: [] });
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  if (next < n) throw new Error(`loaded only ${next} keys in ${loadMsMax} ms`);
  const loadMs = performance.now() - t0;
  const loaded = { rssMiB: rssMiB(pid), dbMiB: mib((await kv.status()).dbSizeBytes) };
  const rev = (await kv.status()).revision;
  await kv.compact(rev);
  // A few more writes so the member snapshots after the compaction (the snapshot count is reached).
  for (let i = 0; i < batch + 2; i++) await kv.put('memory/after-compaction', String(i));
  await new Promise((r) => setTimeout(r, 3000));
  const compacted = { rssMiB: rssMiB(pid), dbMiB: mib((await kv.status()).dbSizeBytes) };
  await kv.close();
  kv = undefined;
  await c.stop(0);
  const r0 = performance.now();
  c.start(0);
  kv = await connect({ backend: 'etcd', endpoints: c.endpoints, dialTimeoutMs: 120_000 });
  const count = (await kv.range('key/', { prefix: true, countOnly: true })).count;
  const restartMs = performance.now() - r0;
  await new Promise((r) => setTimeout(r, 3000));
  const restarted = {
    rssMiB: rssMiB(c.pids()[0] ?? pid),
    dbMiB: mib((await kv.status()).dbSizeBytes),
    count,
  };
  const result = {
    phase: 'served-memory',
    keys: n,
    valueBytes: 100,
    loadMs: Math.round(loadMs),
    loaded,
    compacted,
    restarted,
    restartMs: Math.round(restartMs),
    rssPerDbByte: compacted.dbMiB > 0 ? +(compacted.rssMiB / compacted.dbMiB).toFixed(2) : null,
  };
  console.log(JSON.stringify(result));
  console.log(
    `${n.toLocaleString('en-US')} keys × 100 B on one conclave serve member: RSS ${loaded.rssMiB} MiB loaded, ${compacted.rssMiB} MiB after compaction (db size ${compacted.dbMiB} MiB), ${restarted.rssMiB} MiB after restart (${restarted.count} keys, served again in ${(restartMs / 1000).toFixed(1)} s)`,
  );
} finally {
  await kv?.close();
  await c.close();
}
