/**
 * One Raft member: the single loop that drives consensus. Each turn: take Ready →
 * persist hard state and entries → send messages → apply committed entries to the store → resolve
 * the requests waiting on them → advance. Ticks come from a timer.
 *
 * Requests: a write is encoded as a command with a unique id and proposed (a follower's core
 * forwards it to the leader); it resolves when this member applies it. A proposal refused by the
 * core (no leader, transfer in flight, bound reached) fails `unavailable`/`too-many-requests`,
 * retryable — it was never in the log. A proposal that does not apply within the request timeout
 * fails `indeterminate` (it may still apply). Linearizable reads use ReadIndex, then wait until the
 * member has applied that index.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { Txn } from '../../../src/types.js';
import { assert, ProposalDropped } from '../consensus/assert.js';
import { MemoryStorage } from '../consensus/memory-storage.js';
import type { NodeStorage } from '../consensus/node-storage.js';
import { decodeConfChange, Raft } from '../consensus/raft.js';
import {
  type ConfChange,
  type Entry,
  EntryType,
  type Message,
  MessageType,
  type NodeId,
  type ReadState,
  type Ready,
  Role,
  type Snapshot,
  type SnapshotMeta,
} from '../consensus/types.js';
import { encodeRequest, type RequestLimits, requestLimitsDefault } from '../limits.js';
import { noSpaceError } from '../store/alarms.js';
import { restoreStore, snapshotStoreSliced } from '../store/snapshot.js';
import { Store } from '../store/store.js';
import type { Transport } from '../transport/transport.js';
import { type AuthChecked, type Command, decodeCommand } from './commands.js';

/** etcd's ErrAuthOldRevision text (a write checked before an auth change applied ahead of it). */
export const authOldRevisionText = 'etcdserver: revision of auth store is old';

/**
 * Revocations one expiry pass (one tick) proposes at most; more expired leases are proposed by the
 * next ticks (etcd rate-limits revocations the same way: lessor leaseRevokeRate, 1,000/s).
 */
export const leaseRevocationsPerPassMax = 500;

/** Requests in flight per member (writes waiting to apply, reads waiting for ReadIndex). */
export const pendingRequestsMax = 10_000;

/** Keep-alives of expiring leases waiting at once for their revocation to apply (`renewLease`). */
export const revocationWaitersMax = 10_000;

/** Messages any member may send before the Ready that holds them is durable (`#sendEarly`). */
const earlyAnyRole: ReadonlySet<MessageType> = new Set([
  MessageType.HeartbeatResp,
  MessageType.Propose,
  MessageType.ReadIndex,
  MessageType.ReadIndexResp,
  MessageType.TransferLeader,
]);

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** A command without its request id (distributes over the union). */
export type CommandBody = Command extends infer C ? (C extends Command ? Omit<C, 'id'> : never) : never;

export interface NodeOptions {
  id: NodeId;
  voters: NodeId[];
  transport: Transport;
  tickMs: number;
  electionTicks: number;
  heartbeatTicks: number;
  minTtlSeconds: number;
  requestTimeoutMs: number;
  now: () => number;
  random: () => number;
  /** Where the log and hard state live (default: a fresh MemoryStorage); may hold state to restart from. */
  storage?: NodeStorage;
  /** Take a state-machine snapshot and compact the log every this many applied entries. */
  snapshotEntries?: number;
  /** Longest stretch of snapshot encoding between two event-loop turns (ms; default 4). */
  snapshotSliceMs?: number;
  /** Called once if the member stops because its storage failed (it never serves after that). */
  onFatal?: (err: unknown) => void;
  /** etcd's `--max-request-bytes` and `--max-txn-ops` for requests proposed here (default: etcd's). */
  limits?: RequestLimits;
  /**
   * A committed membership change was applied to the core's configuration (on every member, in
   * log order, also when a restart replays it): the member updates its peers and its record.
   */
  onConfChange?: (cc: ConfChange, index: number) => void;
  /** A snapshot from the leader was installed (its configuration may hold changes this member never applied). */
  onSnapshotInstalled?: (meta: SnapshotMeta) => void;
  /** An `attributes` command applied: a member's published name and client URLs (JSON text). */
  onAttributes?: (memberId: bigint, attributes: string) => void;
  /** Told of durations the metrics and event logs report; called per batch, never per request. */
  observer?: NodeObserver;
}

/** Durations of a node's batched work, in seconds (server/metrics.ts's disk histograms). */
export interface NodeObserver {
  /** A Ready made durable (WAL write and sync), when the storage writes asynchronously. */
  persisted(seconds: number): void;
  /** The committed entries of a Ready applied to the store. */
  applied(seconds: number): void;
  /** A snapshot of the store recorded in storage. */
  snapshotSaved(index: number, bytes: number, seconds: number): void;
}

/** Default for `snapshotEntries`: etcd's default `--snapshot-count` (100,000). Each snapshot encodes the
 * whole store and its history since the last compaction, so fewer of them is less CPU under write
 * load (put128, 3 in-process members, memory-only: ~11.9k → ~16.6k puts/s vs 50,000); the cost is
 * a longer WAL tail to replay at restart and up to two intervals of log entries in memory. */
export const snapshotEntriesDefault = 100_000;

