/** `conclave/etcd`: the KV contract over a real etcd cluster's v3 gRPC API. */

import { EtcdKV } from './client.js';
import type { EtcdConnectOptions } from './options.js';

export { EtcdKV } from './client.js';
export type { EtcdConnectOptions } from './options.js';

/**
 * Creates a client. With several endpoints it first looks (briefly, best-effort) for the Raft
 * leader's endpoint and uses it, so writes and linearizable reads skip a forwarding hop.
 */
export async function connectEtcd(opts: EtcdConnectOptions): Promise<EtcdKV> {
  const kv = new EtcdKV(opts);
  await kv.ready();
  return kv;
}
