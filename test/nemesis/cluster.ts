/**
 * 3-member clusters of real processes with every peer link behind a fault-injecting proxy
 * (test/harness/proxy.ts `PeerNetwork`), the same shape for real etcd and for `conclave serve`, so
 * one nemesis drives both with the same seeds.
 *
 * Each member listens for peers on one port and advertises another, where its proxy listens; the
 * member IDs (etcd's derivation: SHA-1 of the advertised peer URLs and the cluster token) let a
 * proxy name the member that dialed it. Processes are started directly (`etcd`, or `node` running
 * the CLI or the fault entry), so each PID is the member's: SIGKILL, SIGSTOP and SIGCONT reach it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '../../backends/connect.js';
import { hexId, memberIdOf } from '../../backends/raft/server/ids.js';
import type { KV } from '../../src/kv.js';
import { freePort } from '../harness/etcd.js';
import {
  type Identify,
  identifyConclave,
  identifyEtcd,
  PeerNetwork,
  startPeerProxy,
} from '../harness/proxy.js';
import { type ServedCluster, startServed } from '../harness/served.js';

export type Target = 'etcd' | 'served';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** etcd processes started here, killed by PID if this process exits without closing them. */
const etcdChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of etcdChildren) {
    c.kill('SIGCONT');
    c.kill('SIGKILL');
  }
});

export interface FaultCluster {
  readonly target: Target;
  readonly size: number;
  /** Client endpoints (host:port), one per member. */
  readonly endpoints: string[];
  readonly net: PeerNetwork;
  /** Hex member IDs, by member index. */
  readonly memberIds: string[];
  running(i: number): boolean;
  paused(i: number): boolean;
  pid(i: number): number | undefined;
  /** SIGKILL. */
  kill(i: number): Promise<void>;
  /** Starts a killed member again on its data dir (returns once the process is spawned). */
  restart(i: number): Promise<void>;
  /** SIGSTOP / SIGCONT. */
  pause(i: number): void;
  resume(i: number): void;
  /** A short account of member i (its process and last log output) for failure messages. */
  report(i: number): string;
  /** The leader as the running members report it (status), or undefined (none, or no answer). */
  leader(): Promise<number | undefined>;
  close(): Promise<void>;
}

export interface FaultClusterOptions {
  heartbeatMs?: number;
  electionTimeoutMs?: number;
  /** `conclave serve` only: test-only fault switches, run through test/harness/fault-entry.ts. */
  faults?: readonly string[];
}

/** Per-member single-endpoint clients for status (short deadlines: a paused member must not stall us). */
async function statusClients(endpoints: readonly string[]): Promise<KV[]> {
  return Promise.all(
    endpoints.map((e) =>
      connect({ backend: 'etcd', endpoints: [e], lazy: true, callTimeoutMs: 2000, dialTimeoutMs: 2000 }),
    ),
  );
}

async function leaderOf(
  kvs: readonly KV[],
  up: (i: number) => boolean,
  memberIds: readonly string[],
): Promise<number | undefined> {
  const answers = await Promise.all(
    kvs.map(async (kv, i) => {
      if (!up(i)) return undefined;
      try {
        const s = await kv.status({ signal: AbortSignal.timeout(2000) });
        return { term: s.raftTerm ?? 0, leader: s.leader };
      } catch {
        return undefined;
      }
    }),
  );
  let best: { term: number; leader: bigint | undefined } | undefined;
  for (const a of answers) if (a?.leader && (!best || a.term > best.term)) best = a;
  if (!best?.leader) return undefined;
  const i = memberIds.indexOf(hexId(best.leader));
  return i >= 0 ? i : undefined;
}

async function proxies(
  net: PeerNetwork,
  ports: { listen: number; advertised: number }[],
  identify: Identify,
) {
  for (const [i, p] of ports.entries()) await startPeerProxy(net, i, p.advertised, p.listen, identify);
}

class Procs {
  readonly paused = new Set<number>();
  constructor(readonly proc: (i: number) => ChildProcess | undefined) {}
  running(i: number): boolean {
    const c = this.proc(i);
    return !!c && c.exitCode === null && c.signalCode === null;
  }
  pause(i: number): void {
    const c = this.proc(i);
    if (!this.running(i) || this.paused.has(i)) return;
    c!.kill('SIGSTOP');
    this.paused.add(i);
  }
  resume(i: number): void {
    const c = this.proc(i);
    if (!this.paused.delete(i)) return;
    if (this.running(i)) c!.kill('SIGCONT');
  }
  resumeAll(): void {
    for (const i of [...this.paused]) this.resume(i);
  }
  kill(i: number): Promise<void> {
    const c = this.proc(i);
    this.paused.delete(i);
    if (!c || !this.running(i)) return Promise.resolve();
    return new Promise((r) => {
      c.once('exit', () => r());
      c.kill('SIGKILL');
    });
  }
}