/** Attempts of an on-demand snapshot (`RaftNode.snapshot()`) given up because of a compaction. */
const snapshotAttemptsMax = 5;

interface Waiter {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  timer: ReturnType<typeof setTimeout>;
  /** The member's term when the request was made (see `#failStaleRequests`). */
  term: number;
}

interface RevocationWaiter {
  /** The revocation applied (or the lease is otherwise gone): the keep-alive answers TTL 0. */
  revoked(): void;
  fail(e: ConclaveError): void;
}

export class RaftNode {
  readonly id: NodeId;
  readonly storage: NodeStorage;
  readonly store: Store;
  raft: Raft;
  readonly #o: NodeOptions;
  readonly #writes = new Map<string, Waiter>();
  readonly #reads = new Map<string, Waiter>();
  /** Reads confirmed at an index, waiting for this member to apply it. */
  #readyReads: Array<{ index: number; resolve: () => void }> = [];
  #seq = 0;
  #idPrefix: string | undefined;
  #tick: ReturnType<typeof setInterval> | undefined;
  #scheduled = false;
  #stopped = false;
  /**
   * This member is the lease primary: it leads and has applied every entry of earlier terms (etcd
   * promotes its lessor when it applies its own term's first, empty entry). Only the primary
   * renews and expires leases; until then keep-alives are refused "not primary" and retried.
   */
  #leasePrimaryTerm = 0;
  /** Keep-alives of expiring leases waiting for the revocation (etcd: waiting on `revokec`). */
  readonly #revocationWaiters = new Map<bigint, Set<RevocationWaiter>>();
  #revocationWaiting = 0;
  /** A Ready is being made durable: nothing more is taken from the core until it is (group commit). */
  #persisting = false;
  /** The snapshot being taken (resolves whether it was taken; it never rejects). */
  #snapshotJob: Promise<boolean> | undefined;
  /** Snapshots installed from the leader so far (one during a snapshot of ours supersedes it). */
  #installs = 0;
  #lastSnapshotIndex = 0;
  #prevSnapshot: { index: number; data: Uint8Array } | undefined;
  #fatal: unknown;
  #closing: Promise<void> | undefined;
  /** Bytes of entry data applied since start (what the quota measure adds to the snapshot size). */
  #appliedBytes = 0;
  /** `#appliedBytes` as of the newest snapshot (taken here or installed from the leader). */
  #bytesAtSnapshot = 0;
  /** Membership changes proposed here, by log index, waiting to apply (one at a time in the core). */
  readonly #confWaiters = new Map<number, { term: number } & Waiter>();

  constructor(o: NodeOptions) {
    this.#o = o;
    this.id = o.id;
    this.storage = o.storage ?? new MemoryStorage({ voters: o.voters, learners: [] });
    const snap = this.storage.snapshot();
    const hs = this.storage.initialState().hardState;
    this.#durableTerm = hs.term;
    this.#durableVote = hs.vote;
    // Restart: the state machine comes back from the snapshot; the core replays the log after it.
    this.store =
      snap.meta.index > 0 && snap.data.length > 0
        ? restoreStore(snap.data, { minTtlSeconds: o.minTtlSeconds, nowMs: o.now() })
        : new Store({ minTtlSeconds: o.minTtlSeconds });
    this.store.appliedIndex = snap.meta.index;
    this.store.hub.resync();
    this.#lastSnapshotIndex = snap.meta.index;
    this.raft = new Raft({
      id: o.id,
      electionTicks: o.electionTicks,
      heartbeatTicks: o.heartbeatTicks,
      storage: this.storage,
      random: o.random,
      applied: snap.meta.index,
    });
    o.transport.register(o.id, (m) => this.#onMessage(m));
    this.#tick = setInterval(() => this.#onTick(), o.tickMs);
    // A member that is the only voter needs nobody's vote: it campaigns at once instead of
    // waiting an election timeout, so a restarted single-member cluster leads (and commits and
    // applies its recovered log) right away. etcd fast-forwards its election ticks on start for
    // the same reason. With more voters nothing changes: they hold a normal election.
    const voters = this.raft.voters;
    if (voters.size === 1 && voters.has(o.id)) this.campaign();
    // A restarted member applies at once what its storage knows committed (etcd's first Ready
    // after a restart carries those entries), rather than waiting for a leader's message.
    else this.#schedule();
    // Unref'd: a member alone does not keep the process alive, so a script that never closes an
    // embedded store still exits. Work in flight does: a pending request has its own timer, a
    // storage write is a pending fs request, an embedded client's open watch holds the process
    // (embedded.ts), and a served member has its sockets. Exiting loses nothing acknowledged: a
    // write resolves only after its Ready was saved (#loop), and DiskStorage.save resolves only
    // once the WAL write is synced (O_DSYNC or fdatasync).
    this.#tick.unref?.();
  }

  /** Proposals that failed here: dropped, timed out, or lost to a leader change (etcd_server_proposals_failed_total). */
  readonly stats = { proposalsFailed: 0 };

  /** Proposals made here and not yet applied (etcd_server_proposals_pending). */
  get pendingProposals(): number {
    return this.#writes.size;
  }

  /**
   * Size in bytes of the newest snapshot of the store this member holds (taken here, installed from
   * the leader, or loaded at restart); 0 before the first. It is what a new member would receive:
   * the encoded store, history since the last compaction included. The served Status reports it
   * as "db size" and `--quota-backend-bytes` is compared with it.
   */
  get snapshotBytes(): number {
    const base = this.storage.snapshot();
    const latest = this.storage.latestSnapshot;
    return (latest && latest.meta.index > base.meta.index ? latest : base).data.length;
  }

  get isLeader(): boolean {
    return this.raft.role === Role.Leader;
  }

  /** Leads, and has applied its own term's first entry (the core's role is checked as of now). */
  get #leasePrimary(): boolean {
    return this.#leasePrimaryTerm === this.raft.term && this.raft.role === Role.Leader;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Campaign at once (faster startup for a fresh cluster). */
  campaign(): void {
    this.raft.campaign();
    this.#schedule();
  }

  #onMessage(m: Message): void {
    if (this.#stopped) return;
    this.raft.step(m);
    this.#schedule();
  }

  #onTick(): void {
    if (this.#stopped) return;
    this.raft.tick();
    if (this.#leasePrimary) this.#expireLeases();
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled || this.#stopped) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      this.#loop();
    });
  }

