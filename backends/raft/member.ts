/**
 * One `conclave serve` member: a Raft node over durable storage (the WAL and snapshots in
 * `--data-dir`) and the TCP peer transport, with its identity (etcd member and cluster IDs), as
 * the `MemberBackend` the client API serves (server/api.ts).
 *
 * Requests on this member (`MemberKV`), as an etcd member serves them:
 * - writes are proposed here; a follower's core forwards them to the leader, and the call
 *   resolves once this member has applied the entry (so a client sees its own write on the member
 *   it talks to). A proposal refused before it entered the log (no leader yet) is retried with a
 *   short backoff, a bounded number of times.
 * - linearizable reads confirm the read index (ReadIndex, Raft thesis §6.4, forwarded by a
 *   follower's core to the leader) and wait until this member has applied it; serializable reads
 *   are served from the local store at once.
 * - lease keep-alive, time-to-live and lists are answered by the leader, which owns lease
 *   deadlines: a follower forwards them over the transport's side channel, as etcd forwards them
 *   over its peer HTTP API (`/leases`, `/leases/internal`).
 * - watches are served from this member's store (its watch hub), as etcd serves a watch from the
 *   member the client's stream is connected to.
 *
 * Members learn each other's client URLs and names over the side channel (etcd publishes them
 * through Raft at start): Cluster.MemberList lists a peer's client URLs once it has answered.
 */
import { randomBytes } from 'node:crypto';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { limits as clientLimits } from '../../src/limits.js';
import type {
  Bytes,
  CallOptions,
  CompactOptions,
  DeleteOptions,
  DeleteResult,
  GetOptions,
  KeyValue,
  LeaseApi,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  StatusResult,
  Txn,
  TxnResult,
  Watch,
  WatchOptions,
} from '../../src/types.js';
import { checkArgs } from '../../src/validate.js';
import { Role, type Snapshot } from './consensus/types.js';
import {
  decodeRecord,
  encodeRecord,
  forceNewCluster,
  type MemberChange,
  type MemberChangeResult,
  Membership,
  memberErrors,
  peerOf,
  removedMemberText,
} from './membership.js';
import { type AuthChecked, authRevisionOf } from './node/commands.js';
import { type CommandBody, RaftNode } from './node/node.js';
import type {
  KvHash,
  MemberAlarm,
  MemberBackend,
  MemberDescription,
  MemberInfo,
  RequestLimits,
} from './server/api.js';
import type { MemberAuth } from './server/auth.js';
import { hexId, type Identity } from './server/ids.js';
import type { JwtTokens } from './server/jwt.js';
import { hashStore } from './server/maintenance.js';
import { MemberCounters, type MemberMetricsSource } from './server/metrics.js';
import { DiskStorage } from './storage/disk-storage.js';
import { noSpaceError } from './store/alarms.js';
import { encodeAuthChange } from './store/auth-store.js';
import { Reader, Writer } from './transport/codec.js';
import { type PeerTls, TcpTransport, type TransportLogger } from './transport/tcp.js';

/**
 * The etcd version this member reports (Maintenance.Status `version`, GET /version `etcdserver`,
 * etcd_server_version): the etcd release whose API and behaviour it reproduces and is tested
 * against (etcd 3.4.23: the differential tests and etcd's own e2e suite).
 */
export const memberVersion = '3.4.23';

/** Side-channel request kinds. */
export const RequestKind = {
  KeepAlive: 1,
  TimeToLive: 2,
  Leases: 3,
  Attributes: 4,
  /** The membership record (also asked on a discovery connection by a joining member). */
  Members: 5,
  /** A membership change forwarded to the leader (membership.ts). */
  MemberChange: 6,
  // 7 and 8 asked a peer for its alarms and disarmed one: alarms are replicated now (store/alarms.ts);
  // the numbers are not reused.
} as const;

/** How often revision-mode auto-compaction runs (etcd's revision compactor: every 5 minutes). */
export const revisionCompactionIntervalMs = 5 * 60_000;
/** Revision samples periodic auto-compaction keeps (one per tenth of the retention). */
export const compactionSamplesMax = 11;

/** etcd's default `--quota-backend-bytes` (2 GiB) when the flag is 0. */
export const quotaBytesDefault = 2 * 1024 * 1024 * 1024;

/** Keys returned by a forwarded time-to-live with keys (a bound on one answer's size). */
export const ttlKeysMax = 100_000;
/** A WAL sync slower than this is logged (etcd's "slow fdatasync" warning, 1 s). */
export const slowFsyncSeconds = 1;
/** The pause between attempts of a lease call while leadership settles. */
export const leaderRetryMs = 10;
/** How often a member asks peers it has no client URLs for (until it has them all). */
export const attributesPollMs = 1000;
/** Client URLs kept of a member's published or polled attributes (a bound on outside input). */
export const clientUrlsMax = 16;

