/**
 * The member's memory bound. A member keeps its whole store in the V8 heap, so what runs out first
 * under a growing store is the heap (a crash: "JavaScript heap out of memory"), not a disk. The
 * default `--quota-backend-bytes` (an eighth of the heap limit) is derived from the heap limit so that the NOSPACE alarm (writes
 * refused, reads and deletes still served, as etcd does) comes well before that.
 *
 * The heap limit is node's `--max-old-space-size`, which V8 reads only when the process starts:
 * give it to node (`node --max-old-space-size=4096 bin/conclave.js serve …`, or NODE_OPTIONS), or
 * to `conclave serve`, whose bin/conclave.js then starts the member in a node process with it.
 */
import { getHeapStatistics } from 'node:v8';

/**
 * The quota is this share of the heap limit. The quota is compared with the size of the member's
 * newest encoded snapshot (Status "db size"); the live store takes several times that in memory
 * (objects, maps and indexes around the same bytes, and the history kept since the last
 * compaction: bench/served-memory.ts prints RSS per db-size byte, about 4 with 300k keys of 100
 * bytes), and a snapshot being encoded or installed needs its buffers beside it. An eighth leaves
 * room for both, and for GC headroom, at the quota.
 */
export const quotaShareOfHeap = 0.125;

/** etcd's default quota (its "low space quota", 2 GiB): the derived default never exceeds it. */
export const etcdDefaultQuotaBytes = 2 * 1024 * 1024 * 1024;

/** This process's V8 heap limit in bytes (node's --max-old-space-size plus the young generation). */
export function heapLimitBytes(): number {
  return getHeapStatistics().heap_size_limit;
}

/** The default `--quota-backend-bytes` for a heap limit (bytes): a share of it, at most etcd's default. */
export function defaultQuotaBytes(heapLimit: number = heapLimitBytes()): number {
  return Math.min(etcdDefaultQuotaBytes, Math.floor(heapLimit * quotaShareOfHeap));
}

/**
 * The `--max-old-space-size` value (MiB) node was started with, from its own arguments or
 * NODE_OPTIONS (the last one given wins, as in node), or undefined.
 */
export function nodeMaxOldSpaceMb(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string | undefined = process.env.NODE_OPTIONS,
): number | undefined {
  let mb: number | undefined;
  const scan = (args: readonly string[]) => {
    for (let i = 0; i < args.length; i++) {
      const m = /^--max[-_]old[-_]space[-_]size(?:=(\d+))?$/.exec(args[i]!);
      if (!m) continue;
      const v = m[1] ?? args[i + 1];
      if (v !== undefined && /^\d+$/.test(v)) mb = Number(v);
    }
  };
  scan(nodeOptions ? nodeOptions.split(/\s+/).filter(Boolean) : []);
  scan(execArgv);
  return mb;
}
