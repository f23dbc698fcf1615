/**
 * The third way test/harness/etcd.ts finds real etcd: when there is no
 * ETCD_ENDPOINTS and no `etcd` binary, but a Docker engine is reachable, etcd runs in containers
 * started with testcontainers (1 or 3 members; 3 share a container network and reach each other
 * by alias). testcontainers (a dev dependency) is loaded with a dynamic import only on this path:
 * CI machines here have no Docker engine and install etcd with apt.
 *
 * Containers are stopped by `stop()`; testcontainers' reaper removes any a crashed run leaves.
 */
import { existsSync } from 'node:fs';

/** The image (the same etcd release as the apt package used by CI); `ETCD_IMAGE` overrides. */
export const etcdImageDefault = 'quay.io/coreos/etcd:v3.4.23';

/** The parts of testcontainers' API used here (its own types are not a dependency). */
export interface StartedContainerLike {
  getHost(): string;
  getMappedPort(port: number): number;
  stop(): Promise<unknown>;
}
export interface ContainerLike {
  withCommand(cmd: string[]): ContainerLike;
  withExposedPorts(...ports: number[]): ContainerLike;
  withNetwork(network: unknown): ContainerLike;
  withNetworkAliases(...aliases: string[]): ContainerLike;
  withWaitStrategy(strategy: unknown): ContainerLike;
  start(): Promise<StartedContainerLike>;
}
export interface ContainersLib {
  GenericContainer: new (image: string) => ContainerLike;
  Network: new () => { start(): Promise<{ stop(): Promise<unknown> }> };
  Wait: { forHttp(path: string, port: number): { forStatusCode(code: number): unknown } };
}

/** Whether a Docker engine may be reachable (testcontainers finds the exact socket itself). */
export function dockerReachable(
  env: NodeJS.ProcessEnv = process.env,
  exists: (p: string) => boolean = existsSync,
): boolean {
  return !!env.DOCKER_HOST || exists('/var/run/docker.sock');
}

/** testcontainers, or a reason it cannot be used. */
export async function loadContainersLib(): Promise<ContainersLib | string> {
  const name = 'testcontainers'; // loaded only when Docker is reachable
  try {
    return (await import(name)) as ContainersLib;
  } catch (err) {
    return `testcontainers could not be loaded: ${(err as Error).message}`;
  }
}

export interface DockerEtcd {
  endpoints: string[];
  stop(): Promise<void>;
}

/**
 * Starts `members` etcd containers with the given timing flags; resolves when every member
 * answers /health. On a failure, whatever was started is stopped before the error propagates.
 */
export async function startEtcdContainers(
  lib: ContainersLib,
  o: { members: number; heartbeatMs: number; electionTimeoutMs: number; image?: string },
): Promise<DockerEtcd> {
  const image = o.image ?? process.env.ETCD_IMAGE ?? etcdImageDefault;
  const network = await new lib.Network().start();
  const started: StartedContainerLike[] = [];
  const stop = async () => {
    await Promise.allSettled(started.map((c) => c.stop()));
    await network.stop();
  };
  try {
    const initialCluster = Array.from({ length: o.members }, (_, i) => `m${i}=http://m${i}:2380`).join(',');
    // All members start together: /health answers only once a quorum has elected a leader.
    const containers = await Promise.all(
      Array.from({ length: o.members }, (_, i) =>
        new lib.GenericContainer(image)
          .withNetwork(network)
          .withNetworkAliases(`m${i}`)
          .withExposedPorts(2379)
          .withCommand([
            '/usr/local/bin/etcd',
            '--name',
            `m${i}`,
            '--data-dir',
            '/tmp/etcd-data',
            '--listen-client-urls',
            'http://0.0.0.0:2379',
            '--advertise-client-urls',
            `http://m${i}:2379`,
            '--listen-peer-urls',
            'http://0.0.0.0:2380',
            '--initial-advertise-peer-urls',
            `http://m${i}:2380`,
            '--initial-cluster',
            initialCluster,
            '--initial-cluster-state',
            'new',
            '--heartbeat-interval',
            String(o.heartbeatMs),
            '--election-timeout',
            String(o.electionTimeoutMs),
            '--log-level',
            'error',
          ])
          .withWaitStrategy(lib.Wait.forHttp('/health', 2379).forStatusCode(200))
          .start()
          .then((c) => {
            started.push(c);
            return c;
          }),
      ),
    );
    return { endpoints: containers.map((c) => `${c.getHost()}:${c.getMappedPort(2379)}`), stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