export interface MemberOptions {
  readonly identity: Identity;
  readonly dataDir: string;
  /** Where to accept peer connections (the first of `--listen-peer-urls`). */
  readonly listenPeer: { readonly host: string; readonly port: number };
  /** The other `--listen-peer-urls`, accepting peer connections the same way. */
  readonly listenPeerMore?: readonly { readonly host: string; readonly port: number }[];
  /** `--heartbeat-interval` (ms): one Raft tick. */
  readonly heartbeatMs: number;
  /** `--election-timeout` (ms). */
  readonly electionTimeoutMs: number;
  /** `--snapshot-count`. */
  readonly snapshotEntries?: number;
  readonly limits: RequestLimits;
  readonly log: TransportLogger;
  /** TLS on peer connections (`https://` peer URLs). */
  readonly peerTls?: PeerTls;
  /** `--client-cert-auth`: a client certificate's CN names the user when auth is enabled. */
  readonly clientCertAuth?: boolean;
  /** `--auth-token-ttl` (seconds). */
  readonly authTokenTtlSeconds?: number;
  /** `--auth-token jwt,…`: JWT tokens instead of simple ones (server/jwt.ts). */
  readonly authJwt?: JwtTokens;
  /** `--quota-backend-bytes` (0: etcd's default, `quotaBytesDefault`). */
  readonly quotaBackendBytes?: number;
  /**
   * etcd's `--auto-compaction-mode` / `--auto-compaction-retention`: keep `retention` ms of history
   * (periodic) or `retention` revisions (revision); absent: no automatic compaction.
   */
  readonly autoCompaction?: { readonly mode: 'periodic' | 'revision'; readonly retention: number };
  /** etcd's `--strict-reconfig-check` (default true). */
  readonly strictReconfigCheck?: boolean;
  /**
   * etcd's `--force-new-cluster`: start as a one-member cluster from this data dir, keeping its data
   * (membership.ts `forceNewCluster`).
   */
  readonly forceNewCluster?: boolean;
  /**
   * The member must stop and its process exit with `code`: it was removed from the cluster (0), or
   * its peers refuse it as removed or as a member of another cluster (1). `why` says which.
   */
  readonly onExit?: (code: number, why: string) => void;
}

/** etcd's minimum lease TTL: ceil(1.5 × election timeout) in seconds. */
export function minTtlSecondsFor(heartbeatMs: number, electionTimeoutMs: number): number {
  const electionTicks = Math.floor(electionTimeoutMs / heartbeatMs);
  return Math.max(1, Math.ceil((Math.floor((3 * electionTicks) / 2) * heartbeatMs) / 1000));
}

/** Whether `dataDir` holds a WAL (a member started there before). */
export async function hasWal(dataDir: string): Promise<boolean> {
  try {
    await access(join(dataDir, 'wal'));
    return true;
  } catch {
    return false;
  }
}

export class Member implements MemberBackend {
  /** Cluster service changes (this member's `memberChange`). */
  readonly cluster = this;
  /** Maintenance operations (this member's snapshot, defragment, hashKv, …). */
  readonly maintenance = this;
  /** A NOSPACE activation proposed by this member's quota check is in flight. */
  #raising = false;
  #compactTimer: ReturnType<typeof setInterval> | undefined;
  /** Periodic auto-compaction: (time, revision) samples, oldest first. */
  #samples: Array<{ at: number; rev: number }> = [];
  readonly identity: Identity;
  readonly node: RaftNode;
  readonly transport: TcpTransport;
  readonly kv: MemberKV;
  readonly info: MemberInfo;
  readonly limits: RequestLimits;
  readonly auth: MemberAuth;
  readonly requestTimeoutMs: number;
  readonly #o: MemberOptions;
  readonly membership: Membership;
  #poll: ReturnType<typeof setInterval> | undefined;
  #leaderWatch: ReturnType<typeof setInterval> | undefined;
  #lastLeader = -1;
  /** Counters for the metrics (server/metrics.ts), kept by this member's events. */
  readonly counters = new MemberCounters();
  #stopping: Promise<void> | undefined;

  private constructor(
    o: MemberOptions,
    transport: TcpTransport,
    storage: DiskStorage,
    membership: Membership,
  ) {
    this.#o = o;
    this.identity = o.identity;
    this.limits = o.limits;
    this.transport = transport;
    this.membership = membership;
    const electionTicks = Math.max(2, Math.floor(o.electionTimeoutMs / o.heartbeatMs));
    // etcd's request timeout: 5 s plus two election timeouts.
    this.requestTimeoutMs = 5000 + 2 * o.electionTimeoutMs;
    this.node = new RaftNode({
      id: o.identity.nodeId,
      voters: o.identity.members.map((m) => m.nodeId),
      transport,
      tickMs: o.heartbeatMs,
      electionTicks,
      heartbeatTicks: 1,
      minTtlSeconds: minTtlSecondsFor(o.heartbeatMs, o.electionTimeoutMs),
      requestTimeoutMs: this.requestTimeoutMs,
      now: () => performance.now(),
      random: Math.random,
      storage,
      limits: o.limits,
      ...(o.snapshotEntries !== undefined ? { snapshotEntries: o.snapshotEntries } : {}),
      onFatal: (err) => o.log.error({ err: String(err) }, 'storage failed: the member stopped serving'),
      onConfChange: (cc, index) => membership.applied(cc, index),
      onAttributes: (memberId, attributes) => this.#attributesApplied(memberId, attributes),
      onSnapshotInstalled: (meta) =>
        membership.snapshotInstalled(meta, async () => {
          const lead = this.node.raft.lead;
          if (lead === 0 || lead === this.node.id) return undefined;
          return decodeRecord(
            await transport.request(lead, RequestKind.Members, new Uint8Array(0), this.requestTimeoutMs),
          );
        }),
      observer: {
        persisted: (sec) => {
          this.counters.walFsync.observe(sec);
          // etcd warns about a WAL sync over a second ("slow fdatasync"): the disk is too slow for
          // the heartbeat and elections will follow.
          if (sec > slowFsyncSeconds)
            o.log.warn(
              { tookMs: Math.round(sec * 1000), expectedMs: slowFsyncSeconds * 1000 },
              'slow fdatasync',
            );
        },
        applied: (sec) => this.counters.backendCommit.observe(sec),
        snapshotSaved: (index, bytes, sec) => {
          this.counters.snapshotsSaved++;
          o.log.info({ index, bytes, tookMs: Math.round(sec * 1000) }, 'saved snapshot');
        },
      },
    });
    membership.attach(this.node, transport);
    transport.serve((from, kind, body) => this.#serveRequest(from, kind, body));
    this.kv = new MemberKV(this);
    this.info = this.#makeInfo();
    const authStore = this.node.store.auth;
    if (o.authTokenTtlSeconds !== undefined) authStore.tokenTtlMs = o.authTokenTtlSeconds * 1000;
    this.auth = {
      store: authStore,
      propose: (c) => this.kv.proposeAuth(encodeAuthChange(c)),
      clientCertAuth: o.clientCertAuth ?? false,
      ...(o.authJwt ? { jwt: o.authJwt } : {}),
    };
    this.#poll = setInterval(() => void this.#learnAttributes(), attributesPollMs);
    // Leader changes are events worth a log line (seen at most once per heartbeat, never per request).
    this.#leaderWatch = setInterval(() => this.#noticeLeader(), o.heartbeatMs);
    void this.#learnAttributes();
    this.#startAutoCompaction();
  }

  /**
   * etcd's auto-compaction, run by the leader only (its compaction goes through Raft to everyone).
   * revision: every `revisionCompactionIntervalMs`, compact to `revision - retention`. periodic:
   * sample the revision every tenth of the retention and compact to the newest sample at least one
   * retention old, so at least the retention window of history stays (etcd 3.4's periodic
   * compactor also keeps one window and runs every tenth of it, at most every hour).
   */
  #startAutoCompaction(): void {
    const ac = this.#o.autoCompaction;
    if (!ac) return;
    const every =
      ac.mode === 'revision'
        ? revisionCompactionIntervalMs
        : Math.min(3_600_000, Math.max(100, ac.retention / 10));
    this.#compactTimer = setInterval(() => void this.#autoCompact(ac), every);
    this.#compactTimer.unref?.();
  }