  #loop(): void {
    if (this.#persisting) {
      this.#sendWhilePersisting();
      if (!this.#stopped) this.#confirmReads(this.raft.takeReadStates());
      this.#applyWhilePersisting();
      return;
    }
    while (!this.#stopped && !this.#persisting && this.raft.hasReady()) {
      const rd = this.raft.ready();
      // Persist before applying anything of this Ready or sending anything that vouches for it
      // (Raft §5: durable before answering). While an asynchronous save is in flight, proposals
      // and messages keep accumulating in the core; the next Ready carries all of them to one
      // fdatasync. What vouches for nothing this write holds goes out at once (`#sendEarly`): a
      // leader's appends and heartbeats, so that its write and its followers' overlap (Raft
      // thesis §10.2.1; etcd does the same), and any member's heartbeat answers and forwarded
      // proposals and reads. Votes and append acknowledgements wait for the write.
      const late = this.#sendEarly(rd);
      let saving: void | Promise<void>;
      const saveStart = performance.now();
      try {
        saving = this.storage.save(rd);
      } catch (err) {
        this.#die(err);
        return;
      }
      if (saving) {
        this.#persisting = true;
        this.#persistingSnapshot = rd.snapshot !== undefined;
        saving.then(
          () => {
            this.#persisting = false;
            this.#o.observer?.persisted((performance.now() - saveStart) / 1000);
            if (this.#stopped) return;
            this.#afterPersist(rd, late);
            this.#schedule();
          },
          (err: unknown) => {
            this.#persisting = false;
            this.#die(err);
          },
        );
        return;
      }
      this.#afterPersist(rd, late);
    }
  }

  /**
   * While this member's own write is in flight, sends what the core made meanwhile that `#sendEarly`
   * would send early (a leader's heartbeats, heartbeat answers, forwarded proposals and reads)
   * instead of holding it until the write completes and the next Ready: a heartbeat answered
   * only after a follower's fsync delays the leader's ReadIndex confirmation by that fsync. Only
   * while the term and vote on disk are the core's (every message carries the term). Appends
   * are not taken here: a leader's new entries go out together at the next Ready (one append per
   * follower per write), and acknowledgements must wait.
   */
  #sendWhilePersisting(): void {
    const r = this.raft;
    if (this.#stopped || r.term !== this.#durableTerm || r.vote !== this.#durableVote) return;
    const leader = r.role === Role.Leader;
    const early = r.takeMessages(
      (m) => earlyAnyRole.has(m.type) || (leader && m.type === MessageType.Heartbeat),
    );
    if (early.length > 0) this.#o.transport.send(early);
  }

  /** The Ready being made durable installs a snapshot (nothing is applied before it is). */
  #persistingSnapshot = false;

  /**
   * While this member's own write is in flight, applies the entries the cluster has committed
   * meanwhile, rather than after the write: committed means durable on a quorum, so applying and
   * answering does not wait for this member's copy (Raft thesis §10.2.1: "the leader may even
   * commit an entry before it has been written to its own disk, if a majority of followers have
   * written it"). This is what answers a write made through a follower as soon as the leader's
   * commit index arrives, and a leader whose own fsync is the slowest of a quorum as soon as its
   * followers have acknowledged. Nothing is sent here: acknowledgements still wait for the write.
   * Only entries the storage already mirrors are applied (a snapshot of the store is then always
   * at an index the log holds), in order from the store's applied index, stopping at a membership
   * change (applied on the regular path) and while a snapshot from the leader is being installed.
   */
  #applyWhilePersisting(): void {
    if (this.#stopped || this.#persistingSnapshot) return;
    const log = this.raft.log;
    const upTo = Math.min(log.committed, this.storage.lastIndex());
    const first = this.store.appliedIndex + 1;
    const entries: Entry[] = [];
    for (let i = first; i <= upTo; i++) {
      const e = log.entry(i);
      if (e === undefined || e.type === EntryType.ConfChange) break;
      entries.push(e);
    }
    if (entries.length > 0) this.#applyEntries(entries);
    this.#releaseReads();
  }

  /**
   * Applies committed entries in log order, skipping those applied already (an entry may be
   * applied while the write of the Ready that carries it was in flight: `#applyWhilePersisting`).
   */
  #applyEntries(entries: readonly Entry[]): void {
    let appliedTerm = this.#appliedTerm;
    const applyStart = performance.now();
    for (const e of entries) {
      if (e.index <= this.store.appliedIndex) continue;
      // Entries apply in log order without a gap (Raft §5.3): a skipped entry is a lost write.
      assert(e.index === this.store.appliedIndex + 1, `apply ${e.index} after ${this.store.appliedIndex}`);
      this.#appliedBytes += e.data.length;
      if (e.type === EntryType.ConfChange) this.#applyConfChange(e.index, e.term, e.data);
      else if (e.data.length > 0) this.#apply(decodeCommand(e.data));
      else if (e.term === this.raft.term && this.raft.role === Role.Leader) this.#promoteLeases();
      this.store.appliedIndex = e.index;
      if (e.term > appliedTerm) appliedTerm = e.term;
    }
    this.#o.observer?.applied((performance.now() - applyStart) / 1000);
    if (appliedTerm > this.#appliedTerm) {
      this.#appliedTerm = appliedTerm;
      this.#failStaleRequests(appliedTerm);
    }
  }

