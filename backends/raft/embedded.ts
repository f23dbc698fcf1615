/**
 * The embedded backend (`connect('embedded:…')`): an in-process Raft cluster (embedded-cluster.ts)
 * whose client (embedded-kv.ts) is the KV contract. This file is the backend's entry: its connect
 * options, `connectEmbedded`, and the cluster and client re-exported for tests, benches and
 * `conclave/raft`.
 */
import type { KV } from '../../src/kv.js';
import { startCluster } from './embedded-cluster.js';

export {
  type ClusterOptions,
  EmbeddedCluster,
  startCluster,
  startTimeoutMsDefault,
} from './embedded-cluster.js';
export { EmbeddedKV, type EmbeddedKVCluster } from './embedded-kv.js';

/** Options of an in-process Raft store (`connect('embedded:…')`). */
export interface EmbeddedConnectOptions {
  /** Selects the embedded Raft backend. */
  backend: 'embedded';
  /** Members of the in-process cluster (default 1). */
  nodes?: number;
  /** Directory for durable storage; memory-only when absent. */
  dataDir?: string;
}

export async function connectEmbedded(o: EmbeddedConnectOptions): Promise<KV> {
  const c = await startCluster({
    nodes: o.nodes ?? 1,
    ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
  });
  const kv = c.kv;
  const close = kv.close.bind(kv);
  kv.close = async () => {
    await close();
    await c.close();
  };
  return kv;
}
