/** A description of where the numbers came from, stored in every result file. */
import os from 'node:os';

export interface MachineInfo {
  readonly cpus: number;
  readonly cpuModel: string;
  readonly memoryGiB: number;
  readonly platform: string;
  readonly node: string;
  /** 1/5/15-minute load averages when the run started: > cpus means the machine was busy. */
  readonly loadAvgAtStart: readonly number[];
  /** Load averages when the run ended (the run's own load included). */
  loadAvgAtEnd?: readonly number[];
  etcdVersion?: string;
}

export function describeMachine(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadAvgAtStart: loadAverages(),
  };
}

/** etcd's server version from its `/version` HTTP endpoint (served on the client URL), if reachable. */
export async function etcdVersion(endpoint: string): Promise<string | undefined> {
  const base = /^https?:\/\//.test(endpoint) ? endpoint : `http://${endpoint}`;
  try {
    const res = await fetch(`${base}/version`, { signal: AbortSignal.timeout(2000) });
    const body = (await res.json()) as { etcdserver?: string };
    return body.etcdserver;
  } catch {
    return undefined;
  }
}

export function loadAverages(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}
