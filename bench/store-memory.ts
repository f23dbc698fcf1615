/**
 * `node --expose-gc --import tsx bench/store-memory.ts [keys]`: heap used by the Raft store's
 * state machine holding N keys (default 1,000,000) of 100-byte values, one revision each.
 * Issue 4's bound: under 1 GiB of heap for 1M keys.
 */
import { Store } from '../backends/raft/store/store.js';

const n = Number(process.argv[2] ?? 1_000_000);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  console.error('run with node --expose-gc');
  process.exit(2);
}
gc();
const m0 = process.memoryUsage();
const before = m0.heapUsed;
const store = new Store({ minTtlSeconds: 1 });
const value = new Uint8Array(100).fill(120);
const start = performance.now();
for (let i = 0; i < n; i++) {
  // Each value is its own copy, as values arriving from clients would be.
  store.applyPut(new TextEncoder().encode(`key/${i.toString().padStart(8, '0')}`), value.slice());
}
const ms = performance.now() - start;
gc();
const m1 = process.memoryUsage();
const after = m1.heapUsed;
const arrayBufMiB = (m1.arrayBuffers - m0.arrayBuffers) / 1024 / 1024;
const mib = (after - before) / 1024 / 1024;
console.log(
  JSON.stringify({
    phase: 'store-memory',
    keys: n,
    valueBytes: 100,
    heapMiB: Math.round(mib),
    arrayBuffersMiB: Math.round(arrayBufMiB),
    bytesPerKey: Math.round((after - before) / n),
    loadMs: Math.round(ms),
    revision: store.revision,
  }),
);
console.log(
  `${n.toLocaleString('en-US')} keys × 100 B: ${mib.toFixed(0)} MiB heap (${Math.round((after - before) / n)} B/key), loaded in ${(ms / 1000).toFixed(1)} s`,
);
