/** Placeholder until test/harness/etcd.ts lands. */
export interface OwnEtcd {
  readonly endpoints: readonly string[];
  readonly pids: readonly number[];
  stop(): Promise<void>;
}
export async function startOwnEtcd(_members: 1 | 3, _signal: AbortSignal): Promise<OwnEtcd> {
  throw new Error('test/harness/etcd.ts is not there yet: pass --endpoints');
}
