/**
 * The Docker fallback of the etcd test harness (test/harness/etcd-docker.ts). No Docker engine
 * runs on these machines, so the containers are a recording fake of testcontainers' API: this
 * checks what would be started (image, flags, network aliases, health wait), which endpoints come
 * back, and that everything started is stopped — on stop() and when one member fails to start.
 */
import { describe, expect, it } from 'vitest';
import {
  type ContainerLike,
  type ContainersLib,
  dockerReachable,
  etcdImageDefault,
  loadContainersLib,
  startEtcdContainers,
} from '../harness/etcd-docker.js';

function fakeLib(failMember?: number) {
  const log: string[] = [];
  const made: Array<{ image: string; cmd: string[]; aliases: string[]; ports: number[]; wait: unknown }> = [];
  let next = 32000;
  class Container implements ContainerLike {
    readonly rec: (typeof made)[number];
    constructor(image: string) {
      this.rec = { image, cmd: [], aliases: [], ports: [], wait: undefined };
      made.push(this.rec);
    }
    withCommand(cmd: string[]) {
      this.rec.cmd = cmd;
      return this;
    }
    withExposedPorts(...ports: number[]) {
      this.rec.ports = ports;
      return this;
    }
    withNetwork(network: unknown) {
      expect(network).toBe(net);
      return this;
    }
    withNetworkAliases(...aliases: string[]) {
      this.rec.aliases = aliases;
      return this;
    }
    withWaitStrategy(w: unknown) {
      this.rec.wait = w;
      return this;
    }
    async start() {
      const alias = this.rec.aliases[0]!;
      if (failMember !== undefined && alias === `m${failMember}`) throw new Error(`${alias} did not start`);
      const port = next++;
      log.push(`start ${alias}`);
      return {
        getHost: () => 'localhost',
        getMappedPort: (p: number) => (p === 2379 ? port : -1),
        stop: async () => void log.push(`stop ${alias}`),
      };
    }
  }
  const net = { stop: async () => void log.push('stop network') };
  const lib: ContainersLib = {
    GenericContainer: Container,
    Network: class {
      async start() {
        log.push('start network');
        return net;
      }
    },
    Wait: { forHttp: (path, port) => ({ forStatusCode: (code) => `http ${path} ${port} ${code}` }) },
  };
  return { lib, log, made };
}

describe('etcd test harness: Docker fallback', () => {
  it('is tried only when a Docker engine may be reachable', () => {
    expect(dockerReachable({}, () => false)).toBe(false);
    expect(dockerReachable({ DOCKER_HOST: 'tcp://127.0.0.1:2375' }, () => false)).toBe(true);
    expect(dockerReachable({}, (p) => p === '/var/run/docker.sock')).toBe(true);
  });

  it('loads testcontainers, whose API has what the fallback calls (no engine is contacted)', async () => {
    const lib = await loadContainersLib();
    if (typeof lib === 'string') throw new Error(lib);
    const c = new lib.GenericContainer(etcdImageDefault);
    for (const m of [
      'withCommand',
      'withExposedPorts',
      'withNetwork',
      'withNetworkAliases',
      'withWaitStrategy',
      'start',
    ])
      expect(typeof (c as unknown as Record<string, unknown>)[m], m).toBe('function');
    expect(typeof new lib.Network().start).toBe('function');
    expect(typeof lib.Wait.forHttp('/health', 2379).forStatusCode).toBe('function');
  });

  it('starts 3 members on one network, waits for /health, returns mapped endpoints, stops all', async () => {
    const { lib, log, made } = fakeLib();
    const c = await startEtcdContainers(lib, { members: 3, heartbeatMs: 50, electionTimeoutMs: 250 });
    expect(made.map((m) => m.image)).toEqual([etcdImageDefault, etcdImageDefault, etcdImageDefault]);
    expect(made.map((m) => m.aliases)).toEqual([['m0'], ['m1'], ['m2']]);
    for (const [i, m] of made.entries()) {
      const flag = (f: string) => m.cmd[m.cmd.indexOf(f) + 1];
      expect(m.cmd[0]).toBe('/usr/local/bin/etcd');
      expect(flag('--name')).toBe(`m${i}`);
      expect(flag('--initial-cluster')).toBe('m0=http://m0:2380,m1=http://m1:2380,m2=http://m2:2380');
      expect(flag('--initial-advertise-peer-urls')).toBe(`http://m${i}:2380`);
      expect(flag('--heartbeat-interval')).toBe('50');
      expect(flag('--election-timeout')).toBe('250');
      expect(m.ports).toEqual([2379]);
      expect(m.wait).toBe('http /health 2379 200');
    }
    expect(c.endpoints).toEqual(['localhost:32000', 'localhost:32001', 'localhost:32002']);
    await c.stop();
    expect(log.filter((l) => l.startsWith('stop')).sort()).toEqual([
      'stop m0',
      'stop m1',
      'stop m2',
      'stop network',
    ]);
  });

  it('stops what did start when one member fails, and rethrows', async () => {
    const { lib, log } = fakeLib(1);
    await expect(
      startEtcdContainers(lib, { members: 3, heartbeatMs: 50, electionTimeoutMs: 250 }),
    ).rejects.toThrow('m1 did not start');
    const started = log.filter((l) => l.startsWith('start m')).map((l) => l.slice(6));
    const stopped = log.filter((l) => l.startsWith('stop m')).map((l) => l.slice(5));
    expect(stopped.sort()).toEqual(started.sort());
    expect(log).toContain('stop network');
  });
});