/** Starts a 3-member `conclave serve` cluster with proxied peer links. */
export async function startServedFaulty(o: FaultClusterOptions = {}): Promise<FaultCluster> {
  const size = 3;
  const net = new PeerNetwork(size);
  const token = `nemesis-${Math.random().toString(36).slice(2, 8)}`;
  let memberIds: string[] = [];
  const faultArgs = (o.faults ?? []).map((f) => `--test-fault=${f}`);
  const cluster: ServedCluster = await startServed({
    members: size,
    token,
    heartbeatMs: o.heartbeatMs ?? 50,
    electionTimeoutMs: o.electionTimeoutMs ?? 500,
    advertisePeerPorts: true,
    ...(faultArgs.length > 0
      ? { entry: ['--import', 'tsx', join(root, 'test/harness/fault-entry.ts')], extraArgs: faultArgs }
      : {}),
    beforeStart: async (c) => {
      const urls = c.members.map((m) => `http://127.0.0.1:${m.advertisedPeerPort}`);
      memberIds = urls.map((u) => hexId(memberIdOf([u], token)));
      const idx = new Map(memberIds.map((id, i) => [id, i]));
      await proxies(
        net,
        c.members.map((m) => ({ listen: m.peerPort, advertised: m.advertisedPeerPort })),
        identifyConclave(idx),
      );
    },
  });
  const procs = new Procs((i) => cluster.members[i]!.proc);
  const status = await statusClients(cluster.endpoints);
  return {
    target: 'served',
    size,
    endpoints: cluster.endpoints,
    net,
    memberIds,
    running: (i) => procs.running(i),
    paused: (i) => procs.paused.has(i),
    pid: (i) => (procs.running(i) ? cluster.members[i]!.proc!.pid : undefined),
    kill: (i) => procs.kill(i),
    restart: async (i) => {
      if (!procs.running(i)) cluster.start(i);
    },
    pause: (i) => procs.pause(i),
    report: (i) => cluster.report(i),
    resume: (i) => procs.resume(i),
    leader: () => leaderOf(status, (i) => procs.running(i) && !procs.paused.has(i), memberIds),
    close: async () => {
      procs.resumeAll();
      await Promise.all(status.map((k) => k.close()));
      await cluster.close();
      await net.close();
    },
  };
}

/** Starts a 3-member real etcd with proxied peer links (the `etcd` binary on PATH). */
export async function startEtcdFaulty(o: FaultClusterOptions = {}): Promise<FaultCluster> {
  const size = 3;
  const heartbeatMs = o.heartbeatMs ?? 50;
  const electionTimeoutMs = o.electionTimeoutMs ?? 500;
  const net = new PeerNetwork(size);
  const dir = mkdtempSync(join(tmpdir(), 'conclave-nemesis-etcd-'));
  const token = `nemesis-${Math.random().toString(36).slice(2, 8)}`;
  const ports: Array<{ client: number; listen: number; advertised: number }> = [];
  for (let i = 0; i < size; i++)
    ports.push({ client: await freePort(), listen: await freePort(), advertised: await freePort() });
  const urls = ports.map((p) => `http://127.0.0.1:${p.advertised}`);
  const memberIds = urls.map((u) => hexId(memberIdOf([u], token)));
  await proxies(net, ports, identifyEtcd(new Map(memberIds.map((id, i) => [id, i]))));
  const initialCluster = urls.map((u, i) => `m${i}=${u}`).join(',');
  const procs: (ChildProcess | undefined)[] = [];
  const stderr: string[] = ports.map(() => '');
  const start = (i: number) => {
    const p = ports[i]!;
    const child = spawn(
      'etcd',
      [
        `--name=m${i}`,
        `--data-dir=${join(dir, `m${i}`)}`,
        `--listen-client-urls=http://127.0.0.1:${p.client}`,
        `--advertise-client-urls=http://127.0.0.1:${p.client}`,
        `--listen-peer-urls=http://127.0.0.1:${p.listen}`,
        `--initial-advertise-peer-urls=${urls[i]}`,
        `--initial-cluster=${initialCluster}`,
        `--initial-cluster-token=${token}`,
        '--initial-cluster-state=new',
        `--heartbeat-interval=${heartbeatMs}`,
        `--election-timeout=${electionTimeoutMs}`,
        '--logger=zap',
        '--log-level=error',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr[i]!.length < 8192) stderr[i] += d.toString();
    });
    etcdChildren.add(child);
    child.once('exit', () => etcdChildren.delete(child));
    procs[i] = child;
  };
  for (let i = 0; i < size; i++) start(i);
  const p = new Procs((i) => procs[i]);
  const status = await statusClients(ports.map((x) => `127.0.0.1:${x.client}`));
  const close = async () => {
    p.resumeAll();
    await Promise.all(status.map((k) => k.close()));
    await Promise.all(ports.map((_, i) => p.kill(i)));
    await net.close();
    rmSync(dir, { recursive: true, force: true });
  };
  // Every member up and one leader (bounded).
  const until = performance.now() + 30_000;
  for (;;) {
    if ((await leaderOf(status, () => true, memberIds)) !== undefined) break;
    if (performance.now() > until) {
      await close();
      throw new Error(`etcd behind proxies elected no leader in 30 s: ${stderr.join(' | ').slice(0, 2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    target: 'etcd',
    size,
    endpoints: ports.map((x) => `127.0.0.1:${x.client}`),
    net,
    memberIds,
    running: (i) => p.running(i),
    paused: (i) => p.paused.has(i),
    pid: (i) => (p.running(i) ? procs[i]!.pid : undefined),
    kill: (i) => p.kill(i),
    restart: async (i) => {
      if (!p.running(i)) start(i);
    },
    pause: (i) => p.pause(i),
    report: (i) => `m${i} pid ${procs[i]?.pid ?? '-'} ${stderr[i]!.slice(-800)}`,
    resume: (i) => p.resume(i),
    leader: () => leaderOf(status, (i) => p.running(i) && !p.paused.has(i), memberIds),
    close,
  };
}

export function startFaulty(target: Target, o: FaultClusterOptions = {}): Promise<FaultCluster> {
  return target === 'etcd' ? startEtcdFaulty(o) : startServedFaulty(o);
}

/** Waits (bounded) until the running members report a leader; undefined if none in `timeoutMs`. */
export async function waitLeader(c: FaultCluster, timeoutMs = 30_000): Promise<number | undefined> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const l = await c.leader();
    if (l !== undefined || performance.now() > until) return l;
    await new Promise((r) => setTimeout(r, 200));
  }
}
