import { connect } from '../../backends/connect.js';
import { runConformance } from '../conformance/index.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type CutProxy, startProxy } from '../harness/proxy.js';

const available = !!process.env.ETCD_ENDPOINTS || !!etcdBinary();
if (!available && process.env.REQUIRE_ETCD !== '1') {
  console.warn(
    '\n!!!!!!!! SKIPPING the etcd conformance suite: no etcd (see README "How tests find etcd") !!!!!!!!\n',
  );
}

let cluster: EtcdCluster | undefined;
// With REQUIRE_ETCD=1 the suite runs even without etcd, so setup() fails loudly instead of skipping.
runConformance(
  {
    name: 'etcd',
    supports: { cutConnection: true, etcdctl: true },
    get minTtlSeconds() {
      return cluster?.minTtlSeconds ?? 1;
    },
    async setup() {
      cluster = await startEtcd({ members: 1 });
      if (!cluster) throw new Error('etcd is required but was not found');
    },
    async teardown() {
      await cluster?.stop();
    },
    factory: () => connect({ backend: 'etcd', endpoints: cluster!.endpoints }),
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
  },
  { skip: !available && process.env.REQUIRE_ETCD !== '1' },
);
