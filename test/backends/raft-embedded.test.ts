import { EmbeddedCluster, EmbeddedKV } from '../../backends/raft/embedded.js';
import { runConformance } from '../conformance/index.js';

for (const nodes of [1, 3]) {
  let cluster: EmbeddedCluster | undefined;
  runConformance({
    name: `raft embedded, ${nodes} node${nodes > 1 ? 's' : ''} (memory storage)`,
    supports: { killLeader: nodes > 1 },
    get minTtlSeconds() {
      return cluster?.minTtlSeconds ?? 1;
    },
    async setup() {
      cluster = new EmbeddedCluster({ nodes });
      await cluster.waitLeader();
    },
    async teardown() {
      await cluster?.close();
    },
    factory: async () => new EmbeddedKV(cluster!),
    async killLeader() {
      const l = await cluster!.waitLeader();
      await cluster!.kill(l.id);
    },
  });
}
