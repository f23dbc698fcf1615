import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedCluster, EmbeddedKV } from '../../backends/raft/embedded.js';
import type { RevocationHold } from '../conformance/context.js';
import { runConformance } from '../conformance/index.js';
import { gatedStorages, type RevocationGate } from '../raft/lease-fixtures.js';

function hold(gate: RevocationGate | undefined): RevocationHold {
  gate!.close();
  return { held: () => gate!.holding, release: () => gate!.release() };
}

for (const nodes of [1, 3]) {
  let cluster: EmbeddedCluster | undefined;
  let gate: RevocationGate | undefined;
  runConformance({
    name: `raft embedded, ${nodes} node${nodes > 1 ? 's' : ''} (memory storage)`,
    supports: { killLeader: nodes > 1, holdRevocations: true },
    get minTtlSeconds() {
      return cluster?.minTtlSeconds ?? 1;
    },
    async setup() {
      const g = await gatedStorages(nodes);
      cluster = new EmbeddedCluster({ nodes }, g.storages);
      g.gated(cluster);
      gate = g.gate;
      await cluster.waitLeader();
    },
    async teardown() {
      gate?.release();
      await cluster?.close();
    },
    factory: async () => new EmbeddedKV(cluster!),
    async killLeader() {
      const l = await cluster!.waitLeader();
      await cluster!.kill(l.id);
    },
    holdRevocations: () => hold(gate),
  });
}

// Durable storage: the lease and session parts of the suite (the rest runs on memory storage above
// and in the durable tests of test/raft/).
for (const nodes of [1, 3]) {
  let cluster: EmbeddedCluster | undefined;
  let gate: RevocationGate | undefined;
  let dir: string | undefined;
  runConformance(
    {
      name: `raft embedded, ${nodes} node${nodes > 1 ? 's' : ''} (durable storage)`,
      supports: { holdRevocations: true },
      get minTtlSeconds() {
        return cluster?.minTtlSeconds ?? 1;
      },
      async setup() {
        dir = mkdtempSync(join(tmpdir(), 'conclave-conf-durable-'));
        const g = await gatedStorages(nodes, dir);
        cluster = new EmbeddedCluster({ nodes, dataDir: dir }, g.storages);
        g.gated(cluster);
        gate = g.gate;
        await cluster.waitLeader(undefined, 30_000);
      },
      async teardown() {
        gate?.release();
        await cluster?.close();
        if (dir) rmSync(dir, { recursive: true, force: true });
      },
      factory: async () => new EmbeddedKV(cluster!),
      holdRevocations: () => hold(gate),
    },
    { only: ['lease', 'session'] },
  );
}
