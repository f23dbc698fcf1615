/** `conclave/etcd`: the KV contract over a real etcd cluster's v3 gRPC API. */
import type { EtcdConnectOptions } from '../../src/connect.js';
import { EtcdKV } from './client.js';

export type { EtcdConnectOptions } from '../../src/connect.js';
export { EtcdKV } from './client.js';

/** Creates a client; channels connect lazily, so this does not wait for the cluster. */
export async function connectEtcd(opts: EtcdConnectOptions): Promise<EtcdKV> {
  return new EtcdKV(opts);
}
