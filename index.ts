/**
 * The public API of `conclave`: the KV contract, the recipes and `connect()`. Backends are also
 * reachable directly as `conclave/etcd` and `conclave/raft`.
 *
 * This file is the top of the import graph: it composes the contract (src/), the recipes and the
 * backends' `connect()`, and no file below imports it (.ci/layers.mjs checks).
 */
export {
  type ConnectOptions,
  connect,
  type EmbeddedConnectOptions,
  type EtcdConnectOptions,
  parseConnectUrl,
  type TlsOptions,
} from './backends/connect.js';
export * from './recipes/index.js';
export { ConclaveError, type ConclaveErrorOptions, ErrorCode } from './src/errors.js';
export { compareBytes, leaseHex, prefixEnd, toBytes, toText } from './src/keys.js';
export type { KV } from './src/kv.js';
export { type NamespacedKV, namespace } from './src/namespace.js';
export { Session, type SessionOptions, SessionState } from './src/session.js';
export * from './src/types.js';
