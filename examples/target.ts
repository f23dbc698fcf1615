/**
 * Where the examples and the demo run. `CONCLAVE_ENDPOINTS=host:port,…` selects a real etcd
 * cluster; otherwise an embedded 3-node Raft cluster (memory storage) starts in this process.
 *
 * Examples need several independent clients (one per simulated process) and, for failover
 * scenes, a way to make the store lose the member that leads it: on the embedded cluster that is
 * `killLeaderMember()` (the member stops as a crash would, then restarts and catches up); on an
 * external etcd the example cannot kill anything, so it reports that and the scene falls back to
 * ending a client's session instead.
 */
import { startCluster } from '../backends/raft/embedded.js';
import { connect, type KV } from '../index.js';

export interface Target {
  /** A human-readable description for the first line of output. */
  readonly label: string;
  /** The main client. */
  readonly kv: KV;
  /** Another independent client of the same store (closed by `close()`). */
  client(): Promise<KV>;
  /**
   * Kills the store member that currently leads (embedded only) and restarts it after
   * `downMs`; resolves with the killed member's id once it is stopped. Undefined on external etcd.
   */
  readonly killLeaderMember?: (downMs: number) => Promise<number>;
  /** Smallest lease TTL the store grants, in seconds. */
  readonly minTtlSeconds: number;
  close(): Promise<void>;
}

/** Opens the target named by `CONCLAVE_ENDPOINTS`, or an embedded 3-node cluster. */
export async function openTarget(): Promise<Target> {
  const clients: KV[] = [];
  const env = process.env.CONCLAVE_ENDPOINTS;
  if (env) {
    const kv = await connect(`etcd://${env}`);
    return {
      label: `etcd at ${env}`,
      kv,
      client: async () => {
        const c = await connect(`etcd://${env}`);
        clients.push(c);
        return c;
      },
      minTtlSeconds: 2,
      close: async () => {
        await Promise.all([...clients, kv].map((c) => c.close().catch(() => undefined)));
      },
    };
  }
  const cluster = await startCluster({ nodes: 3 });
  const restarts: Promise<unknown>[] = [];
  return {
    label: 'an embedded 3-node Raft cluster (memory storage)',
    kv: cluster.kv,
    client: async () => {
      const c = cluster.client();
      clients.push(c);
      return c;
    },
    killLeaderMember: async (downMs) => {
      const leader = await cluster.waitLeader();
      await cluster.kill(leader.id);
      restarts.push(new Promise((r) => setTimeout(r, downMs)).then(() => cluster.restart(leader.id)));
      return leader.id;
    },
    minTtlSeconds: cluster.minTtlSeconds,
    close: async () => {
      await Promise.allSettled(restarts);
      await Promise.all([...clients, cluster.kv].map((c) => c.close().catch(() => undefined)));
      await cluster.close();
    },
  };
}
