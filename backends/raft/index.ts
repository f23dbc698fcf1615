/**
 * `conclave/raft`: Conclave's own Raft store embedded in the process: a cluster of in-process
 * members, memory-only or durable (a write-ahead log and snapshots under `dataDir`).
 */
export {
  type ClusterOptions,
  connectEmbedded,
  EmbeddedCluster,
  EmbeddedKV,
  type EmbeddedKVCluster,
  startCluster,
  startTimeoutMsDefault,
} from './embedded.js';
export { maxRequestBytesMax, type RequestLimits, requestLimitsDefault } from './limits.js';