  async #autoCompact(ac: { mode: 'periodic' | 'revision'; retention: number }): Promise<void> {
    const n = this.node;
    const now = performance.now();
    const rev = n.store.revision;
    let target: number;
    if (ac.mode === 'revision') target = rev - ac.retention;
    else {
      this.#samples.push({ at: now, rev });
      if (this.#samples.length > compactionSamplesMax) this.#samples.shift();
      const old = this.#samples.filter((x) => now - x.at >= ac.retention);
      target = old.length > 0 ? old[old.length - 1]!.rev : 0;
    }
    if (n.raft.role !== Role.Leader || target <= n.store.mvcc.compactRev || target <= 0) return;
    try {
      await this.kv.compact(target);
      this.#o.log.info({ revision: target, mode: ac.mode }, 'auto-compaction: compacted');
    } catch (err) {
      this.#o.log.warn(
        { revision: target, err: String(err) },
        'auto-compaction failed; retried at the next interval',
      );
    }
  }

  /** Opens the data dir (recovering the WAL and snapshots), listens for peers and starts the Raft node. */
  static async start(o: MemberOptions): Promise<Member> {
    const id = o.identity;
    const self = id.members.find((m) => m.id === id.memberId)!;
    const peers = id.members.filter((m) => m.id !== id.memberId).map(peerOf);
    // The last log index recovered from the data dir: a removal at or below it was applied before
    // this start (the record of it was lost, e.g. a crash before member.json was written).
    let recoveredLast = Number.POSITIVE_INFINITY;
    const membership = new Membership({
      identity: id,
      dataDir: o.dataDir,
      log: o.log,
      strictReconfigCheck: o.strictReconfigCheck ?? true,
      removedStopDelayMs: 10 * o.heartbeatMs,
      // Removed while it ran: a normal end (0). Replaying its own removal at a restart: it may not
      // serve, an error (1), as when its record or its peers refuse it.
      onRemoved: (why, index) => {
        if (index > 0 && index <= recoveredLast) {
          o.log.error({ reason: why }, removedMemberText);
          o.onExit?.(1, why);
        } else o.onExit?.(0, why);
      },
    });
    let member: Member | undefined;
    const transport = new TcpTransport({
      clusterId: id.clusterId,
      nodeId: self.nodeId,
      memberId: id.memberId,
      peers,
      listen: o.listenPeer,
      ...(o.listenPeerMore ? { listenMore: o.listenPeerMore } : {}),
      log: o.log,
      ...(o.peerTls ? { tls: o.peerTls } : {}),
      removed: (id.removed ?? []).map((r) => r.id),
      onRefused: (kind, reason) => member?.refused(kind, reason),
    });
    await transport.listen();
    let storage: DiskStorage;
    try {
      storage = await DiskStorage.open({
        dataDir: o.dataDir,
        nodeId: self.nodeId,
        voters: id.members.filter((m) => !m.isLearner).map((m) => m.nodeId),
        learners: id.members.filter((m) => m.isLearner).map((m) => m.nodeId),
        log: (message) => o.log.warn({}, `storage: ${message}`),
      });
    } catch (err) {
      await transport.close();
      throw err;
    }
    if (o.forceNewCluster) {
      try {
        const gone = await forceNewCluster(storage, id);
        o.log.warn(
          { removed: gone.map(hexId), commit: storage.hardState.commit },
          '--force-new-cluster: this member is now a one-member cluster (its data kept); add members back with etcdctl member add',
        );
      } catch (err) {
        await storage.close();
        await transport.close();
        throw err;
      }
    }
    recoveredLast = storage.lastIndex();
    o.log.info(
      {
        member: hexId(id.memberId),
        cluster: hexId(id.clusterId),
        name: id.name,
        recovered: { snapshot: storage.snapshot().meta.index, lastIndex: storage.lastIndex() },
      },
      'member started',
    );
    member = new Member(o, transport, storage, membership);
    return member;
  }

  /** Peers refused this member: as removed (it must never serve again), or as another cluster's. */
  refused(kind: 'removed' | 'cluster', reason: string): void {
    if (this.stopped) return;
    const everConnected = [...this.transport.stats().values()].some((s) => s.connects > 0);
    if (kind === 'removed') {
      this.#o.log.error({ reason }, removedMemberText);
      // Removed while it ran (its peers applied the removal first): a normal end, as when it
      // applies the removal itself. Refused at a restart: an error.
      this.#o.onExit?.(everConnected ? 0 : 1, reason);
      return;
    }
    // A peer of another cluster: fatal only before this member ever reached one of its own (a
    // wrong --initial-cluster, or a data dir of another cluster), never for a stray later.
    if (everConnected) return;
    this.#o.log.error(
      { reason, cluster: hexId(this.identity.clusterId) },
      'a peer belongs to another cluster: check --initial-cluster and --initial-cluster-token, or the data dir (it belongs to the cluster recorded in member.json)',
    );
    this.#o.onExit?.(1, reason);
  }

  get stopped(): boolean {
    return this.node.stopped;
  }

  /** What the metrics read from this member at scrape time (server/metrics.ts). */
  metricsSource(): MemberMetricsSource {
    const n = this.node;
    return {
      counters: this.counters,
      committedIndex: () => n.raft.log.committed,
      proposalsPending: () => n.pendingProposals,
      proposalsFailed: () => n.stats.proposalsFailed,
      keys: () => n.store.mvcc.liveKeys(),
      applied: () => n.store.applied,
      peerBytes: () =>
        [...this.transport.stats()].map(
          ([id, st]) =>
            [hexId(this.memberIdOf(id)), { sent: st.sentBytes, received: st.receivedBytes }] as const,
        ),
    };
  }

  memberIdOf(nodeId: number): bigint {
    return this.membership.byNode(nodeId)?.id ?? 0n;
  }

  /**
   * A Cluster service change (MemberAdd, MemberRemove, MemberPromote, MemberUpdate): decided on the
   * leader (forwarded there from a follower); resolves once it applied on this member too.
   */
  async memberChange(c: MemberChange): Promise<MemberChangeResult> {
    // A leader asked to remove itself applies the removal and leaves: its answer may never arrive,
    // and the retry then finds no such member. That retry answers with the list once this member
    // applied the removal (etcd proposes the change from the member asked, which sees it apply).
    let askedLeaderToGo = false;
    for (let attempt = 1; ; attempt++) {
      const lead = await this.leaderNode();
      try {
        if (askedLeaderToGo && c.op === 'remove' && this.#removedHere(c.id))
          return { members: this.membership.list(), index: this.node.store.appliedIndex };
        if (lead === this.node.id) return await this.membership.change(c);
        if (c.op === 'remove' && this.memberIdOf(lead) === c.id) askedLeaderToGo = true;
        const b = await this.transport.request(
          lead,
          RequestKind.MemberChange,
          Buffer.from(JSON.stringify(changeJson(c))),
          this.requestTimeoutMs,
        );
        const r = JSON.parse(Buffer.from(b).toString('utf8')) as { index: number; member?: string };
        await this.#waitApplied(r.index);
        const added = r.member !== undefined ? this.membership.byId(BigInt(`0x${r.member}`)) : undefined;
        const list = this.membership.list();
        return {
          ...(added ? { member: list.find((m) => m.id === added.id)! } : {}),
          members: list,
          index: r.index,
        };
      } catch (err) {
        if (
          askedLeaderToGo &&
          c.op === 'remove' &&
          ConclaveError.is(err) &&
          err.message === memberErrors.notFound
        ) {
          // The leader that was asked applied its own removal: once it applied here too, answer.
          const until = performance.now() + this.requestTimeoutMs;
          while (!this.#removedHere(c.id) && performance.now() < until && !this.stopped)
            await new Promise((r) => setTimeout(r, 10));
          if (this.#removedHere(c.id))
            return { members: this.membership.list(), index: this.node.store.appliedIndex };
        }
        if (!ConclaveError.is(err) || !err.retryable || attempt >= clientLimits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, 50 * attempt));
      }
    }
  }

  /** Whether this member applied the removal of member `id` (it is listed as removed). */
  #removedHere(id: bigint): boolean {
    return (this.identity.removed ?? []).some((r) => r.id === id);
  }

  /** Waits (bounded by the request timeout) until this member applied `index`. */
  async #waitApplied(index: number): Promise<void> {
    const until = performance.now() + this.requestTimeoutMs;
    while (this.node.store.appliedIndex < index) {
      if (this.node.stopped) throw new ConclaveError(ErrorCode.Unavailable, 'etcdserver: server stopped');
      if (performance.now() > until)
        throw new ConclaveError(
          ErrorCode.Unavailable,
          'etcdserver: request timed out, waiting for the applied index took too long',
        );
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** The leader's node id, waiting (bounded by the request timeout) while there is none. */
  async leaderNode(signal?: AbortSignal): Promise<number> {
    const until = performance.now() + this.requestTimeoutMs;
    for (;;) {
      if (this.node.stopped) throw new ConclaveError(ErrorCode.Unavailable, 'etcdserver: server stopped');
      const lead = this.node.raft.lead;
      if (lead !== 0) return lead;
      signal?.throwIfAborted();
      if (performance.now() > until) throw new ConclaveError(ErrorCode.Unavailable, 'etcdserver: no leader');
      await new Promise((r) => setTimeout(r, this.#o.heartbeatMs));
    }
  }

  #makeInfo(): MemberInfo {
    const n = this.node;
    const id = this.identity;
    return {
      clusterId: id.clusterId,
      memberId: id.memberId,
      version: memberVersion,
      revision: () => n.store.revision,
      compactRevision: () => n.store.mvcc.compactRev,
      raftTerm: () => n.raft.term,
      leaderId: () => this.memberIdOf(n.raft.lead),
      raftIndex: () => n.raft.log.lastIndex,
      raftAppliedIndex: () => n.store.appliedIndex,
      // The size of the newest snapshot of the store (what a new member would receive); 0 before
      // the first snapshot. docs/server.md says so.
      dbSizeBytes: () => this.dbSize(),
      isLearner: () => n.raft.learners.has(n.id),
      alarms: () => n.store.alarms.list(),
      members: (): readonly MemberDescription[] => this.membership.list(),
    };
  }

  #noticeLeader(): void {
    const lead = this.node.raft.lead;
    if (lead === this.#lastLeader || this.node.stopped) return;
    const was = this.#lastLeader;
    this.#lastLeader = lead;
    // etcd counts a change to a known leader other than the last one seen (the first included).
    if (lead !== 0) this.counters.leaderChanges++;
    if (was === this.node.id) this.#o.log.warn({ term: this.node.raft.term }, 'lost leadership');
    if (lead === 0) this.#o.log.warn({ term: this.node.raft.term }, 'no leader');
    else
      this.#o.log.info(
        { leader: hexId(this.memberIdOf(lead)), term: this.node.raft.term, self: lead === this.node.id },
        'leader elected',
      );
  }

  // ----------------------------------------------------------------------------------------------
  // Side channel: what a follower forwards to the leader

  async #serveRequest(from: number, kind: number, body: Uint8Array): Promise<Uint8Array> {
    // A discovery connection (a member about to join) may only ask for the membership.
    if (from === 0 && kind !== RequestKind.Members)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'a discovery connection may only ask for the members',
      );
    switch (kind) {
      case RequestKind.Members:
        return encodeRecord(this.membership.record());
      case RequestKind.MemberChange: {
        const r = await this.membership.change(changeOf(JSON.parse(Buffer.from(body).toString('utf8'))));
        return Buffer.from(
          JSON.stringify({ index: r.index, ...(r.member ? { member: hexId(r.member.id) } : {}) }),
        );
      }
      case RequestKind.KeepAlive: {
        const id = new Reader(body).id();
        const w = new Writer(Buffer.alloc(8));
        w.u64(await this.kv.keepAliveHere(BigInt.asIntN(64, id)));
        return w.buf;
      }
      case RequestKind.TimeToLive: {
        const r = new Reader(body);
        const id = BigInt.asIntN(64, r.id());
        const t = await this.kv.timeToLiveHere(id, r.u8() === 1);
        return encodeTtl(t);
      }
      case RequestKind.Leases: {
        const ids = await this.kv.leasesHere();
        const w = new Writer(Buffer.alloc(4 + 8 * ids.length));
        w.u32(ids.length);
        for (const id of ids) w.id(BigInt.asUintN(64, id));
        return w.buf;
      }
      case RequestKind.Attributes: {
        const self = this.identity.members.find((m) => m.id === this.identity.memberId)!;
        return Buffer.from(JSON.stringify({ name: self.name, clientUrls: self.clientUrls }));
      }
      default:
        throw new ConclaveError(ErrorCode.InvalidArgument, `unknown peer request kind ${kind}`);
    }
  }

  /**
   * Publishes this member's name and client URLs through Raft (etcd's `publish`, which proposes
   * the member's attributes once it runs and logs "published" when that applied): once it
   * resolves, every member that applied the entry lists them in MemberList, without waiting for
   * the side-channel poll below. Retried (each attempt bounded by the request timeout, as etcd
   * retries until it succeeds or stops) until it applied here, the member stops, or `signal`.
   * Resolves true once applied.
   */
  async publishAttributes(signal: AbortSignal): Promise<boolean> {
    const self = this.identity.members.find((m) => m.id === this.identity.memberId);
    if (!self) return false;
    const attributes = JSON.stringify({ name: self.name, clientUrls: self.clientUrls });
    while (!signal.aborted && !this.stopped) {
      try {
        await this.node.propose({ op: 'attributes', memberId: this.identity.memberId, attributes });
        return true;
      } catch {
        // No leader yet, a leader change, a timeout: the next attempt after a heartbeat.
        await new Promise((r) => setTimeout(r, this.#o.heartbeatMs));
      }
    }
    return false;
  }

  /**
   * A member's published attributes applied (every member, in log order): its name and client URLs
   * in this member's list and record. Bounded as the poll's answers are (a name of 256 characters,
   * `clientUrlsMax` URLs); a member no longer listed (removed since) is ignored.
   */
  #attributesApplied(memberId: bigint, attributes: string): void {
    const m = this.identity.members.find((x) => x.id === memberId);
    if (!m) return;
    let a: { name?: unknown; clientUrls?: unknown };
    try {
      a = JSON.parse(attributes) as typeof a;
    } catch {
      this.#o.log.warn({ member: hexId(memberId) }, 'published member attributes that do not parse: ignored');
      return;
    }
    let changed = false;
    if (Array.isArray(a.clientUrls) && a.clientUrls.length > 0) {
      const urls = a.clientUrls.map(String).slice(0, clientUrlsMax);
      if (urls.join(',') !== m.clientUrls.join(',')) {
        m.clientUrls = urls;
        changed = true;
      }
    }
    if (typeof a.name === 'string' && a.name !== '' && a.name !== m.name) {
      m.name = a.name.slice(0, 256);
      changed = true;
    }
    if (changed && !this.stopped) void this.membership.persist();
  }

  /** Asks peers whose client URLs are unknown for them; persists what changed. */
  async #learnAttributes(): Promise<void> {
    // Members added at run time appear later: the poll keeps running (it asks nobody when no
    // member's attributes are missing).
    const missing = this.identity.members.filter(
      (m) => m.id !== this.identity.memberId && (m.clientUrls.length === 0 || m.name === ''),
    );
    if (missing.length === 0) return;
    let changed = false;
    for (const m of missing) {
      if (!this.transport.connected(m.nodeId)) continue;
      try {
        const b = await this.transport.request(m.nodeId, RequestKind.Attributes, new Uint8Array(0), 2000);
        const a = JSON.parse(Buffer.from(b).toString('utf8')) as { clientUrls?: unknown; name?: unknown };
        if (Array.isArray(a.clientUrls) && a.clientUrls.length > 0) {
          m.clientUrls = a.clientUrls.map(String).slice(0, clientUrlsMax);
          changed = true;
        }
        if (typeof a.name === 'string' && a.name !== '' && m.name === '') {
          m.name = a.name.slice(0, 256);
          changed = true;
        }
      } catch {
        // Not reachable yet: asked again at the next poll.
      }
    }
    if (changed && !this.stopped) await this.membership.persist();
  }

  // ----------------------------------------------------------------------------------------------
  // Maintenance: quota and alarms, snapshot, defragment, hash, leadership

  /**
   * The store's size as the quota and Status count it: the encoded size of the newest snapshot
   * plus the entry bytes applied since (node.ts `bytesSinceSnapshot`). docs/server.md says so.
   */
  dbSize(): number {
    return this.node.snapshotBytes + this.node.bytesSinceSnapshot;
  }

  /**
   * etcd's quota check before a write that may grow the store (put, txn with a put, lease grant;
   * api/v3rpc/quota.go): refused with "database space exceeded" while a NOSPACE alarm is raised
   * for any member, and when this member's store is past `--quota-backend-bytes`, which also
   * raises NOSPACE for this member through Raft (etcd proposes the same AlarmRequest ACTIVATE), so
   * every member refuses such writes until it is disarmed. Deletes and compactions are not checked
   * (they free space). The refusal is also applied in log order (node.ts, etcd's capped applier).
   */
  checkQuota(): void {
    if (this.node.store.alarms.has('nospace')) throw noSpaceError();
    const quota = this.#o.quotaBackendBytes || quotaBytesDefault;
    const size = this.dbSize();
    if (size <= quota) return;
    if (!this.#raising) {
      this.#raising = true;
      this.#o.log.warn(
        { dbSize: size, quota },
        'alarm raised: NOSPACE (the store is past --quota-backend-bytes)',
      );
      this.alarm('activate', this.identity.memberId, 'nospace')
        .catch((err: unknown) =>
          this.#o.log.warn(
            { err: String(err) },
            'the NOSPACE alarm could not be proposed; the next write retries',
          ),
        )
        .finally(() => {
          this.#raising = false;
        });
    }
    throw noSpaceError();
  }

  /** Every member's raised alarms, as this member has applied them (they are replicated). */
  async alarmList(): Promise<readonly MemberAlarm[]> {
    return this.node.store.alarms.list();
  }

  /**
   * etcd's AlarmRequest ACTIVATE/DEACTIVATE of `memberId`'s alarm, through Raft: applied on every
   * member. Resolves with the alarm (activate: also when it was raised already; deactivate:
   * undefined when it was not raised), as etcd answers.
   */
  async alarm(
    action: 'activate' | 'deactivate',
    memberId: bigint,
    alarm: MemberAlarm['alarm'],
  ): Promise<MemberAlarm | undefined> {
    const r = await this.node.propose<MemberAlarm | undefined>({ op: 'alarm', action, memberId, alarm });
    if (r && action === 'deactivate')
      this.#o.log.info({ member: hexId(memberId), alarm: alarm.toUpperCase() }, 'alarm disarmed');
    return r;
  }

  /** A snapshot of everything applied now (taken on demand; one in flight is waited for). */
  async snapshot(): Promise<{ data: Uint8Array; index: number; term: number; revision: number }> {
    const index = await this.node.snapshot();
    const st = this.node.storage;
    const base = st.snapshot();
    const latest = (st as { latestSnapshot?: Snapshot }).latestSnapshot;
    const s = latest && latest.meta.index > base.meta.index ? latest : base;
    if (s.meta.index < index || s.data.length === 0)
      throw new ConclaveError(ErrorCode.Unavailable, 'etcdserver: the snapshot is not ready yet; retry');
    return { data: s.data, index: s.meta.index, term: s.meta.term, revision: this.node.store.revision };
  }

  /**
   * etcd's Defragment rewrites its bbolt file without free pages. Here the store lives in memory and
   * on disk as a snapshot plus the WAL after it: defragmenting takes a snapshot now, so the size
   * counted against the quota becomes the encoded size of the store as it is (history dropped by
   * compaction is gone from it) and the WAL before it can be released.
   */
  async defragment(): Promise<void> {
    await this.node.snapshot();
  }

  hashKv(revision: number): Promise<KvHash> {
    return hashStore(this.node.store, revision);
  }

  /** etcd's MoveLeader: only the leader moves leadership, to a voting member. */
  async moveLeader(target: bigint): Promise<void> {
    const raft = this.node.raft;
    if (raft.role !== Role.Leader) throw new ConclaveError(ErrorCode.NotLeader, 'etcdserver: not leader');
    const m = this.membership.byId(target);
    if (!m || m.isLearner || !raft.voters.has(m.nodeId))
      throw new ConclaveError(ErrorCode.InvalidArgument, 'etcdserver: bad leader transferee');
    if (m.nodeId === raft.id) return;
    raft.transferLeader(m.nodeId);
    const until = performance.now() + this.requestTimeoutMs;
    while (performance.now() < until) {
      if (this.node.raft.lead === m.nodeId) return;
      await new Promise((r) => setTimeout(r, this.#o.heartbeatMs));
    }
    throw new ConclaveError(
      ErrorCode.Unavailable,
      'etcdserver: request timed out, leader transfer took too long',
    );
  }

  // ----------------------------------------------------------------------------------------------
  // Shutdown

  /**
   * A leader hands leadership to its most up-to-date follower first (etcd does the same on
   * SIGTERM: `TransferLeadership` before stopping), waiting at most `timeoutMs`; resolves whether
   * this member is no longer leader.
   */
  async transferLeadership(timeoutMs: number): Promise<boolean> {
    const raft = this.node.raft;
    if (raft.role !== Role.Leader || raft.voters.size === 1) return true;
    let best = 0;
    let bestMatch = -1;
    for (const [id, pr] of raft.prs) {
      if (id === raft.id || !this.transport.connected(id)) continue;
      if (pr.match > bestMatch) {
        best = id;
        bestMatch = pr.match;
      }
    }
    if (best === 0) return false;
    this.#o.log.info({ to: hexId(this.memberIdOf(best)) }, 'transferring leadership before stopping');
    // The core sends TimeoutNow once the target has caught up (Raft thesis §3.10); the node's next
    // tick (one heartbeat interval) carries the messages out.
    raft.transferLeader(best);
    const until = performance.now() + timeoutMs;
    while (performance.now() < until) {
      if (this.node.raft.role !== Role.Leader) return true;
      await new Promise((r) => setTimeout(r, Math.max(5, this.#o.heartbeatMs / 2)));
    }
    return this.node.raft.role !== Role.Leader;
  }

  /** Stops the member: pending requests fail `unavailable`, storage is synced and closed, peers dropped. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#poll);
      clearInterval(this.#leaderWatch);
      clearInterval(this.#compactTimer);
      await this.kv.close();
      await this.node.stop();
      await this.transport.close();
    })();
    return this.#stopping;
  }
}

/** A membership change as JSON on the side channel (IDs as hex). */
function changeJson(c: MemberChange): object {
  return 'id' in c ? { ...c, id: hexId(c.id) } : c;
}

function changeOf(j: Record<string, unknown>): MemberChange {
  const urls = () => (Array.isArray(j.peerUrls) ? j.peerUrls.slice(0, 64).map(String) : []);
  const id = () => {
    if (typeof j.id !== 'string' || !/^[0-9a-f]{1,16}$/.test(j.id))
      throw new ConclaveError(ErrorCode.InvalidArgument, 'a forwarded membership change without a member ID');
    return BigInt(`0x${j.id}`);
  };
  switch (j.op) {
    case 'add':
      return { op: 'add', peerUrls: urls(), isLearner: j.isLearner === true };
    case 'remove':
      return { op: 'remove', id: id() };
    case 'promote':
      return { op: 'promote', id: id() };
    case 'update':
      return { op: 'update', id: id(), peerUrls: urls() };
    default:
      throw new ConclaveError(ErrorCode.InvalidArgument, `unknown membership change "${String(j.op)}"`);
  }
}

interface TtlAnswer {
  ttlSeconds: number;
  grantedTtlSeconds: number;
  keys: Uint8Array[];
}

function encodeTtl(t: TtlAnswer): Uint8Array {
  const size = 8 + 8 + 4 + t.keys.reduce((n, k) => n + 4 + k.length, 0);
  const w = new Writer(Buffer.alloc(size));
  w.buf.writeDoubleLE(t.ttlSeconds, 0);
  w.buf.writeDoubleLE(t.grantedTtlSeconds, 8);
  w.p = 16;
  w.u32(t.keys.length);
  for (const k of t.keys) {
    w.u32(k.length);
    w.bytes(k);
  }
  return w.buf;
}

function decodeTtl(b: Uint8Array): TtlAnswer {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const r = new Reader(b, 16);
  const n = r.u32();
  if (n > ttlKeysMax) throw new ConclaveError(ErrorCode.Internal, `a time-to-live answer with ${n} keys`);
  const keys: Uint8Array[] = [];
  for (let i = 0; i < n; i++) keys.push(new Uint8Array(r.view(r.u32())));
  return { ttlSeconds: buf.readDoubleLE(0), grantedTtlSeconds: buf.readDoubleLE(8), keys };
}

/** The KV contract served by one member (see the module comment for how each call is served). */
/** `{ authRevision }` when the client API checked the caller's permissions (see AuthChecked). */
function checkedAt(o: object | undefined): AuthChecked {
  const r = authRevisionOf(o);
  return r === undefined ? unchecked : { authRevision: r };
}
/** Shared, so that a write without auth allocates nothing for it. */
const unchecked: AuthChecked = Object.freeze({});

export class MemberKV implements KV {
  readonly #m: Member;
  #closed = false;
  readonly #watches = new Set<Watch>();
  readonly lease: LeaseApi;

  constructor(m: Member) {
    this.#m = m;
    this.lease = {
      grant: async (ttl, o = {}) => {
        this.#open(o);
        const asked = checkArgs.leaseGrant(ttl, o);
        const id = asked === 0n ? BigInt(`0x${randomBytes(6).toString('hex')}`) + 1n : asked;
        this.#m.checkQuota();
        return this.#write({ op: 'grant', lease: id, ttlSeconds: ttl }, o.signal);
      },
      revoke: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        return this.#write({ op: 'revoke', lease: id, ...checkedAt(o) }, o.signal);
      },
      keepAliveOnce: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const ttlSeconds = await this.#atLeader(
          () => this.keepAliveHere(id),
          (lead) => this.#ask(lead, RequestKind.KeepAlive, idBody(id)).then((b) => new Reader(b).u64()),
          o.signal,
        );
        return { id, ttlSeconds };
      },
      timeToLive: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const keys = o.keys === true;
        const t = await this.#atLeader(
          () => this.timeToLiveHere(id, keys),
          (lead) => {
            const body = Buffer.alloc(9);
            body.writeBigUInt64LE(BigInt.asUintN(64, id), 0);
            body[8] = keys ? 1 : 0;
            return this.#ask(lead, RequestKind.TimeToLive, body).then(decodeTtl);
          },
          o.signal,
        );
        return { id, ...t };
      },
      list: async (o = {}) => {
        this.#open(o);
        return this.#atLeader(
          () => this.leasesHere(),
          (lead) =>
            this.#ask(lead, RequestKind.Leases, new Uint8Array(0)).then((b) => {
              const r = new Reader(b);
              const n = r.u32();
              const out: bigint[] = [];
              for (let i = 0; i < n; i++) out.push(BigInt.asIntN(64, r.id()));
              return out;
            }),
          o.signal,
        );
      },
    };
  }

  // ----------------------------------------------------------------------------------------------
  // Lease calls answered on the leader (here, or forwarded here by a follower)

  #requireLeader(): void {
    if (this.#m.node.raft.role !== Role.Leader)
      throw new ConclaveError(ErrorCode.NotLeader, 'etcdserver: not leader; retry', { retryable: true });
  }

  /**
   * Keep-alive on the lease primary (node.ts `renewLease`): the TTL granted, 0 when the lease is
   * unknown, and for an expiring lease 0 once its revocation applied (it is never revived).
   */
  keepAliveHere(id: bigint): Promise<number> {
    return this.#m.node.renewLease(id);
  }

  async timeToLiveHere(id: bigint, withKeys: boolean): Promise<TtlAnswer> {
    this.#requireLeader();
    const n = this.#m.node;
    await n.readIndex();
    const lease = n.store.leases.get(id);
    const keys =
      withKeys && lease
        ? [...lease.keys].slice(0, ttlKeysMax).map((k) => new Uint8Array(Buffer.from(k, 'latin1')))
        : [];
    return {
      ttlSeconds: n.store.leases.remainingSeconds(id, performance.now()),
      grantedTtlSeconds: lease?.grantedTtlSeconds ?? 0,
      keys,
    };
  }

  async leasesHere(): Promise<bigint[]> {
    this.#requireLeader();
    await this.#m.node.readIndex();
    return [...this.#m.node.store.leases.byId.keys()];
  }

  #ask(lead: number, kind: number, body: Uint8Array): Promise<Uint8Array> {
    return this.#m.transport.request(lead, kind, body, this.#m.requestTimeoutMs);
  }

  /** Runs `here` on the leader or `forward` to it, retrying (bounded) while leadership moves. */
  async #atLeader<T>(
    here: () => Promise<T>,
    forward: (lead: number) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const lead = await this.#m.leaderNode(signal);
      try {
        return lead === this.#m.node.id ? await here() : await forward(lead);
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= clientLimits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, 20 * attempt));
      }
    }
  }

  // ----------------------------------------------------------------------------------------------

  #open(o: CallOptions | undefined): void {
    checkArgs.options(o);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the member is stopping');
    o?.signal?.throwIfAborted();
  }

  /** Proposes on this member, retrying (bounded) only refusals that certainly did not apply. */
  async #write<T>(cmd: CommandBody, signal?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await this.#m.node.propose<T>(cmd);
        signal?.throwIfAborted();
        return r;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= clientLimits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, Math.min(this.#m.requestTimeoutMs / 8, 50 * attempt)));
        signal?.throwIfAborted();
      }
    }
  }

  async #read(o: { serializable?: boolean; signal?: AbortSignal }): Promise<void> {
    if (o.serializable) return;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#m.node.readIndex();
        return;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= clientLimits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, 20 * attempt));
        o.signal?.throwIfAborted();
      }
    }
  }

  async get(key: Bytes, o: GetOptions = {}): Promise<KeyValue | undefined> {
    this.#open(o);
    checkArgs.get(key, o);
    await this.#read(o);
    return this.#m.node.store.range(key, o).kvs[0];
  }

  async range(key: Bytes, o: RangeOptions = {}): Promise<RangeResult> {
    this.#open(o);
    checkArgs.range(key, o);
    await this.#read(o);
    return this.#m.node.store.range(key, o);
  }

  async put(key: Bytes, value: Bytes, o: PutOptions = {}): Promise<PutResult> {
    this.#open(o);
    const { key: k, value: v } = checkArgs.put(key, value, o);
    const { signal: _s, ...opts } = o;
    this.#m.checkQuota();
    return this.#write({ op: 'put', key: k, value: v, opts, ...checkedAt(o) }, o.signal);
  }

  async delete(key: Bytes, o: DeleteOptions = {}): Promise<DeleteResult> {
    this.#open(o);
    checkArgs.delete(key, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'delete', key: toBytes(key), opts, ...checkedAt(o) }, o.signal);
  }

  async txn(t: Txn, o: CallOptions = {}): Promise<TxnResult> {
    this.#open(o);
    checkArgs.txn(t);
    // etcd checks the quota for a txn with any put in it; a txn of reads and deletes passes.
    if (hasPut(t)) this.#m.checkQuota();
    return this.#write({ op: 'txn', txn: t, ...checkedAt(o) }, o.signal);
  }

  watch(key: Bytes, o: WatchOptions = {}): Watch {
    this.#open(o);
    checkArgs.watch(key, o);
    const w = this.#m.node.store.hub.watch(key, o);
    this.#watches.add(w);
    const close = w.close.bind(w);
    w.close = async () => {
      this.#watches.delete(w);
      await close();
    };
    return w;
  }

  /** Proposes a change to the auth store (server/auth.ts); rejects with the store's refusal. */
  async proposeAuth(change: string): Promise<void> {
    this.#open(undefined);
    await this.#write({ op: 'auth', change });
  }

  async compact(revision: number, o: CompactOptions = {}): Promise<void> {
    this.#open(o);
    checkArgs.compact(revision);
    const { signal: _s, ...opts } = o;
    await this.#write({ op: 'compact', revision, opts }, o.signal);
  }

  async status(o: CallOptions = {}): Promise<StatusResult> {
    this.#open(o);
    const i = this.#m.info;
    return {
      revision: i.revision(),
      version: i.version,
      memberId: i.memberId,
      leader: i.leaderId(),
      raftTerm: i.raftTerm(),
      raftIndex: i.raftIndex(),
      dbSizeBytes: i.dbSizeBytes(),
    };
  }

  /** Refuses new calls and ends open watches (the member itself is stopped by `Member.stop`). */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#watches].map((w) => w.close()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function hasPut(t: Txn): boolean {
  for (const branch of [t.success ?? [], t.failure ?? []])
    for (const op of branch) if (op.type === 'put' || (op.type === 'txn' && hasPut(op.txn))) return true;
  return false;
}

function idBody(id: bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, id), 0);
  return b;
}
