/**
 * Real etcd for tests and benchmarks, found in this order:
 *   1. ETCD_ENDPOINTS (comma-separated host:port) — used as is, never stopped;
 *   2. an `etcd` binary on PATH — started on free loopback ports with a temporary data dir and a
 *      short election timeout (so the minimum lease TTL is small), stopped by PID;
 *   3. a reachable Docker engine with testcontainers installed — containers (etcd-docker.ts);
 *   4. otherwise undefined, with a loud line; with REQUIRE_ETCD=1 that is an error instead.
 * A cluster from 1 or 3 has no PIDs (`pids` is empty): tests that kill members skip without them.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dockerReachable, loadContainersLib, startEtcdContainers } from './etcd-docker.js';

export interface EtcdCluster {
  /** Client endpoints as host:port. */
  readonly endpoints: string[];
  readonly pids: number[];
  /** Smallest lease TTL etcd accepts with this election timeout. */
  readonly minTtlSeconds: number;
  /** True when we started the processes (and stop() stops them). */
  readonly owned: boolean;
  stop(): Promise<void>;
}

export interface StartEtcdOptions {
  members?: 1 | 3;
  heartbeatMs?: number;
  electionTimeoutMs?: number;
  /** Extra etcd flags for every member we start (ignored for ETCD_ENDPOINTS and containers). */
  extraArgs?: string[];
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/**
 * Ports for servers that a test starts as separate processes (etcd, `conclave serve`): the port is
 * chosen here and bound later by the child, so it must not be one the kernel may hand out in the
 * meantime. Port 0 (what a listener asks for when it binds at once) draws from the ephemeral range
 * (32768–60999 on Linux), which every outgoing connection of every parallel test also draws from:
 * a port released by a probe can become the local port of some client socket before the child
 * binds it ("address in use"). So ports come from below that range, a separate slice per vitest
 * worker (VITEST_POOL_ID) so parallel workers never pick the same one, never twice in one process,
 * and each is checked bindable on 127.0.0.1 before it is returned.
 */
// 8 slices: 21000–32199, below the ephemeral range and above etcd's own e2e suite's fixed ports
// (10000–10002, 20000–20024; `npm run e2e:etcd` is never run beside the tests anyway).
const portBase = 21_000;
const portSliceSize = 1_400;
const portSlices = 8;
const portsGiven = new Set<number>();

export async function freePort(): Promise<number> {
  const pool = Number(process.env.VITEST_POOL_ID ?? process.pid) % portSlices;
  const start = portBase + pool * portSliceSize;
  for (let attempt = 0; attempt < portSliceSize; attempt++) {
    const port = start + Math.floor(Math.random() * portSliceSize);
    if (portsGiven.has(port)) continue;
    if (await bindable(port)) {
      portsGiven.add(port);
      return port;
    }
  }
  throw new Error(`freePort: no bindable port in ${start}–${start + portSliceSize - 1}`);
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.unref();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

export function etcdBinary(): string | undefined {
  const r = spawnSync('etcd', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? 'etcd' : undefined;
}

/** etcd's minimum lease TTL: ceil(3/2 × electionTicks × heartbeat) seconds (etcd's lessor minLeaseTTL). */
export function minTtlFor(heartbeatMs: number, electionTimeoutMs: number): number {
  const electionTicks = Math.floor(electionTimeoutMs / heartbeatMs);
  return Math.ceil((Math.floor((3 * electionTicks) / 2) * heartbeatMs) / 1000);
}

async function waitHealthy(endpoint: string, deadlineMs: number): Promise<void> {
  const until = Date.now() + deadlineMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      const r = await fetch(`http://${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await r.json()) as { health?: string };
      if (body.health === 'true') return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`etcd at ${endpoint} did not become healthy within ${deadlineMs} ms (${String(last)})`);
}

export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdCluster | undefined> {
  const heartbeatMs = opts.heartbeatMs ?? 50;
  const electionTimeoutMs = opts.electionTimeoutMs ?? 250;
  const env = process.env.ETCD_ENDPOINTS;
  if (env) {
    return {
      endpoints: env
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
      pids: [],
      minTtlSeconds: 2,
      owned: false,
      stop: async () => {},
    };
  }
  if (!etcdBinary()) {
    let why = 'no Docker engine reachable';
    if (dockerReachable()) {
      const lib = await loadContainersLib();
      if (typeof lib === 'string') why = lib;
      else {
        const c = await startEtcdContainers(lib, {
          members: opts.members ?? 1,
          heartbeatMs,
          electionTimeoutMs,
        });
        return {
          endpoints: c.endpoints,
          pids: [],
          minTtlSeconds: minTtlFor(heartbeatMs, electionTimeoutMs),
          owned: true,
          stop: c.stop,
        };
      }
    }
    const msg = `etcd: no ETCD_ENDPOINTS, no \`etcd\` binary on PATH (apt-get install -y etcd-server etcd-client), and ${why}`;
    if (process.env.REQUIRE_ETCD === '1') throw new Error(`${msg}; REQUIRE_ETCD=1 so this is a failure`);
    console.warn(`\n!!!!!!!! SKIPPING etcd suites: ${msg} !!!!!!!!\n`);
    return undefined;
  }
  const n = opts.members ?? 1;
  const dir = mkdtempSync(join(tmpdir(), 'conclave-etcd-'));
  const ports: Array<{ client: number; peer: number }> = [];
  for (let i = 0; i < n; i++) ports.push({ client: await freePort(), peer: await freePort() });
  const initialCluster = ports.map((p, i) => `m${i}=http://127.0.0.1:${p.peer}`).join(',');
  const procs: ChildProcess[] = [];
  for (let i = 0; i < n; i++) {
    const p = ports[i]!;
    const args = [
      '--name',
      `m${i}`,
      '--data-dir',
      join(dir, `m${i}`),
      '--listen-client-urls',
      `http://127.0.0.1:${p.client}`,
      '--advertise-client-urls',
      `http://127.0.0.1:${p.client}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${p.peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${p.peer}`,
      '--initial-cluster',
      initialCluster,
      '--initial-cluster-state',
      'new',
      '--heartbeat-interval',
      String(heartbeatMs),
      '--election-timeout',
      String(electionTimeoutMs),
      '--logger',
      'zap',
      '--log-level',
      'error',
      ...(opts.extraArgs ?? []),
    ];
    const child = spawn('etcd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    child.once('exit', (code) => {
      children.delete(child);
      if (code && code !== 0 && !stopping)
        console.error(`etcd m${i} exited with ${code}: ${stderr.slice(0, 2000)}`);
    });
    children.add(child);
    procs.push(child);
  }
  let stopping = false;
  const endpoints = ports.map((p) => `127.0.0.1:${p.client}`);
  const stop = async (): Promise<void> => {
    stopping = true;
    await Promise.all(
      procs.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const t = setTimeout(() => c.kill('SIGKILL'), 3000);
            c.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            c.kill('SIGTERM');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.all(endpoints.map((e) => waitHealthy(e, 15_000)));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    endpoints,
    pids: procs.map((c) => c.pid!),
    minTtlSeconds: minTtlFor(heartbeatMs, electionTimeoutMs),
    owned: true,
    stop,
  };
}
