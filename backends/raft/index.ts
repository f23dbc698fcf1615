/** `conclave/raft`: Conclave's own Raft store (embedded, memory-only until the WAL lands). */
export { type ClusterOptions, connectEmbedded, EmbeddedCluster, startCluster } from './embedded.js';
