/**
 * The whole conformance suite against a 3-process `conclave serve` cluster, through Conclave's
 * etcd client (`connect('etcd://…')`): the same tests and the same capabilities as against real
 * etcd (test/backends/etcd.test.ts: connection cuts, etcdctl), plus killing the leader member with
 * SIGKILL (it is restarted on its data dir at once, in the background).
 */
import { connect } from '../../backends/connect.js';
import { runConformance } from '../conformance/index.js';
import { type CutProxy, startProxy } from '../harness/proxy.js';
import { type ServedCluster, startServed } from '../harness/served.js';

let cluster: ServedCluster | undefined;
/** The restart of a killed member, awaited before teardown. */
let restarting: Promise<void> = Promise.resolve();

runConformance({
  name: 'served',
  supports: { cutConnection: true, etcdctl: true, killLeader: true },
  get minTtlSeconds() {
    return cluster?.minTtlSeconds ?? 1;
  },
  async setup() {
    cluster = await startServed({ members: 3 });
  },
  async teardown() {
    await restarting.catch(() => undefined);
    await cluster?.close();
  },
  async killLeader() {
    const c = cluster!;
    await restarting;
    const i = await c.waitLeader();
    await c.kill(i);
    restarting = c.restart(i);
  },
  factory: () => connect(`etcd://${cluster!.endpoints.join(',')}`),
  endpoints: () => cluster!.endpoints,
  async proxied() {
    // Through the leader's client URL: the leader applies an entry before any follower learns it is
    // committed, so whatever another member has acknowledged (a compaction, say) is already
    // applied on the member behind the proxy when a cut client reconnects, as on a 1-member etcd.
    const proxy: CutProxy = await startProxy(cluster!.endpoints[await cluster!.waitLeader()]!);
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