  /** The highest term of an entry applied here (see `#failStaleRequests`). */
  #appliedTerm = 0;

  /**
   * This member applied an entry of `term`: a leader of that term committed it. Every request made
   * here in an earlier term that has not completed is failed now rather than at its timeout:
   * - A write proposed in an earlier term that was in the new leader's log was committed with (so
   *   applied before) that leader's first entry; one that was not — forwarded to a leader that then
   *   died, or appended only by a deposed leader — has been lost in practice. It fails
   *   `indeterminate` with etcd's "request timed out, possibly due to previous leader failure"
   *   (not "never applied": a proposal still queued toward the old leader could in principle reach
   *   it after a restart, and forwarded proposals carry no term to refuse it by). etcd waits for its
   *   request timeout (5 s + 2 election timeouts) in this case; a client whose leader was killed
   *   waited that long before its writes through a follower resumed.
   * - A read made in an earlier term and still unconfirmed (a ReadIndex forwarded to the dead
   *   leader) fails retryable "leader changed": a read has no effect, and the caller retries it
   *   under the new leader.
   * One pass over the pending requests per new term applied: never on the hot path.
   */
  #failStaleRequests(term: number): void {
    let lost: ConclaveError | undefined;
    for (const [k, w] of this.#writes) {
      if (w.term >= term) continue;
      lost ??= new ConclaveError(
        ErrorCode.Indeterminate,
        `member ${this.id}: request timed out, possibly due to previous leader failure: proposed in term ${w.term}, not applied when an entry of term ${term} was; it may still apply`,
        { retryable: false },
      );
      this.#writes.delete(k);
      clearTimeout(w.timer);
      this.stats.proposalsFailed++;
      w.reject(lost);
    }
    let changed: ConclaveError | undefined;
    for (const [k, w] of this.#reads) {
      if (w.term >= term) continue;
      changed ??= new ConclaveError(
        ErrorCode.Unavailable,
        `member ${this.id}: leader changed while the read was pending (made in term ${w.term}, now ${term}); retry`,
      );
      this.#reads.delete(k);
      clearTimeout(w.timer);
      w.reject(changed);
    }
  }

  /** The term and vote on disk (what a Ready may send early under). */
  #durableTerm = 0;
  #durableVote = 0;

  /**
   * Sends what may go out before the Ready is durable; returns the rest. Nothing goes early when
   * the Ready changes the term or the vote (every message carries the term, and a vote must be
   * durable before anyone hears of it). Early: a leader's appends and heartbeats (its own entries
   * count toward a commit only once persisted: the core's advance), and any member's heartbeat
   * answers, forwarded proposals and forwarded reads and their answers: none vouches for entries
   * this Ready makes durable, and a heartbeat answer held behind a follower's fsync would delay
   * every linearizable read (ReadIndex) by it. Late: append acknowledgements (they say the entries
   * are durable), votes, snapshots and the rest.
   */
  #sendEarly(rd: Ready): readonly Message[] {
    const hs = rd.hardState;
    if (
      rd.messages.length === 0 ||
      (hs !== undefined && (hs.term !== this.#durableTerm || hs.vote !== this.#durableVote))
    )
      return rd.messages;
    const leader = this.raft.role === Role.Leader;
    const early: Message[] = [];
    const late: Message[] = [];
    for (const m of rd.messages) {
      if (
        earlyAnyRole.has(m.type) ||
        (leader && (m.type === MessageType.Append || m.type === MessageType.Heartbeat))
      )
        early.push(m);
      else late.push(m);
    }
    if (early.length > 0) this.#o.transport.send(early);
    return late;
  }

  #afterPersist(rd: Ready, messages: readonly Message[]): void {
    if (rd.hardState) {
      this.#durableTerm = rd.hardState.term;
      this.#durableVote = rd.hardState.vote;
    }
    this.#o.transport.send(messages);
    if (rd.snapshot) this.#installSnapshot(rd.snapshot);
    if (rd.committed.length > 0) this.#applyEntries(rd.committed);
    this.#confirmReads(rd.readStates);
    if (rd.softState) this.#onRoleChange(rd.softState.role);
    this.raft.advance(rd);
    this.#releaseReads();
    this.#maybeSnapshot();
  }

  /** A snapshot from the leader replaces the whole state machine (watchers are resynced). */
  #installSnapshot(snap: Snapshot): void {
    // The core accepts only a snapshot past its commit index: one at or below what is applied would roll the store back.
    assert(
      snap.meta.index > this.store.appliedIndex,
      `snapshot ${snap.meta.index} at or below applied ${this.store.appliedIndex}`,
    );
    const restored = restoreStore(snap.data, { minTtlSeconds: this.#o.minTtlSeconds, nowMs: this.#o.now() });
    restored.appliedIndex = snap.meta.index;
    this.store.replaceState(restored);
    // Keep-alives waiting on a lease the snapshot no longer holds: its revocation applied.
    for (const id of [...this.#revocationWaiters.keys()])
      if (!this.store.leases.get(id)) this.#revocationApplied(id);
    this.#lastSnapshotIndex = snap.meta.index;
    this.#bytesAtSnapshot = this.#appliedBytes;
    this.#installs++;
    this.#o.onSnapshotInstalled?.(snap.meta);
  }

  #applyConfChange(index: number, term: number, data: Uint8Array): void {
    const cc = decodeConfChange(data);
    this.raft.applyConfChange(cc);
    this.#o.onConfChange?.(cc, index);
    const w = this.#confWaiters.get(index);
    if (!w) return;
    this.#confWaiters.delete(index);
    clearTimeout(w.timer);
    if (w.term === term) w.resolve(index);
    else
      w.reject(new ConclaveError(ErrorCode.Unavailable, 'etcdserver: leader changed', { retryable: true }));
  }

  /**
   * Proposes one membership change on this member, which must lead (the core refuses a second
   * change while one is pending, and promoting a learner that has not caught up); resolves with
   * the log index once it applied here. A refusal before it entered the log throws
   * `ProposalDropped` (its `reason` says which); not applied within the request timeout fails
   * `indeterminate`.
   */
  proposeConfChange(cc: ConfChange): Promise<number> {
    this.#check();
    if (this.raft.role !== Role.Leader)
      throw new ConclaveError(ErrorCode.NotLeader, 'etcdserver: not leader; retry', { retryable: true });
    this.raft.proposeConfChange(cc);
    const index = this.raft.log.lastIndex;
    const term = this.raft.term;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#confWaiters.delete(index);
        reject(
          new ConclaveError(
            ErrorCode.Indeterminate,
            `member ${this.id}: the membership change was proposed but not applied within ${this.#o.requestTimeoutMs} ms; it may still apply`,
            { retryable: false },
          ),
        );
      }, this.#o.requestTimeoutMs);
      this.#confWaiters.set(index, { term, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#schedule();
    });
  }

  /** Every `snapshotEntries` applied entries: snapshot the store and let storage drop the log before it. */
  #maybeSnapshot(): void {
    const every = this.#o.snapshotEntries ?? snapshotEntriesDefault;
    if (this.#snapshotJob || this.store.appliedIndex - this.#lastSnapshotIndex < every) return;
    void this.#takeSnapshot();
  }

  /**
   * Takes a snapshot at the applied index now without stopping the loop: the store is frozen at
   * once and encoded in slices between loop turns (store/snapshot.ts) while this member keeps
   * applying; the storage writes it (durably, for DiskStorage) and only then compacts its log to
   * the previous snapshot, as does the core. Resolves true once taken; false if given up: the
   * store was compacted meanwhile (retried at the next applied entry), a snapshot from the leader
   * was installed meanwhile (it supersedes this one), or the member stopped. A storage failure
   * stops the member.
   */
  #takeSnapshot(): Promise<boolean> {
    const job = this.#snapshotNow().then(
      (taken) => {
        this.#snapshotJob = undefined;
        return taken;
      },
      (err: unknown) => {
        this.#snapshotJob = undefined;
        this.#die(err);
        return false;
      },
    );
    this.#snapshotJob = job;
    return job;
  }

  async #snapshotNow(): Promise<boolean> {
    const installs = this.#installs;
    const superseded = () => this.#stopped || this.#installs !== installs;
    // The configuration at the applied index (conf changes apply with their entry).
    const confState = this.raft.confState();
    // The store is frozen at the call: the entries applied so far are in the snapshot.
    const bytesAt = this.#appliedBytes;
    const snap = await snapshotStoreSliced(this.store, {
      abandoned: superseded,
      ...(this.#o.snapshotSliceMs !== undefined ? { sliceMs: this.#o.snapshotSliceMs } : {}),
    });
    if (!snap || superseded()) return false;
    const saveStart = performance.now();
    await this.storage.snapshotAt(snap.index, snap.data, confState);
    if (superseded()) return false;
    this.#o.observer?.snapshotSaved(snap.index, snap.data.length, (performance.now() - saveStart) / 1000);
    this.#lastSnapshotIndex = Math.max(this.#lastSnapshotIndex, snap.index);
    this.#bytesAtSnapshot = bytesAt;
    // The core's log is compacted only to the previous snapshot: the entries since then stay
    // as a catch-up tail for followers slightly behind (they need no whole snapshot).
    const prev = this.#prevSnapshot;
    this.#prevSnapshot = { index: snap.index, data: snap.data };
    if (prev && prev.index <= this.raft.log.applied) this.raft.compact(prev.index, prev.data);
    return true;
  }

  /**
   * Takes a snapshot of everything applied now (on demand) and resolves with the index of the
   * newest snapshot once it is recorded (durable, on disk storage). One already in flight is
   * waited for first.
   */
  async snapshot(): Promise<number> {
    this.#check();
    const target = this.store.appliedIndex;
    for (let attempt = 0; attempt < snapshotAttemptsMax && this.#lastSnapshotIndex < target; ) {
      if (this.#snapshotJob) {
        await this.#snapshotJob;
        continue;
      }
      if (this.#stopped) break;
      attempt++;
      await this.#takeSnapshot();
    }
    if (this.#fatal !== undefined) throw this.#fatal;
    return this.#lastSnapshotIndex;
  }

  /**
   * Bytes of entry data applied since the newest snapshot: with the snapshot's size, the quota's
   * measure of the store (`--quota-backend-bytes`; docs/server.md). An overestimate of what the
   * store grew by (a command's encoding is a little larger than what it stores), never an
   * underestimate; the next snapshot replaces it with the real encoded size.
   */
  get bytesSinceSnapshot(): number {
    return this.#appliedBytes - this.#bytesAtSnapshot;
  }

  /** Storage failed: stop serving at once (a member never acknowledges what it could not persist). */
  #die(err: unknown): void {
    if (this.#fatal !== undefined) return;
    this.#fatal = err;
    void this.stop();
    this.#o.onFatal?.(err);
  }

  get fatalError(): unknown {
    return this.#fatal;
  }

  /** Confirmed reads wait for this member to apply their index (then `#releaseReads`). */
  #confirmReads(states: readonly ReadState[]): void {
    for (const rs of states) {
      const key = utf8Decoder.decode(rs.context);
      const w = this.#reads.get(key);
      if (!w) continue;
      this.#reads.delete(key);
      clearTimeout(w.timer);
      this.#readyReads.push({ index: rs.index, resolve: () => w.resolve(rs.index) });
    }
  }

  #releaseReads(): void {
    if (this.#readyReads.length === 0) return;
    const applied = this.store.appliedIndex;
    const keep: Array<{ index: number; resolve: () => void }> = [];
    for (const r of this.#readyReads) {
      if (r.index <= applied) r.resolve();
      else keep.push(r);
    }
    this.#readyReads = keep;
  }

  #onRoleChange(role: Role): void {
    // A new leader becomes the lease primary only once it applies its own term's first entry
    // (#promoteLeases), not here: revocations proposed by the previous leader apply first.
    if (role !== Role.Leader) {
      this.#demoteLeases();
      // Reads waiting for this member's confirmation as leader will not get it.
      const e = new ConclaveError(
        ErrorCode.Unavailable,
        'leadership changed while the read was pending; retry',
      );
      for (const [k, w] of this.#reads) {
        clearTimeout(w.timer);
        w.reject(e);
        this.#reads.delete(k);
      }
    }
  }

  #apply(c: Command): void {
    let result: unknown;
    let error: unknown;
    try {
      // etcd's apply-time auth check: a write whose caller was checked against auth revision r
      // applies only if no auth change applied since (a permission revoked in between must not be
      // bypassed); else nothing changes and the caller hears "revision of auth store is old".
      const ar = (c as AuthChecked).authRevision;
      if (ar !== undefined && this.store.auth.enabled && ar < this.store.auth.revision)
        throw new ConclaveError(ErrorCode.Unauthenticated, authOldRevisionText, { retryable: false });
      // etcd's applierV3Capped: while a NOSPACE alarm is raised (for any member), the writes that
      // grow the store are refused as they are applied, in log order, identically everywhere.
      if (this.store.alarms.size > 0 && growsStore(c) && this.store.alarms.has('nospace'))
        throw noSpaceError();
      switch (c.op) {
        case 'put':
          result = this.store.applyPut(c.key, c.value, c.opts);
          break;
        case 'delete':
          result = this.store.applyDelete(c.key, c.opts);
          break;
        case 'txn':
          result = this.store.applyTxn(c.txn);
          break;
        case 'compact':
          this.store.applyCompact(c.revision);
          result = undefined;
          break;
        case 'grant':
          result = this.store.applyLeaseGrant(c.lease, c.ttlSeconds, this.#o.now());
          break;
        case 'revoke':
          try {
            result = this.store.applyLeaseRevoke(c.lease);
          } finally {
            // Applied (or the lease was already gone): keep-alives waiting on it answer TTL 0.
            this.#revocationApplied(c.lease);
          }
          break;
        case 'auth':
          result = this.store.auth.applyEncoded(c.change, this.#o.now());
          break;
        case 'alarm':
          result =
            c.action === 'activate'
              ? this.store.alarms.activate(c.memberId, c.alarm)
              : this.store.alarms.deactivate(c.memberId, c.alarm);
          break;
        case 'attributes':
          this.#o.onAttributes?.(c.memberId, c.attributes);
          result = undefined;
          break;
      }
    } catch (err) {
      // Deterministic refusals (unknown lease, compacted, …) are results, identical on every member.
      error = err;
    }
    const w = this.#writes.get(c.id);
    if (!w) return;
    this.#writes.delete(c.id);
    clearTimeout(w.timer);
    if (error !== undefined) w.reject(error);
    else w.resolve(result);
  }

  /**
   * The primary's expiry pass: every lease past its deadline is marked revoking (never renewed
   * again) and its revocation proposed. A proposal that fails unmarks it, and the next pass
   * proposes it again while this member is still primary (etcd's lessor re-sends expired leases).
   */
  #expireLeases(): void {
    const leases = this.store.leases;
    for (const id of leases.startRevoking(this.#o.now(), leaseRevocationsPerPassMax)) {
      let p: Promise<unknown>;
      try {
        p = this.propose({ id: this.#newId(), op: 'revoke', lease: id });
      } catch {
        leases.revokeFailed(id);
        continue;
      }
      p.catch(() => leases.revokeFailed(id));
    }
  }

  /**
   * This leader applied its own term's first entry: every entry of earlier terms has applied, so
   * every revocation an earlier leader proposed has applied or never will. It becomes the lease
   * primary and refreshes every lease (etcd lessor.Promote(electionTimeout)): deadline = now + TTL
   * + one election timeout. A keep-alive the previous leader answered with TTL t at time T was
   * answered before that leader could be deposed, i.e. no later than about one election timeout
   * before this member won (check-quorum and pre-vote: a majority must have gone an election
   * timeout without hearing from it); the extension covers that, so this member never expires a
   * lease earlier than the previous leader could have.
   */
  #promoteLeases(): void {
    if (this.#leasePrimaryTerm === this.raft.term) return;
    this.#leasePrimaryTerm = this.raft.term;
    // Waiters from an earlier term of ours: their revocation applied already or never will.
    this.#failRevocationWaiters(this.#notPrimary('a new term began while the keep-alive waited'));
    this.store.leases.promote(this.#o.now(), this.#o.electionTicks * this.#o.tickMs);
  }

  #notPrimary(why: string): ConclaveError {
    return new ConclaveError(
      ErrorCode.Unavailable,
      `member ${this.id} is not the lease primary (${why}); the lease was not renewed: retry on the leader`,
    );
  }

  /** Leadership is gone: keep-alives waiting for a revocation answer "not primary" (etcd's `demotec`). */
  #demoteLeases(): void {
    this.#leasePrimaryTerm = 0;
    this.#failRevocationWaiters(this.#notPrimary('leadership moved while the keep-alive waited'));
  }

  #revocationApplied(id: bigint): void {
    const ws = this.#revocationWaiters.get(id);
    if (!ws) return;
    this.#revocationWaiters.delete(id);
    this.#revocationWaiting -= ws.size;
    for (const w of ws) w.revoked();
  }

  #failRevocationWaiters(e: ConclaveError): void {
    const all = [...this.#revocationWaiters.values()];
    this.#revocationWaiters.clear();
    this.#revocationWaiting = 0;
    for (const ws of all) for (const w of ws) w.fail(e);
  }

  /**
   * A keep-alive (served by the lease primary without a log entry, as in etcd). Resolves with the
   * TTL granted, or 0 when the lease is unknown. A lease past its deadline or being revoked is never
   * renewed: the keep-alive waits for its revocation to apply and resolves 0 (etcd lessor.Renew).
   * Fails `unavailable` (retryable, nothing renewed) when this member is not the lease primary
   * ("not primary": the caller retries on the leader), when a quorum does not confirm its
   * leadership in time (a deposed leader that has not noticed yet), when leadership moves during
   * the wait, or when the revocation has not applied within the request timeout.
   */
  async renewLease(id: bigint): Promise<number> {
    this.#check();
    if (!this.#leasePrimary)
      throw this.#notPrimary('not the leader, or a new leader still applying earlier terms');
    // Confirm leadership with a quorum first (a ReadIndex round, as etcd does since issue #15247):
    // a leader cut off while its process stalled still believes it leads until its next
    // check-quorum tick, and its successor's deadlines started at its own promotion, so a TTL
    // granted here after that would outlive the successor's promise. A quorum acknowledging a
    // heartbeat sent after `askedAt` means no successor can be elected before one election timeout
    // after `askedAt`, and it extends every lease by another at its promotion; so the renewal must
    // happen within one election timeout of `askedAt`, or it is refused (retried by the caller).
    const term = this.raft.term;
    const askedAt = this.#o.now();
    try {
      await this.readIndex();
    } catch (err) {
      throw this.#notPrimary(
        `leadership not confirmed by a quorum: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    if (!this.#leasePrimary || this.raft.term !== term)
      throw this.#notPrimary('leadership moved while it was being confirmed');
    const now = this.#o.now();
    if (now - askedAt > this.#o.electionTicks * this.#o.tickMs)
      throw this.#notPrimary('leadership confirmed too late to vouch for a renewal');
    const r = this.store.leases.renew(id, now);
    if (r !== 'expiring') return r;
    if (this.#revocationWaiting >= revocationWaitersMax)
      throw new ConclaveError(
        ErrorCode.TooManyRequests,
        `member ${this.id}: more than ${revocationWaitersMax} keep-alives waiting for revocations`,
      );
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        const ws = this.#revocationWaiters.get(id);
        if (ws?.delete(w)) {
          this.#revocationWaiting--;
          if (ws.size === 0) this.#revocationWaiters.delete(id);
        }
        reject(
          new ConclaveError(
            ErrorCode.Unavailable,
            `member ${this.id}: lease ${id.toString(16)} is expiring and its revocation did not apply within ${this.#o.requestTimeoutMs} ms; it was not renewed`,
          ),
        );
      }, this.#o.requestTimeoutMs);
      const w: RevocationWaiter = {
        revoked: () => {
          clearTimeout(timer);
          resolve(0);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      let ws = this.#revocationWaiters.get(id);
      if (!ws) this.#revocationWaiters.set(id, (ws = new Set()));
      ws.add(w);
      this.#revocationWaiting++;
    });
  }

  /**
   * A request id unique across this member's restarts: its id, a random nonce drawn once per start
   * (an entry proposed before a restart may apply after it, and must not match a new request that
   * reuses its sequence number) and a sequence number. No random draw per request (hot path).
   */
  #newId(): string {
    this.#idPrefix ??= `${this.id}-${this.#o.random().toString(36).slice(2, 10)}-`;
    return this.#idPrefix + ++this.#seq;
  }

  #check(): void {
    if (this.#stopped) throw new ConclaveError(ErrorCode.Unavailable, `member ${this.id} is stopped`);
    if (this.#writes.size + this.#reads.size >= pendingRequestsMax) {
      throw new ConclaveError(
        ErrorCode.TooManyRequests,
        `member ${this.id}: more than ${pendingRequestsMax} requests pending`,
      );
    }
  }

  /**
   * Proposes a command and resolves with its applied result on this member. A request over the
   * member's limits (`too-many-ops`, `request-too-large`; backends/raft/limits.ts) throws before
   * anything is proposed.
   */
  propose<T>(cmd: CommandBody & { id?: string }): Promise<T> {
    this.#check();
    const c = { ...cmd, id: cmd.id ?? this.#newId() } as Command;
    const data = encodeRequest(c, this.#o.limits ?? requestLimitsDefault);
    return new Promise<T>((resolve, reject) => {
      try {
        this.raft.propose(data);
      } catch (err) {
        if (err instanceof ProposalDropped) {
          this.stats.proposalsFailed++;
          const code = err.reason === 'uncommitted-bytes' ? ErrorCode.TooManyRequests : ErrorCode.Unavailable;
          reject(new ConclaveError(code, `member ${this.id}: ${err.message}`, { cause: err }));
          return;
        }
        throw err;
      }
      const timer = setTimeout(() => {
        this.#writes.delete(c.id);
        this.stats.proposalsFailed++;
        reject(
          new ConclaveError(
            ErrorCode.Indeterminate,
            `member ${this.id}: the request was proposed but not applied within ${this.#o.requestTimeoutMs} ms; it may still apply`,
            { retryable: false },
          ),
        );
      }, this.#o.requestTimeoutMs);
      this.#writes.set(c.id, {
        resolve: resolve as (v: unknown) => void,
        reject,
        timer,
        term: this.raft.term,
      });
      this.#schedule();
    });
  }

  /** Resolves once a linearizable read may be served from this member's store. */
  readIndex(): Promise<void> {
    this.#check();
    const ctx = this.#newId();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#reads.delete(ctx);
        reject(
          new ConclaveError(
            ErrorCode.Unavailable,
            `member ${this.id}: read not confirmed within ${this.#o.requestTimeoutMs} ms (no leader?)`,
          ),
        );
      }, this.#o.requestTimeoutMs);
      this.#reads.set(ctx, { resolve: () => resolve(), reject, timer, term: this.raft.term });
      this.raft.readIndex(utf8Encoder.encode(ctx));
      this.#schedule();
    });
  }

  /** Stops the member: pending requests fail `unavailable`; storage is closed (awaited by the promise). */
  stop(): Promise<void> {
    if (this.#stopped) return this.#closing ?? Promise.resolve();
    this.#stopped = true;
    clearInterval(this.#tick);
    this.#o.transport.unregister(this.id);
    const e = new ConclaveError(ErrorCode.Unavailable, `member ${this.id} stopped`);
    for (const w of [...this.#writes.values(), ...this.#reads.values(), ...this.#confWaiters.values()]) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    this.#writes.clear();
    this.#reads.clear();
    this.#confWaiters.clear();
    this.#leasePrimaryTerm = 0;
    this.#failRevocationWaiters(e);
    this.store.hub.close();
    this.#closing = Promise.resolve(this.storage.close()).catch(() => undefined);
    return this.#closing;
  }
}

/** Whether a command is one etcd's capped applier refuses under NOSPACE: Put, a Txn with a put, LeaseGrant. */
function growsStore(c: Command): boolean {
  if (c.op === 'put' || c.op === 'grant') return true;
  return c.op === 'txn' && txnHasPut(c.txn);
}

function txnHasPut(t: Txn): boolean {
  for (const branch of [t.success, t.failure])
    for (const op of branch) if (op.type === 'put' || (op.type === 'txn' && txnHasPut(op.txn))) return true;
  return false;
}
