/** The public API of `conclave`. Backends are `conclave/etcd` and `conclave/raft`. */

// The package root re-exports the recipes (they import only src/, never this file, so no cycle).
export * from '../recipes/index.js';
export {
  type ConnectOptions,
  connect,
  type EmbeddedConnectOptions,
  type EtcdConnectOptions,
  parseConnectUrl,
  type TlsOptions,
} from './connect.js';
export { ConclaveError, type ConclaveErrorOptions, ErrorCode } from './errors.js';
export { compareBytes, leaseHex, prefixEnd, toBytes, toText } from './keys.js';
export type { KV } from './kv.js';
export { limits } from './limits.js';
export { type NamespacedKV, namespace } from './namespace.js';
export { Session, type SessionOptions, SessionState } from './session.js';
export * from './types.js';
