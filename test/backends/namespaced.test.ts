/**
 * The conformance suite through `namespace()`: every KV, watch, lease and recipe test runs on a
 * view `conf-ns/` of a shared store, as a user of `namespace(kv, 'app-a/')` would run them. The
 * backing stores are the embedded Raft cluster (1 node) and, when etcd is installed, a real etcd.
 */

import { connect } from '../../backends/connect.js';
import { EmbeddedCluster, EmbeddedKV } from '../../backends/raft/embedded.js';
import { namespace } from '../../src/namespace.js';
import { runConformance } from '../conformance/index.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';

const ns = 'conf-ns/';

let cluster: EmbeddedCluster | undefined;
runConformance({
  name: 'namespace over raft embedded, 1 node',
  supports: {},
  get minTtlSeconds() {
    return cluster?.minTtlSeconds ?? 1;
  },
  async setup() {
    cluster = new EmbeddedCluster({ nodes: 1 });
    await cluster.waitLeader();
  },
  async teardown() {
    await cluster?.close();
  },
  factory: async () => namespace(new EmbeddedKV(cluster!), ns),
});

const etcdAvailable = !!process.env.ETCD_ENDPOINTS || !!etcdBinary();
let etcd: EtcdCluster | undefined;
runConformance(
  {
    name: 'namespace over etcd',
    supports: {},
    get minTtlSeconds() {
      return etcd?.minTtlSeconds ?? 1;
    },
    async setup() {
      etcd = await startEtcd({ members: 1 });
      if (!etcd) throw new Error('etcd is required but was not found');
    },
    async teardown() {
      await etcd?.stop();
    },
    factory: async () => namespace(await connect({ backend: 'etcd', endpoints: etcd!.endpoints }), ns),
  },
  { skip: !etcdAvailable && process.env.REQUIRE_ETCD !== '1' },
);
