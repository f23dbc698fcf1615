/**
 * The client API over an in-process embedded cluster: a `MemberBackend` whose KV is a client of the
 * cluster and whose `MemberInfo` reads one member's Raft and store state. IDs are made large (above
 * 2^53) so the uint64 paths of the wire are exercised.
 */
import type { EmbeddedCluster } from '../../backends/raft/embedded.js';
import type { MemberBackend, MemberDescription } from '../../backends/raft/server/api.js';
import {
  type ClientServer,
  type ClientServerOptions,
  startClientServer,
} from '../../backends/raft/server/grpc.js';

export const testClusterId = 0xcdf8_18a2_1d0e_4a5bn;

export function memberIdOf(nodeId: number): bigint {
  return 0x8e9e_05c5_2164_6940n + BigInt(nodeId);
}

export interface ServedCluster {
  readonly cluster: EmbeddedCluster;
  readonly servers: ClientServer[];
  readonly endpoints: string[];
  close(): Promise<void>;
}

export function embeddedBackend(
  cluster: EmbeddedCluster,
  nodeId: number,
  clientUrls: () => string[],
  limits: { maxRequestBytes: number; maxTxnOps: number } = {
    maxRequestBytes: 1.5 * 1024 * 1024,
    maxTxnOps: 128,
  },
): MemberBackend {
  const member = () => cluster.members.get(nodeId)!;
  return {
    kv: cluster.client(),
    limits,
    info: {
      clusterId: testClusterId,
      memberId: memberIdOf(nodeId),
      version: '3.4.23',
      revision: () => member().store.revision,
      compactRevision: () => member().store.mvcc.compactRev,
      raftTerm: () => member().raft.term,
      leaderId: () => {
        const m = member();
        return m.stopped || m.raft.lead === 0 ? 0n : memberIdOf(m.raft.lead);
      },
      raftIndex: () => member().raft.log.lastIndex,
      raftAppliedIndex: () => member().store.appliedIndex,
      dbSizeBytes: () => 4096 + member().store.revision * 64,
      members: (): MemberDescription[] =>
        cluster.ids.map((id, i) => ({
          id: memberIdOf(id),
          name: `m${id}`,
          peerUrls: [`http://127.0.0.1:${23800 + id}`],
          clientUrls: clientUrls()[i] ? [`http://${clientUrls()[i]}`] : [],
          isLearner: false,
        })),
    },
  };
}

/** One client server per member of `cluster`, each serving that member's backend. */
export async function serveCluster(
  cluster: EmbeddedCluster,
  opts: ClientServerOptions = {},
  limits?: { maxRequestBytes: number; maxTxnOps: number },
): Promise<ServedCluster> {
  const endpoints: string[] = [];
  const servers: ClientServer[] = [];
  for (const id of cluster.ids) {
    const s = await startClientServer(
      embeddedBackend(cluster, id, () => endpoints, limits),
      opts,
    );
    servers.push(s);
    endpoints.push(`127.0.0.1:${s.port}`);
  }
  return {
    cluster,
    servers,
    endpoints,
    async close() {
      await Promise.all(servers.map((s) => s.close()));
    },
  };
}
