/**
 * Cluster membership of one `conclave serve` member: the list Cluster.MemberList reports, the
 * changes of etcd's Cluster service (MemberAdd, MemberPromote, MemberRemove, MemberUpdate) as
 * single-server changes through the Raft core (Raft thesis §4.1: one at a time; learners first,
 * promoted once caught up), and the checks etcd makes before proposing one.
 *
 * - A change is decided on the leader (a follower forwards it over the peer side channel, as etcd
 *   3.4 forwards MemberPromote to the leader over peer HTTP): the leader checks it against its
 *   applied membership, proposes it, and answers once it applied. The follower then waits (bounded)
 *   until it applied the change too, so its own MemberList shows it at once.
 * - Every member applies committed changes in log order (`applied`): the core's configuration, the
 *   transport's peers (a new member is dialed and accepted; a removed one is refused for good) and
 *   the record in `<data-dir>/member.json`. A restart replays the changes after its snapshot; each
 *   is idempotent.
 * - `--strict-reconfig-check` (default true, as etcd 3.4): adding or promoting a voter needs
 *   a quorum of started voters in the new configuration, and every voter connected; removing a
 *   voter needs the remaining voters to keep a connected quorum (a voter that is down may always be
 *   removed). Refusals use etcd's texts ("re-configuration failed due to not enough started
 *   members", "unhealthy cluster"). etcd 3.4 allows one learner at a time (`maxLearners` = 1).
 * - A member added at run time gets etcd's member ID (SHA-1 of its peer URLs, the cluster token
 *   and the Unix time of the add: ids.ts) and the next unused Raft node id.
 * - "Started" is etcd's: a member whose name is known. Members learn an added member's name and
 *   client URLs from it once it runs (member.ts asks peers for them).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { ProposalDropped } from './consensus/assert.js';
import type { NodeStorage } from './consensus/node-storage.js';
import { encodeConfChange } from './consensus/raft.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type SnapshotMeta,
} from './consensus/types.js';
import type { RaftNode } from './node/node.js';
import type { MemberChange, MemberChangeResult, MemberDescription } from './server/api.js';
import {
  hexId,
  type Identity,
  type MemberIdentity,
  memberIdOf,
  normalizeUrl,
  writeIdentity,
} from './server/ids.js';
import type { TcpPeer, TcpTransport, TransportLogger } from './transport/tcp.js';

/** etcd 3.4's `maxLearners`: learners in a cluster at once. */
export const learnersMax = 1;
/** Peer URLs one member may have (a bound on outside input). */
export const peerUrlsMax = 16;
/** Members a discovery answer may list (a bound on what a joining member accepts). */
export const membersMax = 1024;

/** etcd's texts for refused membership changes (rpctypes/error.go), with their gRPC codes. */
export const memberErrors = {
  memberExist: 'etcdserver: member ID already exist',
  peerUrlExist: 'etcdserver: Peer URLs already exists',
  notEnoughStarted: 'etcdserver: re-configuration failed due to not enough started members',
  badUrls: 'etcdserver: given member URLs are invalid',
  notFound: 'etcdserver: member not found',
  notLearner: 'etcdserver: can only promote a learner member',
  learnerNotReady: 'etcdserver: can only promote a learner member which is in sync with leader',
  tooManyLearners: 'etcdserver: too many learner members in cluster',
  unhealthy: 'etcdserver: unhealthy cluster',
} as const;

export type { MemberChange, MemberChangeResult };

/**
 * What a removed member logs when it may not serve (at a restart, or when its peers refuse it),
 * and how to bring the machine back (etcd: "the member has been permanently removed from the
 * cluster").
 */
export const removedMemberText =
  'this member was removed from the cluster: it cannot rejoin with this data dir (add it again with etcdctl member add and start it afresh with --initial-cluster-state existing)';

/**
 * Whether the member whose record this is applied its own removal: it is no longer among the
 * members, or is listed as removed. Such a data dir must never serve again (its node id may not
 * vote or campaign: the others count it out of every quorum), whatever its peers answer.
 */
export function removedSelf(identity: Identity): boolean {
  return (
    !identity.members.some((m) => m.id === identity.memberId) ||
    (identity.removed ?? []).some((r) => r.id === identity.memberId)
  );
}

/** What a conf change entry carries besides the node id (JSON in `ConfChange.context`). */
interface ChangeContext {
  id: string;
  peerUrls?: string[];
}

