import type { EtcdConnectOptions } from '../../src/connect.js';
import type { KV } from '../../src/kv.js';

/** Placeholder until the etcd backend lands (issue 2). */
export async function connectEtcd(_opts: EtcdConnectOptions): Promise<KV> {
  throw new Error('the etcd backend is not built yet');
}
