/**
 * The conformance suite through Conclave's own etcd client against the client API served over an
 * in-process 3-member embedded cluster (one gRPC server per member), with the expectations and
 * capabilities of real etcd: connection cuts through a proxy, and etcdctl interop.
 */

import { connect } from '../../backends/connect.js';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { runConformance } from '../conformance/index.js';
import { type CutProxy, startProxy } from '../harness/proxy.js';
import { type ServedCluster, serveCluster } from './harness.js';

let cluster: EmbeddedCluster | undefined;
let served: ServedCluster | undefined;

runConformance({
  name: 'conclave serve client API (embedded 3 members)',
  supports: { cutConnection: true, etcdctl: true },
  get minTtlSeconds() {
    return cluster?.minTtlSeconds ?? 1;
  },
  async setup() {
    cluster = await startCluster({ nodes: 3 });
    served = await serveCluster(cluster);
  },
  async teardown() {
    await served?.close();
    await cluster?.close();
  },
  factory: () => connect({ backend: 'etcd', endpoints: served!.endpoints }),
  endpoints: () => served!.endpoints,
  async proxied() {
    const proxy: CutProxy = await startProxy(served!.endpoints[0]!);
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
