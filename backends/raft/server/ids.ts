/**
 * Member and cluster identity, derived exactly as etcd 3.4 derives it, and persisted in the data
 * directory.
 *
 * - Member ID (etcd `membership.NewMember`): the first 8 bytes, big-endian, of
 *   SHA-1(the member's peer URLs sorted and concatenated ‖ the cluster token [‖ the decimal Unix
 *   seconds, for a member added at run time]). Every member of a new cluster computes every ID
 *   from `--initial-cluster` and `--initial-cluster-token` alone, with no exchange.
 * - Cluster ID (etcd `RaftCluster.genID`): the first 8 bytes, big-endian, of SHA-1(the member IDs
 *   sorted ascending, each as 8 big-endian bytes).
 * - The Raft core's node ids are small integers: member i (1-based) in ascending member-ID order.
 *   Every member derives the same mapping from the same `--initial-cluster`, and each persists it.
 *
 * Identity (`<data-dir>/member.json`) is written once, when a new member first starts, before its
 * WAL exists; a restart reads it from there and ignores `--initial-cluster*` (as etcd ignores them
 * once its data dir exists). The file is written to a temporary name, fsynced and renamed, so it
 * is either absent or whole.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { NodeId } from '../consensus/types.js';

/** etcd's default `--initial-cluster-token`. */
export const defaultClusterToken = 'etcd-cluster';
/** The identity file's format version. */
export const identityFormat = 1;
export const identityFile = 'member.json';

const first8 = (b: Buffer): bigint => b.readBigUInt64BE(0);

/** etcd's member ID for `peerUrls` in the cluster named by `token` (`addedAtUnixSeconds` for added members). */
export function memberIdOf(peerUrls: readonly string[], token: string, addedAtUnixSeconds?: number): bigint {
  const h = createHash('sha1');
  for (const u of [...peerUrls].sort()) h.update(u, 'utf8');
  h.update(token, 'utf8');
  if (addedAtUnixSeconds !== undefined) h.update(String(Math.floor(addedAtUnixSeconds)), 'utf8');
  return first8(h.digest());
}

/** etcd's cluster ID of a cluster whose members have these IDs. */
export function clusterIdOf(memberIds: readonly bigint[]): bigint {
  const sorted = [...memberIds].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const b = Buffer.alloc(8 * sorted.length);
  for (let i = 0; i < sorted.length; i++) b.writeBigUInt64BE(sorted[i]!, 8 * i);
  return first8(createHash('sha1').update(b).digest());
}

/** An ID as etcdctl prints it (lowercase hex, no padding). */
export const hexId = (id: bigint): string => id.toString(16);

export interface MemberIdentity {
  readonly id: bigint;
  readonly nodeId: NodeId;
  /** Empty while an added member has not started (etcdctl prints "unstarted"). */
  name: string;
  /** Sorted. Changed by MemberUpdate. */
  peerUrls: readonly string[];
  /** As last learned (a member's own from its flags; a peer's from the peer). */
  clientUrls: readonly string[];
  /** A learner (non-voting) member, until promoted. */
  isLearner?: boolean;
}

/** A member removed from the cluster: its IDs are never used again. */
export interface RemovedMember {
  readonly id: bigint;
  readonly nodeId: NodeId;
}

export interface Identity {
  readonly clusterId: bigint;
  readonly memberId: bigint;
  readonly nodeId: NodeId;
  readonly name: string;
  readonly token: string;
  /** The cluster's members as of the last membership change this member applied. */
  members: MemberIdentity[];
  /** Members removed so far (refused if they come back; their node ids are not reused). */
  removed?: RemovedMember[];
}

/**
 * Parses `--initial-cluster` (`name=url,name=url,…`; a name may repeat to give a member several
 * peer URLs, as in etcd). Throws `invalid-argument` with the offending part.
 */
export function parseInitialCluster(s: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const part of s.split(',')) {
    const p = part.trim();
    if (p === '') continue;
    const eq = p.indexOf('=');
    if (eq <= 0 || eq === p.length - 1)
      throw new ConclaveError(ErrorCode.InvalidArgument, `--initial-cluster: "${p}" is not name=peer-url`);
    const name = p.slice(0, eq);
    const url = normalizeUrl(p.slice(eq + 1), '--initial-cluster');
    out.set(name, [...(out.get(name) ?? []), url]);
  }
  if (out.size === 0) throw new ConclaveError(ErrorCode.InvalidArgument, '--initial-cluster is empty');
  return out;
}

/** Checks an `http://host:port` or `https://host:port` URL and returns it as given (no trailing slash). */
export function normalizeUrl(u: string, flag: string): string {
  let url: URL;
  try {
    url = new URL(u);
  } catch {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${flag}: "${u}" is not a URL (want http://host:port or https://host:port)`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${flag}: "${u}": only http:// and https:// URLs are served`,
    );
  if (url.port === '' || (url.pathname !== '/' && url.pathname !== ''))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${flag}: "${u}" must be http(s)://host:port (a port, no path)`,
    );
  return u.replace(/\/$/, '');
}

