/** The benchmark's own etcd and `conclave serve` clusters: the test harnesses, made abortable. */
import { startEtcd } from '../test/harness/etcd.js';
import { startServed } from '../test/harness/served.js';

export interface OwnEtcd {
  readonly endpoints: readonly string[];
  readonly pids: readonly number[];
  stop(): Promise<void>;
}

export async function startOwnEtcd(members: 1 | 3, signal: AbortSignal): Promise<OwnEtcd> {
  signal.throwIfAborted();
  // Benchmarks use etcd's default timing (100 ms heartbeat, 1 s election), as a deployment would.
  const c = await startEtcd({ members, heartbeatMs: 100, electionTimeoutMs: 1000 });
  if (!c) throw new Error('no etcd found: install etcd-server or pass --endpoints');
  if (signal.aborted) {
    await c.stop();
    signal.throwIfAborted();
  }
  return { endpoints: c.endpoints, pids: c.pids, stop: () => c.stop() };
}

/**
 * Three `conclave serve` processes on loopback with etcd's default timing (100 ms heartbeat, 1 s
 * election), durable in temporary data dirs: the served backend (fsync on every write, like etcd).
 */
export async function startOwnServed(signal: AbortSignal): Promise<OwnEtcd> {
  signal.throwIfAborted();
  const c = await startServed({ members: 3, heartbeatMs: 100, electionTimeoutMs: 1000 });
  if (signal.aborted) {
    await c.close();
    signal.throwIfAborted();
  }
  return { endpoints: c.endpoints, pids: c.pids(), stop: () => c.close() };
}
