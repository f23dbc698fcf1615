/**
 * Service discovery between processes: `npx tsx examples/discovery.ts`.
 *
 * Two server processes each start an HTTP server on a free loopback port and register it with
 * `ServiceRegistry` (etcd's naming format, bound to their session's lease, with a health check).
 * This process resolves the service with `ServiceResolver` and spreads requests round-robin. Then
 * one server is killed with SIGKILL (no cleanup: its entry goes when its lease expires; calls that
 * fail meanwhile mark it down), and the other is stopped with SIGTERM (it deregisters at once).
 *
 * Separate processes need a store they can all reach: `CONCLAVE_ENDPOINTS=host:port` names an
 * etcd (or a `conclave serve` cluster); without it, a private single-member etcd is started from
 * the `etcd` binary on PATH and stopped at the end. The embedded store lives inside one process,
 * so it cannot serve this example.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { connect, PickStrategy, ServiceRegistry, ServiceResolver, Session } from '../index.js';
import { etcdBinary, startEtcd } from '../test/harness/etcd.js';

const ttlSeconds = 2;
const service = 'examples/discovery/greeter';

/** A server process: serve, register, and deregister on SIGTERM. */
async function serve(id: string, endpoints: string): Promise<void> {
  const kv = await connect(`etcd://${endpoints}`);
  const http = createServer((_req, res) => res.end(`hello from ${id}\n`));
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const addr = `127.0.0.1:${(http.address() as AddressInfo).port}`;
  const session = await Session.create(kv, { ttlSeconds });
  const registry = new ServiceRegistry();
  await registry.register(session, service, {
    id,
    addr,
    metadata: { pid: process.pid },
    // Withdrawn while the HTTP server is not listening (e.g. draining), restored when it is.
    healthCheck: { check: () => http.listening, intervalMs: 500 },
  });
  console.log(`ready ${id} ${addr}`);
  process.once('SIGTERM', async () => {
    await registry.close(); // deletes the entry at once
    await session.close();
    http.close();
    await kv.close();
    process.exit(0);
  });
}

function startServer(id: string, endpoints: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', process.argv[1]!, '--serve', id], {
    env: { ...process.env, CONCLAVE_ENDPOINTS: endpoints },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id} did not start within 30 s`)), 30_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith(`ready ${id}`)) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.once('exit', (code) => reject(new Error(`${id} exited with ${code} before it was ready`)));
  });
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The client: resolve, call, survive one server's crash and the other's shutdown. */
async function client(endpoints: string, log: (line: string) => void): Promise<void> {
  const servers = new Map<string, ChildProcess>();
  const kv = await connect(`etcd://${endpoints}`);
  try {
    for (const id of ['api-1', 'api-2']) servers.set(id, await startServer(id, endpoints));
    await using resolver = await new ServiceResolver(kv, service, {
      strategy: PickStrategy.RoundRobin,
      errorThreshold: 1,
    }).start();
    await waitFor(() => resolver.instances.length === 2, 'two instances');
    log(`resolved ${resolver.instances.map((i) => `${i.id}@${i.addr}`).join(', ')}`);

    const call = async (): Promise<string> => {
      const inst = resolver.pick();
      if (!inst) return 'no instance';
      try {
        const r = await fetch(`http://${inst.addr}/`, { signal: AbortSignal.timeout(1000) });
        resolver.reportSuccess(inst.id);
        return (await r.text()).trim();
      } catch {
        resolver.reportError(inst.id); // one error marks it down (errorThreshold: 1)
        return `${inst.id} failed`;
      }
    };
    const round = async (n: number) => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) out.push(await call());
      return out;
    };
    log(`4 calls: ${(await round(4)).join(' | ')}`);

    const killedAt = Date.now();
    servers.get('api-1')!.kill('SIGKILL');
    log('api-1 killed with SIGKILL (no deregistration)');
    log(`4 calls right after: ${(await round(4)).join(' | ')}`);
    await waitFor(() => !resolver.instances.some((i) => i.id === 'api-1'), 'api-1 to expire');
    log(
      `api-1 left the live list after ${((Date.now() - killedAt) / 1000).toFixed(1)} s (lease TTL ${ttlSeconds} s)`,
    );

    const stoppedAt = Date.now();
    servers.get('api-2')!.kill('SIGTERM');
    await waitFor(() => resolver.instances.length === 0, 'api-2 to deregister');
    log(
      `api-2 stopped with SIGTERM and deregistered after ${((Date.now() - stoppedAt) / 1000).toFixed(1)} s`,
    );
    log(`a call now: ${await call()}`);
  } finally {
    for (const c of servers.values()) if (c.exitCode === null) c.kill('SIGKILL');
    await kv.delete(`${service}/`, { prefix: true }).catch(() => undefined);
    await kv.close();
  }
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--serve');
  if (i >= 0) return serve(process.argv[i + 1]!, process.env.CONCLAVE_ENDPOINTS!);
  let endpoints = process.env.CONCLAVE_ENDPOINTS;
  let stop = async () => {};
  if (!endpoints) {
    if (!etcdBinary())
      throw new Error(
        'separate processes need a shared store: set CONCLAVE_ENDPOINTS=host:port or install etcd (apt-get install -y etcd-server)',
      );
    const etcd = (await startEtcd({ members: 1 }))!;
    endpoints = etcd.endpoints.join(',');
    stop = () => etcd.stop();
    console.log(`Service discovery between processes, on a private etcd at ${endpoints}`);
  } else console.log(`Service discovery between processes, on ${endpoints}`);
  try {
    await client(endpoints, (line) => console.log(`  ${line}`));
    console.log('Done.');
  } finally {
    await stop();
  }
  process.exit(0);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(`discovery failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  });
}
