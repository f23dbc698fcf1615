/**
 * Recovery time of one durable member (issue 5): `npm run bench:recovery -- [--keys N] [--tail-mib M] [--dir D]`.
 * Loads N keys (100-byte values, 128 puts per txn) into a single-member durable cluster, takes a
 * snapshot, writes a WAL tail of about M MiB after it (more txns overwriting the same keys), stops,
 * then times a restart until the member has applied its whole log. Prints JSON and a table.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startCluster } from '../backends/raft/embedded.js';
import type { Op } from '../src/types.js';

const { values } = parseArgs({
  options: { keys: { type: 'string' }, 'tail-mib': { type: 'string' }, dir: { type: 'string' } },
});
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

const tr = performance.now();
const again = await startCluster(opts);
const m2 = again.members.get(1)!;
while (m2.store.appliedIndex < lastIndex) await new Promise((r) => setTimeout(r, 5));
const recoveryMs = performance.now() - tr;
const count = (await again.kv.range('bench/recovery/', { prefix: true, countOnly: true })).count;
await again.close();
if (values.dir === undefined) rmSync(dir, { recursive: true, force: true });

const result = {
  keys,
  keysAfterRecovery: count,
  loadSeconds: Math.round(loadMs / 100) / 10,
  snapshotMs: Math.round(snapshotMs),
  walTailMiB: Math.round((tailBytes / 1024 / 1024) * 10) / 10,
  walTailEntries: tailTxns,
  recoveryMs: Math.round(recoveryMs),
  heapMiB: Math.round(process.memoryUsage().heapUsed / 1024 / 1024),
};
console.log(JSON.stringify(result));
console.log(
  `\nkeys       WAL tail   recovery   (snapshot took ${result.snapshotMs} ms; load ${result.loadSeconds} s)`,
);
console.log(`${String(keys).padEnd(10)} ${`${result.walTailMiB} MiB`.padEnd(10)} ${result.recoveryMs} ms`);
if (count !== keys) {
  console.error(`recovered ${count} keys, expected ${keys}`);
  process.exit(1);
}
