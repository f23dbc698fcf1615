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

export async function lockProviderFor(ctx: PhaseContext, workers: number): Promise<LockProvider> {
  const { target } = ctx;
  if (target.client === 'etcd3') {
    if (target.etcd3 === undefined) throw new Error('etcd3 target without its client');
    return electionProvider(target.etcd3, `${ctx.prefix}/election`);
  }
  if (target.conclave === undefined) throw new NotAvailable(`${target.backend}: no Conclave KV`);
  return mutexProvider(target.conclave, `${ctx.prefix}/mutex`, workers, ctx.signal);
}

async function mutexProvider(
  kv: KV,
  name: string,
  workers: number,
  signal: AbortSignal,
): Promise<LockProvider> {
  const { Mutex } = await loadMutex();
  const sessions: Session[] = [];
  try {
    for (let w = 0; w < workers; w++)
      sessions.push(await Session.create(kv, { ttlSeconds: sessionTtlSeconds }));
  } catch (err) {
    await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
    throw err;
  }
  const mutexes = sessions.map((s) => new Mutex(s, name));
  return {
    label: 'conclave Mutex',
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

function electionProvider(client: import('etcd3').Etcd3, name: string): LockProvider {
  const election = client.election(name, sessionTtlSeconds);
  return {
    label: 'etcd3 Election as lock',
    acquire: async (w) => {
      const campaign = election.campaign(`worker-${w}`);
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
