/**
 * The whole conformance suite against a 3-process `conclave serve` cluster, through Conclave's
 * etcd client (`connect('etcd://…')`): the same tests and the same capabilities as against real
 * etcd (test/backends/etcd.test.ts).
 */
import { connect } from '../../src/connect.js';
import { runConformance } from '../conformance/index.js';
import { type CutProxy, startProxy } from '../harness/proxy.js';
import { type ServedCluster, startServed } from '../harness/served.js';

let cluster: ServedCluster | undefined;

runConformance({
  name: 'served',
  supports: { cutConnection: true, etcdctl: true },
  get minTtlSeconds() {
    return cluster?.minTtlSeconds ?? 1;
  },
  async setup() {
    cluster = await startServed({ members: 3 });
  },
  async teardown() {
    await cluster?.close();
  },
  factory: () => connect(`etcd://${cluster!.endpoints.join(',')}`),
  endpoints: () => cluster!.endpoints,
  async proxied() {
    const proxy: CutProxy = await startProxy(cluster!.endpoints[0]!);
    const kv = await connect({ backend: 'etcd', endpoints: [proxy.endpoint] });
    return {
      kv,
      cut: () => proxy.cut(),
      restore: () => proxy.restore(),
      close: async () => {
        await kv.close();
        await proxy.close();
      },
    };
  },
});
