/** `conclave/etcd`: the KV contract over a real etcd cluster's v3 gRPC API. */
import type { EtcdConnectOptions } from '../../src/connect.js';
import { EtcdKV } from './client.js';

export type { EtcdConnectOptions } from '../../src/connect.js';
export { EtcdKV } from './client.js';

/**
 * Creates a client. With several endpoints it first looks (briefly, best-effort) for the Raft
 * leader's endpoint and uses it, so writes and linearizable reads skip a forwarding hop.
 */
export async function connectEtcd(opts: EtcdConnectOptions): Promise<EtcdKV> {
  const kv = new EtcdKV(opts);
  await kv.ready();
  return kv;
}