export interface MembershipOptions {
  readonly identity: Identity;
  readonly dataDir: string;
  readonly log: TransportLogger;
  readonly strictReconfigCheck: boolean;
  /** How long a removed member keeps running before it stops (etcd: 10 ticks). */
  readonly removedStopDelayMs: number;
  /**
   * This member was removed from the cluster (it stops serving); `index` is the log index of the
   * removal (0 when it was learned from another member's record after a snapshot).
   */
  readonly onRemoved: (why: string, index: number) => void;
}

function fail(code: ErrorCode, text: string): ConclaveError {
  return new ConclaveError(code, text);
}

const sortedUrls = (urls: readonly string[]) => [...urls].sort();

/** Checks peer URLs of a MemberAdd/MemberUpdate as etcd's `types.NewURLs` does; etcd's text when bad. */
export function checkPeerUrls(urls: readonly unknown[]): string[] {
  if (urls.length === 0 || urls.length > peerUrlsMax)
    throw fail(ErrorCode.InvalidArgument, memberErrors.badUrls);
  try {
    return sortedUrls(urls.map((u) => normalizeUrl(String(u), 'peer URL')));
  } catch {
    throw fail(ErrorCode.InvalidArgument, memberErrors.badUrls);
  }
}

export function describe(m: MemberIdentity): MemberDescription {
  return {
    id: m.id,
    name: m.name,
    peerUrls: m.peerUrls,
    clientUrls: m.clientUrls,
    isLearner: m.isLearner === true,
  };
}

export function peerOf(m: MemberIdentity): TcpPeer {
  const u = new URL(m.peerUrls[0]!);
  return { nodeId: m.nodeId, memberId: m.id, host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port) };
}

export class Membership {
  readonly #o: MembershipOptions;
  readonly identity: Identity;
  #node: RaftNode | undefined;
  #transport: TcpTransport | undefined;
  #writing: Promise<void> = Promise.resolve();
  #removedSelf = false;

  constructor(o: MembershipOptions) {
    this.#o = o;
    this.identity = o.identity;
    this.identity.removed ??= [];
  }

  /** Connects the node and transport (they are made after the membership, which they report to). */
  attach(node: RaftNode, transport: TcpTransport): void {
    this.#node = node;
    this.#transport = transport;
  }

  get members(): readonly MemberIdentity[] {
    return this.identity.members;
  }

  byNode(nodeId: number): MemberIdentity | undefined {
    return this.identity.members.find((m) => m.nodeId === nodeId);
  }

  byId(id: bigint): MemberIdentity | undefined {
    return this.identity.members.find((m) => m.id === id);
  }

  list(): MemberDescription[] {
    return this.identity.members.map(describe);
  }

