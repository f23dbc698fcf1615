/**
 * What a benchmark phase may call: the subset of the KV contract (src/kv.ts) the phases use. The
 * Conclave clients are full `KV`s; the `etcd3` baseline adapter implements exactly this subset, so
 * every phase runs the same code on every client path.
 */
import type { KV } from '../../src/kv.js';

export type BenchKV = Pick<KV, 'put' | 'get' | 'txn' | 'watch' | 'delete' | 'close'>;

export const Backend = { Etcd: 'etcd', Embedded: 'embedded', Served: 'served' } as const;
export type Backend = (typeof Backend)[keyof typeof Backend];

export const ClientKind = { Conclave: 'conclave', Etcd3: 'etcd3' } as const;
export type ClientKind = (typeof ClientKind)[keyof typeof ClientKind];

/** One system under test: a backend reached through one client path. */
export interface BenchTarget {
  readonly backend: Backend;
  readonly client: ClientKind;
  readonly kv: BenchKV;
  /** The full KV when the client is Conclave's (recipes need Sessions). */
  readonly conclave?: KV;
  /** The underlying `etcd3` client when the client is the baseline (its Election for recipes). */
  readonly etcd3?: import('etcd3').Etcd3;
  /** Server processes whose CPU time is sampled around each phase (empty: in-process or unknown). */
  readonly serverPids: readonly number[];
  /** Caveats printed beside this target's figures (e.g. memory-only storage). */
  readonly notes: readonly string[];
  /**
   * Opens one more client of the same system, as a separate process would hold (its own
   * connection). Absent where a target has a single client (the embedded cluster).
   */
  readonly openClient?: () => Promise<{
    conclave?: KV;
    etcd3?: import('etcd3').Etcd3;
    close(): Promise<void>;
  }>;
  /** Durable embedded storage: WAL counters summed over members (fsyncs, entries written). */
  readonly storageStats?: () => { syncs: number; entries: number };
}

export function targetLabel(t: Pick<BenchTarget, 'backend' | 'client'>): string {
  return `${t.backend}/${t.client}`;
}
