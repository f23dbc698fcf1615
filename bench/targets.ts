/**
 * Opening the systems under test. A target that cannot be opened (its backend or client is not
 * built yet, its server is unreachable) is returned as unavailable with the reason, so a
 * side-by-side run still measures the others and says plainly what it skipped.
 */

import { connect } from '../backends/connect.js';
import { startCluster } from '../backends/raft/embedded.js';
import { Etcd3Adapter } from './clients/etcd3-adapter.js';
import { Backend, type BenchTarget, ClientKind, targetLabel } from './clients/types.js';
import { describe } from './load.js';

export interface UnavailableTarget {
  readonly backend: Backend;
  readonly client: ClientKind;
  readonly reason: string;
}

export type OpenResult = { ok: true; target: BenchTarget } | { ok: false; unavailable: UnavailableTarget };

/** How long opening one target may take before it is reported unavailable. */
const openTimeoutMs = 15_000;

async function withTimeout<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: not ready within ${openTimeoutMs} ms`)),
      openTimeoutMs,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Proves a client path works with one write and one read before any phase relies on it. */
async function probe(t: BenchTarget): Promise<void> {
  const key = `conclave-bench/probe/${process.pid}`;
  await t.kv.put(key, 'probe');
  const kv = await t.kv.get(key);
  if (kv === undefined) throw new Error(`${targetLabel(t)}: probe key written but not read back`);
  await t.kv.delete(key);
}

/** A target speaking etcd's gRPC API: real etcd, or `conclave serve` processes (`backend` served). */
export async function openEtcdTarget(
  client: ClientKind,
  endpoints: readonly string[],
  serverPids: readonly number[],
  backend: Backend = Backend.Etcd,
): Promise<OpenResult> {
  let target: BenchTarget | undefined;
  try {
    if (client === ClientKind.Etcd3) {
      const adapter = new Etcd3Adapter(endpoints);
      target = {
        backend,
        client,
        kv: adapter,
        etcd3: adapter.client,
        serverPids,
        notes: [],
        openClient: async () => {
          const more = new Etcd3Adapter(endpoints);
          return { etcd3: more.client, close: () => more.close() };
        },
      };
    } else {
      const kv = await withTimeout(
        'conclave etcd client',
        connect({ backend: 'etcd', endpoints: [...endpoints] }),
      );
      target = {
        backend,
        client,
        kv,
        conclave: kv,
        serverPids,
        notes: [],
        openClient: async () => {
          const more = await connect({ backend: 'etcd', endpoints: [...endpoints] });
          return { conclave: more, close: () => more.close() };
        },
      };
    }
    await withTimeout(`${targetLabel(target)} probe`, probe(target));
    return { ok: true, target };
  } catch (err) {
    await target?.kv.close().catch(() => undefined);
    return { ok: false, unavailable: { backend, client, reason: describe(err) } };
  }
}

export async function openEmbeddedTarget(nodes: number, dataDir: string | undefined): Promise<OpenResult> {
  const client = ClientKind.Conclave;
  let target: BenchTarget | undefined;
  try {
    const cluster = await withTimeout(
      'embedded backend',
      startCluster({ nodes, ...(dataDir !== undefined ? { dataDir } : {}) }),
    );
    const kv = cluster.kv;
    const close = kv.close.bind(kv);
    kv.close = async () => {
      await close();
      await cluster.close();
    };
    const notes = [
      `${nodes} in-process node(s)`,
      dataDir === undefined ? 'memory-only storage' : `durable storage in ${dataDir}`,
    ];
    target = {
      backend: Backend.Embedded,
      client,
      kv,
      conclave: kv,
      serverPids: [],
      notes,
      ...(dataDir !== undefined ? { storageStats: () => cluster.storageStats() } : {}),
    };
    await withTimeout('embedded probe', probe(target));
    return { ok: true, target };
  } catch (err) {
    await target?.kv.close().catch(() => undefined);
    return { ok: false, unavailable: { backend: Backend.Embedded, client, reason: describe(err) } };
  }
}
