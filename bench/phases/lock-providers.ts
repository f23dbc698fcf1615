/**
 * The locks the handoff phase can drive. Each `acquire(worker)` resolves with a release function
 * once the worker holds the lock; it gives up after `acquireTimeoutMs` so a stuck lock cannot hang
 * the run.
 */
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import { NotAvailable, type PhaseContext } from './types.js';

const acquireTimeoutMs = 15_000;
const sessionTtlSeconds = 10;

export interface LockProvider {
  readonly label: string;
  acquire(worker: number): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** The part of recipes/mutex.ts this phase uses (typed here so the bench compiles before it lands). */
interface MutexModule {
  Mutex: new (
    session: Session,
    name: string,
  ) => {
    lock(opts?: {
      signal?: AbortSignal;
    }): Promise<{ unlock?: () => Promise<void> } & Partial<AsyncDisposable>>;
  };
}

// A variable specifier keeps TypeScript from resolving the module, which may not exist yet.
const mutexModulePath = '../../recipes/mutex.js';

async function loadMutex(): Promise<MutexModule> {
  try {
    return (await import(mutexModulePath)) as MutexModule;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ERR_MODULE_NOT_FOUND') throw new NotAvailable('recipes/mutex.ts is not written yet');
    throw err;
  }
}

/**
 * The lock of `ctx.target` for `workers` workers. `separateClients`: each worker gets a client of
 * its own (its own connection, as separate processes would have) instead of sharing the target's.
 */
export async function lockProviderFor(
  ctx: PhaseContext,
  workers: number,
  separateClients = false,
): Promise<LockProvider> {
  const { target } = ctx;
  if (separateClients && target.openClient === undefined)
    throw new NotAvailable(`${target.backend}: one client only (no separate clients to open)`);
  const opened: Array<{ conclave?: KV; etcd3?: import('etcd3').Etcd3; close(): Promise<void> }> = [];
  const closeOpened = () => Promise.all(opened.map((c) => c.close().catch(() => undefined)));
  try {
    if (separateClients) for (let w = 0; w < workers; w++) opened.push(await target.openClient!());
  } catch (err) {
    await closeOpened();
    throw err;
  }
  const withClients = (p: LockProvider): LockProvider => ({
    ...p,
    close: async () => {
      await p.close();
      await closeOpened();
    },
  });
  if (target.client === 'etcd3') {
    if (target.etcd3 === undefined) throw new Error('etcd3 target without its client');
    const clients = separateClients ? opened.map((c) => c.etcd3!) : [target.etcd3];
    return withClients(electionProvider(clients, `${ctx.prefix}/election`));
  }
  if (target.conclave === undefined) throw new NotAvailable(`${target.backend}: no Conclave KV`);
  const kvs = separateClients ? opened.map((c) => c.conclave!) : [target.conclave];
  try {
    return withClients(await mutexProvider(kvs, `${ctx.prefix}/mutex`, workers, ctx.signal));
  } catch (err) {
    await closeOpened();
    throw err;
  }
}

/** Worker `w` uses `kvs[w % kvs.length]`. */
async function mutexProvider(
  kvs: readonly KV[],
  name: string,
  workers: number,
  signal: AbortSignal,
): Promise<LockProvider> {
  const { Mutex } = await loadMutex();
  const sessions: Session[] = [];
  try {
    for (let w = 0; w < workers; w++)
      sessions.push(await Session.create(kvs[w % kvs.length]!, { ttlSeconds: sessionTtlSeconds }));
  } catch (err) {
    await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
    throw err;
  }
  const mutexes = sessions.map((s) => new Mutex(s, name));
  return {
    label: kvs.length > 1 ? 'conclave Mutex, a client per worker' : 'conclave Mutex',
    acquire: async (w) => {
      const handle = await mutexes[w]!.lock({
        signal: AbortSignal.any([signal, AbortSignal.timeout(acquireTimeoutMs)]),
      });
      if (typeof handle.unlock === 'function') return () => handle.unlock!();
      const dispose = handle[Symbol.asyncDispose];
      if (dispose === undefined) throw new Error('Mutex.lock() returned a handle without unlock()');
      return async () => {
        await dispose.call(handle);
      };
    },
    close: async () => {
      await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
    },
  };
}

/** Worker `w` uses `clients[w % clients.length]`. */
function electionProvider(clients: ReadonlyArray<import('etcd3').Etcd3>, name: string): LockProvider {
  const elections = clients.map((c) => c.election(name, sessionTtlSeconds));
  return {
    label: clients.length > 1 ? 'etcd3 Election as lock, a client per worker' : 'etcd3 Election as lock',
    acquire: async (w) => {
      const campaign = elections[w % elections.length]!.campaign(`worker-${w}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`campaign not elected in ${acquireTimeoutMs} ms`)),
          acquireTimeoutMs,
        );
      });
      try {
        await Promise.race([campaign.wait(), timeout]);
      } catch (err) {
        await campaign.resign().catch(() => undefined);
        throw err;
      } finally {
        clearTimeout(timer);
      }
      return () => campaign.resign();
    },
    close: async () => undefined,
  };
}
