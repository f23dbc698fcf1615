/**
 * etcdctl 3.4 (API v3) run by tests against any endpoints (real etcd or `conclave serve`): whether
 * it is installed, one call returning stdout (or throwing with what it printed), and
 * `member list -w json` with its member IDs as hex, as `etcdctl member ...` takes them.
 */
import { execFileSync, spawnSync } from 'node:child_process';

/** Whether etcdctl is on the PATH (tests that need it `describe.skipIf(!hasEtcdctl)`). */
export const hasEtcdctl: boolean = (() => {
  try {
    execFileSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** The longest one etcdctl process may run before it is killed (ms). */
export const etcdctlProcessMsMax = 30_000;

export interface EtcdctlOptions {
  /** etcdctl's `--command-timeout` (default `10s`). */
  commandTimeout?: string;
}

/** Runs `etcdctl --endpoints <endpoints> <args>`; returns stdout, or throws with stderr (or stdout). */
export function etcdctl(
  endpoints: readonly string[],
  args: readonly string[],
  o: EtcdctlOptions = {},
): string {
  const r = spawnSync(
    'etcdctl',
    ['--endpoints', endpoints.join(','), `--command-timeout=${o.commandTimeout ?? '10s'}`, ...args],
    { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: etcdctlProcessMsMax },
  );
  if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr || r.stdout || r.error}`);
  return r.stdout;
}

export interface ListedMember {
  /** The member ID as hex (etcdctl prints it so, and takes it so in `member remove/promote/update`). */
  id: string;
  /** '' for a member added but not started yet. */
  name: string;
  /** The first peer URL ('' when none). */
  peer: string;
  learner: boolean;
}

/**
 * `etcdctl member list -w json` at `endpoints`. The IDs are read from the raw text: they are
 * uint64s, which JSON.parse would round to the nearest double.
 */
export function listMembers(endpoints: readonly string[], o: EtcdctlOptions = {}): ListedMember[] {
  const out = etcdctl(endpoints, ['member', 'list', '-w', 'json'], o);
  const ids = [...out.matchAll(/"ID":(\d+)/g)].map((m) => BigInt(m[1]!).toString(16));
  const j = JSON.parse(out) as {
    members: Array<{ name?: string; peerURLs?: string[]; isLearner?: boolean }>;
  };
  return j.members.map((m, k) => ({
    id: ids[k]!,
    name: m.name ?? '',
    peer: (m.peerURLs ?? [])[0] ?? '',
    learner: m.isLearner === true,
  }));
}