  /** Persists the record (serialized: the newest state is written last). */
  persist(): Promise<void> {
    const w = this.#writing.then(() =>
      writeIdentity(this.#o.dataDir, this.identity).catch((err: unknown) =>
        this.#o.log.warn({ err: String(err) }, 'could not record the membership'),
      ),
    );
    this.#writing = w;
    return w;
  }

  // --------------------------------------------------------------------------------------------
  // Applying committed changes (every member, in log order)

  /** A committed membership change applied to the core: update the list, the peers and the record. */
  applied(cc: ConfChange, index: number): void {
    let ctx: ChangeContext;
    try {
      ctx = JSON.parse(Buffer.from(cc.context ?? new Uint8Array(0)).toString('utf8')) as ChangeContext;
    } catch {
      this.#o.log.error({ index }, 'a membership change without its member: ignored here');
      return;
    }
    const id = BigInt(`0x${ctx.id}`);
    const ms = this.identity.members;
    const self = this.identity.memberId;
    const known = ms.find((m) => m.nodeId === cc.nodeId);
    let changed = false;
    switch (cc.type) {
      case 'add-learner':
      case 'add-voter': {
        const learner = cc.type === 'add-learner';
        if (known) {
          if ((known.isLearner === true) !== learner && !learner) {
            delete known.isLearner;
            changed = true;
            this.#o.log.info({ member: hexId(known.id), index }, 'learner promoted to voting member');
          }
          break;
        }
        if (this.identity.removed!.some((r) => r.nodeId === cc.nodeId)) break;
        const m: MemberIdentity = {
          id,
          nodeId: cc.nodeId,
          name: '',
          peerUrls: sortedUrls(ctx.peerUrls ?? []),
          clientUrls: [],
          ...(learner ? { isLearner: true } : {}),
        };
        ms.push(m);
        this.#transport?.addPeer(peerOf(m));
        changed = true;
        this.#o.log.info(
          { member: hexId(id), peerUrls: m.peerUrls, learner, index },
          learner ? 'member added as a learner' : 'member added',
        );
        break;
      }
      case 'remove': {
        const at = ms.findIndex((m) => m.nodeId === cc.nodeId);
        if (at < 0) break;
        const [gone] = ms.splice(at, 1);
        this.identity.removed!.push({ id: gone!.id, nodeId: gone!.nodeId });
        this.#transport?.removePeer(gone!.nodeId);
        changed = true;
        this.#o.log.info({ member: hexId(gone!.id), index }, 'member removed');
        if (gone!.id === self && !this.#removedSelf) {
          this.#removedSelf = true;
          // etcd stops a removed member after 10 ticks (stopWithDelay), so that the commit of its
          // removal (and answers to calls it served) reaches the others before it goes.
          setTimeout(
            () => this.#o.onRemoved(`this member (${hexId(self)}) was removed from the cluster`, index),
            this.#o.removedStopDelayMs,
          );
        }
        break;
      }
      case 'update': {
        if (!known || !ctx.peerUrls) break;
        const urls = sortedUrls(ctx.peerUrls);
        if (urls.join(',') === known.peerUrls.join(',')) break;
        known.peerUrls = urls;
        if (known.id !== self) this.#transport?.addPeer(peerOf(known));
        changed = true;
        this.#o.log.info({ member: hexId(known.id), peerUrls: urls, index }, 'member updated');
        break;
      }
    }
    if (changed) void this.persist();
  }

  /**
   * A snapshot from the leader was installed: its configuration may include changes this member
   * never saw as entries (compacted away). Members it does not know are asked for from the leader.
   */
  snapshotInstalled(meta: SnapshotMeta, askLeader: () => Promise<MembershipRecord | undefined>): void {
    if (this.#sameConf(meta.confState)) return;
    void askLeader()
      .then((r) => {
        if (r) this.adopt(r);
      })
      .catch((err: unknown) =>
        this.#o.log.warn({ err: String(err) }, 'could not learn the membership after a snapshot'),
      );
  }

  #sameConf(cs: ConfState): boolean {
    const mine = this.identity.members.map((m) => m.nodeId).sort((a, b) => a - b);
    const theirs = [...cs.voters, ...cs.learners].sort((a, b) => a - b);
    return mine.join(',') === theirs.join(',');
  }

  /** Takes another member's record of the membership (after a snapshot): adds and removes peers. */
  adopt(r: MembershipRecord): void {
    const self = this.identity.memberId;
    const theirs = new Map(r.members.map((m) => [m.nodeId, m]));
    for (const m of [...this.identity.members]) {
      if (theirs.has(m.nodeId) || m.id === self) continue;
      this.applied({ type: 'remove', nodeId: m.nodeId, context: contextOf({ id: hexId(m.id) }) }, 0);
    }
    for (const m of r.members) {
      const mine = this.byNode(m.nodeId);
      if (!mine) {
        this.applied(
          {
            type: m.isLearner ? 'add-learner' : 'add-voter',
            nodeId: m.nodeId,
            context: contextOf({ id: hexId(m.id), peerUrls: [...m.peerUrls] }),
          },
          0,
        );
        const added = this.byNode(m.nodeId);
        if (added && m.id !== self) {
          added.name = m.name;
          added.clientUrls = [...m.clientUrls];
        }
      } else if (mine.isLearner && !m.isLearner) {
        delete mine.isLearner;
      }
    }
    for (const rm of r.removed)
      if (!this.identity.removed!.some((x) => x.nodeId === rm.nodeId)) this.identity.removed!.push(rm);
    void this.persist();
  }

  /** This member's record, for a joining member or a member that installed a snapshot. */
  record(): MembershipRecord {
    return {
      clusterId: this.identity.clusterId,
      members: this.identity.members.map((m) => ({ ...m })),
      removed: [...(this.identity.removed ?? [])],
    };
  }

  // --------------------------------------------------------------------------------------------
  // Deciding a change (on the leader)

  /**
   * Checks and proposes `c` on this member, which leads; resolves once it applied here. Refusals
   * throw `ConclaveError`s whose message is etcd's text.
   */
  async change(c: MemberChange): Promise<MemberChangeResult> {
    const node = this.#node!;
    const ms = this.identity.members;
    let cc: ConfChange;
    let addedId: bigint | undefined;
    switch (c.op) {
      case 'add': {
        const urls = checkPeerUrls(c.peerUrls);
        for (const m of ms)
          if (m.peerUrls.some((u) => urls.includes(u)))
            throw fail(ErrorCode.Conflict, memberErrors.peerUrlExist);
        const id = memberIdOf(urls, this.identity.token, Date.now() / 1000);
        if (ms.some((m) => m.id === id) || this.identity.removed!.some((r) => r.id === id))
          throw fail(ErrorCode.Conflict, memberErrors.memberExist);
        if (c.isLearner) {
          if (ms.filter((m) => m.isLearner).length >= learnersMax)
            throw fail(ErrorCode.Conflict, memberErrors.tooManyLearners);
        } else this.#mayAddVoter();
        addedId = id;
        cc = {
          type: c.isLearner ? 'add-learner' : 'add-voter',
          nodeId: this.#nextNodeId(),
          context: contextOf({ id: hexId(id), peerUrls: urls }),
        };
        break;
      }
      case 'remove': {
        const m = this.byId(c.id);
        if (!m) throw fail(ErrorCode.InvalidArgument, memberErrors.notFound);
        if (!m.isLearner) this.#mayRemoveVoter(m);
        cc = { type: 'remove', nodeId: m.nodeId, context: contextOf({ id: hexId(m.id) }) };
        break;
      }
      case 'promote': {
        const m = this.byId(c.id);
        if (!m) throw fail(ErrorCode.InvalidArgument, memberErrors.notFound);
        if (!m.isLearner) throw fail(ErrorCode.Conflict, memberErrors.notLearner);
        this.#mayAddVoter();
        cc = { type: 'add-voter', nodeId: m.nodeId, context: contextOf({ id: hexId(m.id) }) };
        break;
      }
      case 'update': {
        const m = this.byId(c.id);
        if (!m) throw fail(ErrorCode.InvalidArgument, memberErrors.notFound);
        const urls = checkPeerUrls(c.peerUrls);
        for (const o of ms)
          if (o !== m && o.peerUrls.some((u) => urls.includes(u)))
            throw fail(ErrorCode.Conflict, memberErrors.peerUrlExist);
        cc = { type: 'update', nodeId: m.nodeId, context: contextOf({ id: hexId(m.id), peerUrls: urls }) };
        break;
      }
    }
    let index: number;
    try {
      index = await node.proposeConfChange(cc);
    } catch (err) {
      if (err instanceof ProposalDropped) {
        if (err.reason === 'learner-behind') throw fail(ErrorCode.Conflict, memberErrors.learnerNotReady);
        if (err.reason === 'conf-change-pending')
          throw new ConclaveError(
            ErrorCode.Unavailable,
            'etcdserver: a membership change is still being applied; retry (changes are made one at a time)',
            { retryable: true },
          );
        throw new ConclaveError(ErrorCode.Unavailable, `etcdserver: ${err.message}`, { retryable: true });
      }
      throw err;
    }
    const added = addedId !== undefined ? this.byId(addedId) : undefined;
    return { ...(added ? { member: describe(added) } : {}), members: this.list(), index };
  }

  #nextNodeId(): number {
    let max = 0;
    for (const m of this.identity.members) max = Math.max(max, m.nodeId);
    for (const r of this.identity.removed ?? []) max = Math.max(max, r.nodeId);
    // The core may know node ids this record has not caught up with (a change in flight).
    for (const id of this.#node?.raft.prs.keys() ?? []) max = Math.max(max, id);
    return max + 1;
  }

  #voters(): MemberIdentity[] {
    return this.identity.members.filter((m) => !m.isLearner);
  }

  #active(m: MemberIdentity): boolean {
    return m.id === this.identity.memberId || (this.#transport?.connected(m.nodeId) ?? false);
  }

  /** etcd's mayAddMember / mayPromoteMember under --strict-reconfig-check. */
  #mayAddVoter(): void {
    if (!this.#o.strictReconfigCheck) return;
    const voters = this.#voters();
    const nmembers = voters.length + 1;
    const nstarted = voters.filter((m) => m.name !== '').length;
    // etcd: adding a second member to a one-member cluster (restoring a cluster) is allowed.
    if (!(nstarted === 1 && nmembers === 2) && nstarted < Math.floor(nmembers / 2) + 1)
      throw fail(ErrorCode.Conflict, memberErrors.notEnoughStarted);
    if (!voters.every((m) => this.#active(m))) throw fail(ErrorCode.Unavailable, memberErrors.unhealthy);
  }

  /** etcd's mayRemoveMember under --strict-reconfig-check (a learner may always be removed). */
  #mayRemoveVoter(gone: MemberIdentity): void {
    if (!this.#o.strictReconfigCheck) return;
    const rest = this.#voters().filter((m) => m.id !== gone.id);
    const nstarted = rest.filter((m) => m.name !== '').length;
    if (nstarted < Math.floor(rest.length / 2) + 1)
      throw fail(ErrorCode.Conflict, memberErrors.notEnoughStarted);
    // A member that is down is not part of the active quorum: removing it is safe.
    if (!this.#active(gone)) return;
    const voters = this.#voters();
    const active = voters.filter((m) => this.#active(m)).length;
    if (active - 1 < 1 + Math.floor((voters.length - 1) / 2))
      throw fail(ErrorCode.Unavailable, memberErrors.unhealthy);
  }
}

/** A member's record of the membership, as one member tells another (JSON on the side channel). */
export interface MembershipRecord {
  readonly clusterId: bigint;
  readonly members: readonly MemberIdentity[];
  readonly removed: readonly { id: bigint; nodeId: number }[];
}

/**
 * etcd's `--force-new-cluster` on a data dir (etcd `restartAsStandaloneNode`): this member becomes
 * a one-member cluster, keeping its data, member ID and cluster ID. The log's uncommitted tail is
 * discarded (no quorum will ever commit it), and a committed `remove` of every other member is
 * appended at the current term, so the usual replay at start applies them: the core's
 * configuration becomes this member alone (it elects itself), and the record and the transport
 * drop the others (which, if they come back, are refused as removed). Resolves with the IDs of the
 * members removed. Call before the node starts, with the storage opened on the data dir.
 */
export async function forceNewCluster(
  storage: Pick<NodeStorage, 'save' | 'lastIndex'> & {
    hardState: { term: number; vote: number; commit: number };
  },
  identity: Identity,
): Promise<bigint[]> {
  const self = identity.members.find((m) => m.id === identity.memberId);
  if (!self || self.isLearner)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      '--force-new-cluster: this member is a learner (or not a member): only a voting member can become a one-member cluster',
    );
  const others = identity.members.filter((m) => m.id !== identity.memberId);
  if (others.length === 0) return [];
  const hs = storage.hardState;
  const term = Math.max(1, hs.term);
  const entries: Entry[] = others.map((m, k) => ({
    term,
    index: hs.commit + 1 + k,
    type: EntryType.ConfChange,
    data: encodeConfChange({ type: 'remove', nodeId: m.nodeId, context: contextOf({ id: hexId(m.id) }) }),
  }));
  await storage.save({
    entries,
    hardState: { term, vote: hs.vote, commit: entries[entries.length - 1]!.index },
  });
  return others.map((m) => m.id);
}

function contextOf(c: ChangeContext): Uint8Array {
  return new Uint8Array(Buffer.from(JSON.stringify(c), 'utf8'));
}

export function encodeRecord(r: MembershipRecord): Uint8Array {
  return Buffer.from(
    JSON.stringify({
      clusterId: hexId(r.clusterId),
      members: r.members.map((m) => ({
        id: hexId(m.id),
        nodeId: m.nodeId,
        name: m.name,
        peerUrls: m.peerUrls,
        clientUrls: m.clientUrls,
        isLearner: m.isLearner === true,
      })),
      removed: r.removed.map((x) => ({ id: hexId(x.id), nodeId: x.nodeId })),
    }),
  );
}

/** Decodes a record from a peer, checking its shape (it is outside input). */
export function decodeRecord(b: Uint8Array): MembershipRecord {
  const bad = (why: string) =>
    new ConclaveError(ErrorCode.Internal, `a malformed membership record from a peer: ${why}`);
  const j = JSON.parse(Buffer.from(b).toString('utf8')) as Record<string, unknown>;
  const hex = (v: unknown) => {
    if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) throw bad(`"${String(v)}" is not a hex ID`);
    return BigInt(`0x${v}`);
  };
  const node = (v: unknown) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw bad(`node id ${String(v)}`);
    return v;
  };
  const strs = (v: unknown) => {
    if (!Array.isArray(v) || v.length > peerUrlsMax) throw bad('a URL list');
    return v.map(String);
  };
  if (!Array.isArray(j.members) || j.members.length === 0 || j.members.length > membersMax)
    throw bad('members');
  const removed = Array.isArray(j.removed) ? j.removed : [];
  if (removed.length > 100 * membersMax) throw bad('removed');
  return {
    clusterId: hex(j.clusterId),
    members: (j.members as Array<Record<string, unknown>>).map((m) => ({
      id: hex(m.id),
      nodeId: node(m.nodeId),
      name: String(m.name ?? ''),
      peerUrls: strs(m.peerUrls),
      clientUrls: strs(m.clientUrls),
      ...(m.isLearner === true ? { isLearner: true } : {}),
    })),
    removed: (removed as Array<Record<string, unknown>>).map((x) => ({
      id: hex(x.id),
      nodeId: node(x.nodeId),
    })),
  };
}