/** The identity of a new cluster's member `name`, derived from the initial cluster and token. */
export function bootstrapIdentity(o: {
  name: string;
  initialCluster: Map<string, string[]>;
  token: string;
  clientUrls: readonly string[];
}): Identity {
  const own = o.initialCluster.get(o.name);
  if (!own)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `--initial-cluster has no member named "${o.name}" (--name); it lists ${[...o.initialCluster.keys()].join(', ')}`,
    );
  const derived = [...o.initialCluster].map(([name, urls]) => ({
    name,
    urls,
    id: memberIdOf(urls, o.token),
  }));
  derived.sort((a, b) => (a.id < b.id ? -1 : 1));
  for (let i = 1; i < derived.length; i++)
    if (derived[i]!.id === derived[i - 1]!.id)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `--initial-cluster: members ${derived[i - 1]!.name} and ${derived[i]!.name} have the same peer URLs`,
      );
  const members: MemberIdentity[] = derived.map((d, i) => ({
    id: d.id,
    nodeId: i + 1,
    name: d.name,
    peerUrls: [...d.urls].sort(),
    clientUrls: d.name === o.name ? [...o.clientUrls] : [],
  }));
  const self = members.find((m) => m.name === o.name)!;
  return {
    clusterId: clusterIdOf(members.map((m) => m.id)),
    memberId: self.id,
    nodeId: self.nodeId,
    name: o.name,
    token: o.token,
    members,
  };
}

interface IdentityJson {
  format: number;
  clusterId: string;
  memberId: string;
  name: string;
  token: string;
  members: Array<{
    id: string;
    nodeId: number;
    name: string;
    peerUrls: string[];
    clientUrls: string[];
    isLearner?: boolean;
  }>;
  removed?: Array<{ id: string; nodeId: number }>;
}

function toJson(i: Identity): IdentityJson {
  return {
    format: identityFormat,
    clusterId: hexId(i.clusterId),
    memberId: hexId(i.memberId),
    name: i.name,
    token: i.token,
    members: i.members.map((m) => ({
      id: hexId(m.id),
      nodeId: m.nodeId,
      name: m.name,
      peerUrls: [...m.peerUrls],
      clientUrls: [...m.clientUrls],
      ...(m.isLearner ? { isLearner: true } : {}),
    })),
    ...(i.removed && i.removed.length > 0
      ? { removed: i.removed.map((r) => ({ id: hexId(r.id), nodeId: r.nodeId })) }
      : {}),
  };
}

function fromJson(j: IdentityJson, file: string): Identity {
  const bad = (why: string) =>
    new ConclaveError(ErrorCode.Corrupt, `${file}: ${why}; restore the data dir or start this member afresh`);
  if (j.format !== identityFormat) throw bad(`identity format ${String(j.format)} is not ${identityFormat}`);
  const big = (s: unknown) => {
    if (typeof s !== 'string' || !/^[0-9a-f]{1,16}$/.test(s)) throw bad(`"${String(s)}" is not a hex ID`);
    return BigInt(`0x${s}`);
  };
  if (!Array.isArray(j.members) || j.members.length === 0) throw bad('no members');
  const members: MemberIdentity[] = j.members.map((m) => ({
    id: big(m.id),
    nodeId: m.nodeId,
    name: String(m.name),
    peerUrls: [...m.peerUrls],
    clientUrls: [...m.clientUrls],
    ...(m.isLearner === true ? { isLearner: true } : {}),
  }));
  const removed = (Array.isArray(j.removed) ? j.removed : []).map((r) => ({
    id: big(r.id),
    nodeId: r.nodeId,
  }));
  const memberId = big(j.memberId);
  // A member that applied its own removal is listed under `removed` only: its identity is read
  // as it is, and the caller refuses to start it (membership.ts `removedSelf`).
  const self = members.find((m) => m.id === memberId) ?? removed.find((r) => r.id === memberId);
  if (!self) throw bad('this member is not among its members');
  return {
    clusterId: big(j.clusterId),
    memberId,
    nodeId: self.nodeId,
    name: j.name,
    token: j.token,
    members,
    ...(removed.length > 0 ? { removed } : {}),
  };
}

/** Reads the identity of the member whose data dir this is; `undefined` when it has none yet. */
export async function readIdentity(dataDir: string): Promise<Identity | undefined> {
  const file = join(dataDir, identityFile);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let j: IdentityJson;
  try {
    j = JSON.parse(text) as IdentityJson;
  } catch (err) {
    throw new ConclaveError(ErrorCode.Corrupt, `${file} is not valid JSON; restore the data dir`, {
      cause: err,
    });
  }
  return fromJson(j, file);
}

/** Writes the identity durably (temporary file, fsync, rename, fsync of the directory). */
export async function writeIdentity(dataDir: string, i: Identity): Promise<void> {
  await mkdir(dataDir, { recursive: true });
  const file = join(dataDir, identityFile);
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(`${JSON.stringify(toJson(i), null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  const dir = await open(dataDir, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
