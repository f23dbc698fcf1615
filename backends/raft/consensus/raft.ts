/**
 * The Raft consensus algorithm as a pure, deterministic state machine (Ongaro & Ousterhout,
 * "In Search of an Understandable Consensus Algorithm", and Ongaro's dissertation), shaped like
 * etcd-io/raft's RawNode: inputs tick/step/propose/proposeConfChange/readIndex/transferLeader,
 * output ready() → Ready, then advance(). No I/O, clock or randomness of its own.
 *
 * Implemented: pre-vote (§9.6) and check-quorum (§6.2) on by default, leader stickiness against
 * disruptive servers (§4.2.3), per-follower progress with a bounded in-flight window, fast log
 * back-off, commit by current-term counting only (§5.4.2, Figure 8), a no-op entry on election,
 * ReadIndex reads held until the term's first commit and confirmed in batches by heartbeat
 * rounds (§6.4), snapshots for lagging followers,
 * single-server membership changes one at a time (§4.1) with learners, leadership transfer
 * (§3.10), proposal forwarding, and a bound on uncommitted bytes.
 */
import { assert, ProposalDropped } from './assert.js';
import { RaftLog } from './log.js';
import { Progress, ProgressState } from './progress.js';
import { pendingReadsMax, ReadOnly } from './read-only.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType as MT,
  type NodeId,
  type RaftConfig,
  type ReadState,
  type Ready,
  Role,
  type Snapshot,
  type SoftState,
} from './types.js';

const EMPTY = new Uint8Array(0);
const TRANSFER_CONTEXT = new TextEncoder().encode('transfer');

const enc = new TextEncoder();
const dec = new TextDecoder();
export function encodeConfChange(cc: ConfChange): Uint8Array {
  return enc.encode(
    JSON.stringify({ t: cc.type, n: cc.nodeId, c: cc.context ? Array.from(cc.context) : undefined }),
  );
}
export function decodeConfChange(data: Uint8Array): ConfChange {
  const o = JSON.parse(dec.decode(data)) as { t: ConfChange['type']; n: number; c?: number[] };
  return o.c ? { type: o.t, nodeId: o.n, context: Uint8Array.from(o.c) } : { type: o.t, nodeId: o.n };
}

/** A message with the given fields and every other field zero or empty (also used by tests). */
export function msg(partial: Partial<Message> & Pick<Message, 'type' | 'from' | 'to' | 'term'>): Message {
  return {
    index: 0,
    logTerm: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    hintTerm: 0,
    context: EMPTY,
    ...partial,
  };
}

const bytesOf = (ents: readonly Entry[]) => ents.reduce((n, e) => n + e.data.length, 0);

export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = 0;
  role: Role = Role.Follower;
  lead: NodeId = 0;
  readonly log: RaftLog;
  readonly voters = new Set<NodeId>();
  readonly learners = new Set<NodeId>();
  readonly prs = new Map<NodeId, Progress>();
  readonly #cfg: Required<Omit<RaftConfig, 'storage' | 'applied'>>;
  #electionElapsed = 0;
  #heartbeatElapsed = 0;
  #randomizedElectionTimeout = 0;
  readonly #votes = new Map<NodeId, boolean>();
  #pendingConfIndex = 0;
  #uncommittedBytes = 0;
  leadTransferee: NodeId = 0;
  readonly #readOnly = new ReadOnly();
  /** ReadIndex requests received before this leader committed an entry of its term (§6.4). */
  #pendingReads: Message[] = [];
  #msgs: Message[] = [];
  /** How many of `#msgs` the last ready() handed out (advance drops them; `takeMessages` keeps them). */
  #msgsHanded = 0;
  #readStates: ReadState[] = [];
  /** How many of `#readStates` the last ready() handed out (as `#msgsHanded`). */
  #readStatesHanded = 0;
  #pendingSnapshot: Snapshot | undefined;
  #latestSnapshot: Snapshot;
  #prevHard: HardState;
  #prevSoft: SoftState;

  constructor(cfg: RaftConfig) {
    assert(cfg.id > 0, 'node id > 0');
    assert(
      cfg.heartbeatTicks > 0 && cfg.electionTicks > cfg.heartbeatTicks,
      'electionTicks > heartbeatTicks > 0',
    );
    this.id = cfg.id;
    this.#cfg = {
      id: cfg.id,
      electionTicks: cfg.electionTicks,
      heartbeatTicks: cfg.heartbeatTicks,
      random: cfg.random,
      preVote: cfg.preVote ?? true,
      checkQuorum: cfg.checkQuorum ?? true,
      maxSizePerMsgBytes: cfg.maxSizePerMsgBytes ?? 1024 * 1024,
      maxInflightMsgs: cfg.maxInflightMsgs ?? 256,
      maxInflightBytes: cfg.maxInflightBytes ?? 32 * 1024 * 1024,
      maxUncommittedEntriesBytes: cfg.maxUncommittedEntriesBytes ?? 64 * 1024 * 1024,
    };
    const st = cfg.storage;
    const { hardState, confState } = st.initialState();
    const snap = st.snapshot();
    const first = st.firstIndex();
    const last = st.lastIndex();
    const ents = last >= first ? st.entries(first, last + 1, Number.MAX_SAFE_INTEGER) : [];
    this.log = new RaftLog(
      snap.meta.index,
      snap.meta.term,
      ents,
      hardState.commit,
      cfg.applied ?? snap.meta.index,
    );
    this.#latestSnapshot = snap;
    this.term = hardState.term;
    this.vote = hardState.vote;
    this.#applyConfState(confState);
    this.#prevHard = this.hardState();
    this.#prevSoft = { leader: 0, role: Role.Follower };
    this.becomeFollower(this.term, 0);
  }

  // ------------------------------------------------------------------------------------------
  // Public inputs

  tick(): void {
    if (this.role === Role.Leader) this.#tickHeartbeat();
    else this.#tickElection();
  }

  /** Starts an election now (tests, or a driver that wants fast startup). */
  campaign(): void {
    if (this.role === Role.Leader) return;
    if (this.#cfg.preVote) this.#becomePreCandidate();
    else this.#becomeCandidate(false);
  }

  propose(data: Uint8Array): void {
    this.#propose([{ term: 0, index: 0, type: EntryType.Normal, data }]);
  }

  proposeConfChange(cc: ConfChange): void {
    this.#propose([{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) }]);
  }

  readIndex(context: Uint8Array): void {
    this.step(msg({ type: MT.ReadIndex, from: this.id, to: this.id, term: 0, context }));
  }

  transferLeader(to: NodeId): void {
    this.step(msg({ type: MT.TransferLeader, from: to, to: this.id, term: 0 }));
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  softState(): SoftState {
    return { leader: this.lead, role: this.role };
  }

  confState(): ConfState {
    return {
      voters: [...this.voters].sort((a, b) => a - b),
      learners: [...this.learners].sort((a, b) => a - b),
    };
  }

  // ------------------------------------------------------------------------------------------
  // Ready / advance

  hasReady(): boolean {
    const hs = this.hardState();
    return (
      this.#appendPending ||
      this.#msgs.length > 0 ||
      this.log.unstable().length > 0 ||
      this.log.committed > this.log.applied ||
      this.#readStates.length > 0 ||
      this.#pendingSnapshot !== undefined ||
      hs.term !== this.#prevHard.term ||
      hs.vote !== this.#prevHard.vote ||
      hs.commit !== this.#prevHard.commit ||
      this.lead !== this.#prevSoft.leader ||
      this.role !== this.#prevSoft.role
    );
  }

  ready(): Ready {
    this.#flushAppends();
    const hs = this.hardState();
    const hardChanged =
      hs.term !== this.#prevHard.term ||
      hs.vote !== this.#prevHard.vote ||
      hs.commit !== this.#prevHard.commit;
    const soft = this.softState();
    const softChanged = soft.leader !== this.#prevSoft.leader || soft.role !== this.#prevSoft.role;
    return {
      ...(softChanged ? { softState: soft } : {}),
      ...(hardChanged ? { hardState: hs } : {}),
      entries: this.log.unstable(),
      ...(this.#pendingSnapshot ? { snapshot: this.#pendingSnapshot } : {}),
      // Copies: the driver may call into the core (applyConfChange) before advance(), adding more.
      messages: this.#handOutMessages(),
      committed: this.log.committedToApply(),
      readStates: this.#handOutReadStates(),
    };
  }

  #handOutMessages(): Message[] {
    this.#msgsHanded = this.#msgs.length;
    return this.#msgs.slice();
  }

  /**
   * Takes out the messages made since the last ready() that `pick` selects, for a driver that
   * sends some messages while the previous Ready is still being persisted (those that vouch for
   * nothing that write holds, e.g. heartbeat answers). The messages that Ready handed out stay
   * (advance drops exactly those).
   */
  takeMessages(pick: (m: Message) => boolean): Message[] {
    const taken: Message[] = [];
    if (this.#msgs.length === this.#msgsHanded) return taken;
    const kept = this.#msgs.slice(0, this.#msgsHanded);
    for (let i = this.#msgsHanded; i < this.#msgs.length; i++) {
      const m = this.#msgs[i]!;
      if (pick(m)) taken.push(m);
      else kept.push(m);
    }
    this.#msgs = kept;
    return taken;
  }

  #handOutReadStates(): ReadState[] {
    this.#readStatesHanded = this.#readStates.length;
    return this.#readStates.slice();
  }

  /**
   * Takes out the read states confirmed since the last ready() (a confirmed read depends on no
   * write in flight: the driver may serve it once it has applied its index).
   */
  takeReadStates(): ReadState[] {
    if (this.#readStates.length === this.#readStatesHanded) return [];
    const taken = this.#readStates.slice(this.#readStatesHanded);
    this.#readStates.length = this.#readStatesHanded;
    return taken;
  }

  /** The driver persisted, sent and applied everything in `rd`. */
  advance(rd: Ready): void {
    if (rd.hardState) this.#prevHard = rd.hardState;
    if (rd.softState) this.#prevSoft = rd.softState;
    if (rd.snapshot) {
      // Only that snapshot: a newer one may have arrived while this Ready was being persisted.
      if (this.#pendingSnapshot === rd.snapshot) this.#pendingSnapshot = undefined;
      this.log.stabled = Math.max(this.log.stabled, rd.snapshot.meta.index);
    }
    const lastEnt = rd.entries[rd.entries.length - 1];
    if (lastEnt && this.log.term(lastEnt.index) === lastEnt.term) {
      this.log.stabled = Math.max(this.log.stabled, lastEnt.index);
      // The leader counts its own entries toward a quorum only once they are durable (its
      // appends may have gone out to followers before its own write finished).
      if (this.role === Role.Leader) this.#selfPersisted();
    }
    const lastApplied = rd.committed[rd.committed.length - 1];
    // A snapshot received while this Ready was being persisted (the driver keeps stepping
    // messages meanwhile) already moved `applied` past these entries: nothing to record then.
    if (lastApplied && lastApplied.index > this.log.applied) this.log.appliedTo(lastApplied.index);
    this.#msgs = this.#msgs.slice(rd.messages.length);
    this.#msgsHanded = 0;
    this.#readStates = this.#readStates.slice(rd.readStates.length);
    this.#readStatesHanded = 0;
    this.log.checkInvariants();
  }

  /** The driver applied a committed conf change entry: change membership (etcd applies on commit). */
  applyConfChange(cc: ConfChange): ConfState {
    const { type, nodeId } = cc;
    if (type === 'update') return this.confState();
    if (type === 'remove') {
      this.voters.delete(nodeId);
      this.learners.delete(nodeId);
      this.prs.delete(nodeId);
      if (nodeId === this.leadTransferee) this.leadTransferee = 0;
    } else {
      const learner = type === 'add-learner';
      if (learner && this.voters.has(nodeId)) {
        // Demoting a voter to learner is not supported as a single step; ignore as etcd would refuse.
      } else {
        if (learner) this.learners.add(nodeId);
        else {
          this.learners.delete(nodeId);
          this.voters.add(nodeId);
        }
        const pr = this.prs.get(nodeId);
        if (pr) pr.isLearner = learner;
        else {
          const p = new Progress(
            this.log.lastIndex + 1,
            this.#cfg.maxInflightMsgs,
            this.#cfg.maxInflightBytes,
            learner,
          );
          p.recentActive = true;
          this.prs.set(nodeId, p);
          // Start replicating to the new member right away rather than at the next heartbeat.
          if (this.role === Role.Leader) this.#sendAppend(nodeId);
        }
      }
    }
    if (this.role === Role.Leader) {
      if (!this.voters.has(this.id)) {
        // §4.2.2: a leader removed from the configuration steps down once the change is committed.
        // Before it does, it hands leadership to a voter whose log matches its own (TimeoutNow,
        // §3.10), so the rest elect at once instead of after an election timeout with no leader
        // (etcd does the same in its server: a removed leader transfers leadership as it stops;
        // etcd-io/etcd#11038). Without such a voter, the rest elect after their timeout.
        this.#handOffOnRemoval();
        this.becomeFollower(this.term, 0);
      } else if (this.voters.size > 0) {
        if (this.#maybeCommit()) this.#bcastAppend();
      }
    }
    return this.confState();
  }

  /**
   * The driver took a snapshot of its state machine at `index` (<= applied): remember it for
   * lagging followers and drop the log up to it.
   */
  compact(index: number, data: Uint8Array): void {
    assert(index <= this.log.applied, `compact ${index} <= applied ${this.log.applied}`);
    if (index <= this.log.snapIndex) return;
    const term = this.log.term(index)!;
    this.#latestSnapshot = { meta: { index, term, confState: this.confState() }, data };
    this.log.compact(index);
  }

  // ------------------------------------------------------------------------------------------
  // Roles

  becomeFollower(term: number, lead: NodeId): void {
    this.#reset(term);
    this.role = Role.Follower;
    this.lead = lead;
  }

  #becomePreCandidate(): void {
    if (!this.#promotable()) return;
    // A pre-candidate keeps its term and vote: a lost pre-vote disrupts no one (§9.6).
    this.role = Role.PreCandidate;
    this.#votes.clear();
    this.lead = 0;
    this.#electionElapsed = 0;
    this.#resetRandomizedElectionTimeout();
    this.#poll(this.id, true);
    if (this.#tally() === 'won') {
      this.#becomeCandidate(false);
      return;
    }
    for (const id of this.voters) {
      if (id === this.id) continue;
      this.#send(
        msg({
          type: MT.PreVote,
          from: this.id,
          to: id,
          term: this.term + 1,
          index: this.log.lastIndex,
          logTerm: this.log.lastTerm,
        }),
      );
    }
  }

  #becomeCandidate(transfer: boolean): void {
    if (!this.#promotable()) return;
    this.#reset(this.term + 1);
    this.role = Role.Candidate;
    this.vote = this.id;
    this.#poll(this.id, true);
    if (this.#tally() === 'won') {
      this.#becomeLeader();
      return;
    }
    for (const id of this.voters) {
      if (id === this.id) continue;
      this.#send(
        msg({
          type: MT.Vote,
          from: this.id,
          to: id,
          term: this.term,
          index: this.log.lastIndex,
          logTerm: this.log.lastTerm,
          context: transfer ? TRANSFER_CONTEXT : EMPTY,
        }),
      );
    }
  }

  #becomeLeader(): void {
    assert(this.role !== Role.Follower, 'a follower cannot become leader directly');
    this.#reset(this.term);
    this.role = Role.Leader;
    this.lead = this.id;
    // Every follower starts probing at our last index + 1 (set by #reset): optimistic, §5.3.
    const self = this.prs.get(this.id);
    if (self) {
      self.becomeReplicate();
      // What it has persisted: a member keeps stepping messages while a Ready is being written,
      // so its log may hold entries that are not durable yet (counted at advance).
      self.match = Math.min(this.log.lastIndex, this.log.stabled);
    }
    // Any uncommitted conf change in the log counts as pending until applied.
    this.#pendingConfIndex = this.log.lastIndex;
    // §5.4.2 / §8: a new leader commits an entry of its own term, an empty one.
    this.#appendEntries([{ term: 0, index: 0, type: EntryType.Normal, data: EMPTY }]);
    this.#bcastAppend();
  }

  #reset(term: number): void {
    if (this.term !== term) {
      assert(term > this.term, `term never decreases (${this.term} → ${term})`);
      this.term = term;
      this.vote = 0;
    }
    this.lead = 0;
    this.#electionElapsed = 0;
    this.#heartbeatElapsed = 0;
    this.#resetRandomizedElectionTimeout();
    this.leadTransferee = 0;
    this.#votes.clear();
    this.#uncommittedBytes = 0;
    this.#readOnly.reset();
    this.#pendingReads = [];
    for (const [id, pr] of this.prs) {
      const learner = pr.isLearner;
      const p = new Progress(
        this.log.lastIndex + 1,
        this.#cfg.maxInflightMsgs,
        this.#cfg.maxInflightBytes,
        learner,
      );
      if (id === this.id) p.match = this.log.lastIndex;
      this.prs.set(id, p);
    }
  }

  #resetRandomizedElectionTimeout(): void {
    const e = this.#cfg.electionTicks;
    this.#randomizedElectionTimeout = e + Math.floor(this.#cfg.random() * e);
  }

  /** Only voters that have not been removed may campaign. */
  #promotable(): boolean {
    return this.voters.has(this.id) && this.#pendingSnapshot === undefined;
  }

  #applyConfState(cs: ConfState): void {
    this.voters.clear();
    this.learners.clear();
    this.prs.clear();
    for (const id of cs.voters) this.voters.add(id);
    for (const id of cs.learners) this.learners.add(id);
    for (const id of [...cs.voters, ...cs.learners]) {
      this.prs.set(
        id,
        new Progress(
          this.log.lastIndex + 1,
          this.#cfg.maxInflightMsgs,
          this.#cfg.maxInflightBytes,
          this.learners.has(id),
        ),
      );
    }
  }

  // ------------------------------------------------------------------------------------------
  // Ticks

  #tickElection(): void {
    this.#electionElapsed++;
    if (this.#promotable() && this.#electionElapsed >= this.#randomizedElectionTimeout) {
      this.#electionElapsed = 0;
      this.campaign();
    }
  }

  #tickHeartbeat(): void {
    this.#heartbeatElapsed++;
    this.#electionElapsed++;
    if (this.#electionElapsed >= this.#cfg.electionTicks) {
      this.#electionElapsed = 0;
      if (this.#cfg.checkQuorum && !this.#quorumActive()) {
        // §6.2: a leader that cannot reach a quorum for an election timeout steps down.
        this.becomeFollower(this.term, 0);
        return;
      }
      // §3.10: a transfer that has not finished within an election timeout is abandoned.
      if (this.leadTransferee !== 0) this.leadTransferee = 0;
    }
    if (this.#heartbeatElapsed >= this.#cfg.heartbeatTicks) {
      this.#heartbeatElapsed = 0;
      // The periodic heartbeat doubles as the next ReadIndex round when reads are waiting.
      this.#bcastHeartbeat(this.#readOnly.heartbeatContext());
    }
  }

  #quorumActive(): boolean {
    let active = 0;
    for (const id of this.voters) {
      const pr = this.prs.get(id);
      if (id === this.id || pr?.recentActive) active++;
    }
    for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
    return active >= this.#quorum();
  }

  #quorum(): number {
    return Math.floor(this.voters.size / 2) + 1;
  }

  // ------------------------------------------------------------------------------------------
  // Step

  step(m: Message): void {
    if (!this.#stepTerm(m)) return;
    switch (m.type) {
      case MT.PreVote:
      case MT.Vote:
        this.#handleVoteRequest(m);
        return;
      case MT.Propose:
        // A proposal forwarded by another node: refusals are silent (that node's client retries).
        try {
          this.#propose(m.entries, m.from);
        } catch (err) {
          if (!(err instanceof ProposalDropped)) throw err;
        }
        return;
      default:
        break;
    }
    if (this.role === Role.Leader) this.#stepLeader(m);
    else if (this.role === Role.Follower) this.#stepFollower(m);
    else this.#stepCandidate(m);
  }

  /** Term handling common to all roles (§5.1, with pre-vote and leader-lease rules). Returns whether to continue. */
  #stepTerm(m: Message): boolean {
    if (m.term === 0) return true; // local message
    if (m.term > this.term) {
      if (m.type === MT.Vote || m.type === MT.PreVote) {
        const force = m.context.length > 0 && m.context.every((b, i) => b === TRANSFER_CONTEXT[i]);
        const inLease =
          this.#cfg.checkQuorum && this.lead !== 0 && this.#electionElapsed < this.#cfg.electionTicks;
        // §4.2.3: a server that heard from a live leader recently ignores disruptive (pre)votes.
        if (!force && inLease) return false;
      }
      if (m.type === MT.PreVote) return true; // never changes our term
      if (m.type === MT.PreVoteResp && !m.reject) return true; // our own pre-vote being granted
      const lead = m.type === MT.Append || m.type === MT.Heartbeat || m.type === MT.Snapshot ? m.from : 0;
      this.becomeFollower(m.term, lead);
      return true;
    }
    if (m.term < this.term) {
      if ((this.#cfg.checkQuorum || this.#cfg.preVote) && (m.type === MT.Heartbeat || m.type === MT.Append)) {
        // Tell a stale leader about the newer term so it steps down (it may have been partitioned).
        this.#send(msg({ type: MT.AppendResp, from: this.id, to: m.from, term: this.term }));
      } else if (m.type === MT.PreVote) {
        this.#send(msg({ type: MT.PreVoteResp, from: this.id, to: m.from, term: this.term, reject: true }));
      }
      return false;
    }
    return true;
  }

  #handleVoteRequest(m: Message): void {
    const pre = m.type === MT.PreVote;
    // §5.2/§5.4.1: grant if we can vote for this candidate and its log is at least as up-to-date.
    const canVote =
      this.vote === m.from || (this.vote === 0 && this.lead === 0) || (pre && m.term > this.term);
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      this.#send(msg({ type: pre ? MT.PreVoteResp : MT.VoteResp, from: this.id, to: m.from, term: m.term }));
      if (!pre) {
        this.#electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.#send(
        msg({
          type: pre ? MT.PreVoteResp : MT.VoteResp,
          from: this.id,
          to: m.from,
          term: this.term,
          reject: true,
        }),
      );
    }
  }

  #poll(id: NodeId, granted: boolean): void {
    if (!this.#votes.has(id)) this.#votes.set(id, granted);
  }

  #tally(): 'won' | 'lost' | 'pending' {
    let yes = 0;
    let no = 0;
    for (const id of this.voters) {
      const v = this.#votes.get(id);
      if (v === true) yes++;
      else if (v === false) no++;
    }
    const q = this.#quorum();
    if (yes >= q) return 'won';
    if (no > this.voters.size - q) return 'lost';
    return 'pending';
  }

  #stepCandidate(m: Message): void {
    const myResp = this.role === Role.PreCandidate ? MT.PreVoteResp : MT.VoteResp;
    switch (m.type) {
      case MT.Append:
      case MT.Heartbeat:
      case MT.Snapshot:
        this.becomeFollower(m.term, m.from);
        this.#stepFollower(m);
        return;
      case myResp: {
        this.#poll(m.from, !m.reject);
        const r = this.#tally();
        if (r === 'won') {
          if (this.role === Role.PreCandidate) this.#becomeCandidate(false);
          else this.#becomeLeader();
        } else if (r === 'lost') {
          this.becomeFollower(this.term, 0);
        }
        return;
      }
      case MT.TimeoutNow:
        return;
      case MT.ReadIndex:
      case MT.TransferLeader:
        return; // no leader to forward to; dropped (the caller retries)
      default:
        return;
    }
  }

  #stepFollower(m: Message): void {
    switch (m.type) {
      case MT.Append:
        this.#electionElapsed = 0;
        this.lead = m.from;
        this.#handleAppend(m);
        return;
      case MT.Heartbeat:
        this.#electionElapsed = 0;
        this.lead = m.from;
        this.log.commitTo(Math.min(m.commit, this.log.lastIndex));
        this.#send(
          msg({ type: MT.HeartbeatResp, from: this.id, to: m.from, term: this.term, context: m.context }),
        );
        return;
      case MT.Snapshot:
        this.#electionElapsed = 0;
        this.lead = m.from;
        this.#handleSnapshot(m);
        return;
      case MT.TimeoutNow:
        // §3.10: start an election at once, skipping pre-vote, with votes that override leases.
        if (this.#promotable()) this.#becomeCandidate(true);
        return;
      case MT.ReadIndex:
        if (this.lead === 0) return; // dropped: no leader
        this.#send({ ...m, from: this.id, to: this.lead, term: 0 });
        return;
      case MT.ReadIndexResp:
        this.#readStates.push({ index: m.index, context: m.context });
        return;
      case MT.TransferLeader:
        if (this.lead !== 0) this.#send({ ...m, to: this.lead, term: 0 });
        return;
      default:
        return;
    }
  }

  #handleAppend(m: Message): void {
    if (m.index < this.log.committed) {
      this.#send(
        msg({ type: MT.AppendResp, from: this.id, to: m.from, term: this.term, index: this.log.committed }),
      );
      return;
    }
    const last = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (last !== undefined) {
      this.#send(msg({ type: MT.AppendResp, from: this.id, to: m.from, term: this.term, index: last }));
      return;
    }
    // Reject with a hint: the last index whose term is <= the leader's term at m.index.
    const hint = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex), m.logTerm);
    this.#send(
      msg({
        type: MT.AppendResp,
        from: this.id,
        to: m.from,
        term: this.term,
        index: m.index,
        reject: true,
        rejectHint: hint.index,
        hintTerm: hint.term,
      }),
    );
  }

  #handleSnapshot(m: Message): void {
    const s = m.snapshot;
    assert(s !== undefined, 'snapshot message carries a snapshot');
    if (s.meta.index <= this.log.committed || this.log.matchTerm(s.meta.index, s.meta.term)) {
      // Already have it (or a matching log): just fast-forward commit.
      if (this.log.matchTerm(s.meta.index, s.meta.term)) this.log.commitTo(s.meta.index);
      this.#send(
        msg({ type: MT.AppendResp, from: this.id, to: m.from, term: this.term, index: this.log.committed }),
      );
      return;
    }
    this.log.restore(s.meta.index, s.meta.term);
    this.#applyConfState(s.meta.confState);
    this.#pendingSnapshot = s;
    this.#latestSnapshot = s;
    this.#send(
      msg({ type: MT.AppendResp, from: this.id, to: m.from, term: this.term, index: this.log.lastIndex }),
    );
  }

  // ------------------------------------------------------------------------------------------
  // Leader

  #propose(ents: readonly Entry[], _from: NodeId = this.id): void {
    if (this.role !== Role.Leader) {
      if (this.lead === 0)
        throw new ProposalDropped('no-leader', 'proposal dropped: there is no leader right now; retry');
      // Forward to the leader we know of (a forwarded proposal may be forwarded again).
      this.#send(msg({ type: MT.Propose, from: this.id, to: this.lead, term: 0, entries: ents }));
      return;
    }
    if (!this.voters.has(this.id))
      throw new ProposalDropped('not-member', 'proposal dropped: this leader was removed from the cluster');
    if (this.leadTransferee !== 0) {
      throw new ProposalDropped(
        'transferring',
        `proposal dropped: leadership is being transferred to ${this.leadTransferee}; retry`,
      );
    }
    const size = bytesOf(ents);
    if (this.#uncommittedBytes > 0 && this.#uncommittedBytes + size > this.#cfg.maxUncommittedEntriesBytes) {
      throw new ProposalDropped(
        'uncommitted-bytes',
        `proposal dropped: ${this.#uncommittedBytes} bytes are uncommitted (limit ${this.#cfg.maxUncommittedEntriesBytes}); back off and retry`,
      );
    }
    for (const e of ents) {
      if (e.type === EntryType.ConfChange) {
        if (this.#pendingConfIndex > this.log.applied) {
          throw new ProposalDropped(
            'conf-change-pending',
            'proposal dropped: a membership change is still pending; one at a time',
          );
        }
        const cc = decodeConfChange(e.data);
        const target = this.prs.get(cc.nodeId);
        if (cc.type === 'add-voter' && target?.isLearner && target.match < this.log.committed) {
          // As etcd: only a learner that has caught up may be promoted (it could stall commits otherwise).
          throw new ProposalDropped(
            'learner-behind',
            `proposal dropped: learner ${cc.nodeId} has not caught up (match ${target.match} < commit ${this.log.committed})`,
          );
        }
        this.#pendingConfIndex = this.log.lastIndex + 1;
      }
    }
    this.#uncommittedBytes += size;
    this.#appendEntries(ents);
    // Replicated at the next ready(): every proposal since the last Ready goes out in one append
    // per follower, not one append (and one acknowledgement) per proposal.
    this.#appendPending = true;
  }

  /** Proposals appended since the last Ready that have not been broadcast yet. */
  #appendPending = false;

  #flushAppends(): void {
    if (!this.#appendPending) return;
    this.#appendPending = false;
    if (this.role === Role.Leader) this.#bcastAppend();
  }

  #appendEntries(ents: readonly Entry[]): void {
    let i = this.log.lastIndex;
    const out = ents.map((e) => ({ term: this.term, index: ++i, type: e.type, data: e.data }));
    this.log.append(out);
    // The leader's own progress moves when the entries are persisted (advance), not here: the
    // driver may send them to followers before its own write is durable (Raft thesis §10.2.1).
  }

  /** The leader's own entries up to `stabled` are durable: count them, and commit what that allows. */
  #selfPersisted(): void {
    const self = this.prs.get(this.id);
    if (self?.maybeUpdate(this.log.stabled) && this.#maybeCommit()) this.#bcastAppend();
  }

  /** §5.3/§5.4.2: commit the highest index replicated on a quorum, only if it is of this term. */
  #maybeCommit(): boolean {
    const matches: number[] = [];
    for (const id of this.voters) matches.push(this.prs.get(id)?.match ?? 0);
    if (matches.length === 0) return false;
    matches.sort((a, b) => b - a);
    const candidate = matches[this.#quorum() - 1]!;
    if (candidate > this.log.committed && this.log.term(candidate) === this.term) {
      const old = this.log.committed;
      this.log.commitTo(candidate);
      let freed = 0;
      for (let i = old + 1; i <= candidate; i++) freed += this.log.entry(i)?.data.length ?? 0;
      this.#uncommittedBytes = Math.max(0, this.#uncommittedBytes - freed);
      if (this.log.term(old) !== this.term) this.#releasePendingReads();
      return true;
    }
    return false;
  }

  #bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.#sendAppend(id);
  }

  #bcastHeartbeat(context: Uint8Array): void {
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      this.#send(
        msg({
          type: MT.Heartbeat,
          from: this.id,
          to: id,
          term: this.term,
          commit: Math.min(pr.match, this.log.committed),
          context,
        }),
      );
    }
  }

  /** Sends entries (or a snapshot) to `to` if its progress allows; returns whether something was sent. */
  #sendAppend(to: NodeId, sendIfEmpty = true): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.paused) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined || pr.next < this.log.firstIndex) {
      // §7: the entries it needs were compacted away; send the snapshot instead.
      const snap = this.#latestSnapshot;
      this.#send(msg({ type: MT.Snapshot, from: this.id, to, term: this.term, snapshot: snap }));
      pr.becomeSnapshot(snap.meta.index);
      return true;
    }
    const ents =
      pr.next <= this.log.lastIndex
        ? this.log.slice(pr.next, this.log.lastIndex + 1, this.#cfg.maxSizePerMsgBytes)
        : [];
    if (ents.length === 0 && !sendIfEmpty) return false;
    this.#send(
      msg({
        type: MT.Append,
        from: this.id,
        to,
        term: this.term,
        index: prevIndex,
        logTerm: prevTerm,
        entries: ents,
        commit: this.log.committed,
      }),
    );
    if (ents.length > 0) {
      if (pr.state === ProgressState.Replicate) {
        const last = ents[ents.length - 1]!.index;
        pr.next = last + 1;
        pr.inflights.add(last, bytesOf(ents));
      } else if (pr.state === ProgressState.Probe) {
        pr.probeSent = true;
      }
    } else if (pr.state === ProgressState.Probe) {
      pr.probeSent = true;
    }
    return true;
  }

  #stepLeader(m: Message): void {
    switch (m.type) {
      case MT.ReadIndex:
        this.#handleReadIndex(m);
        return;
      case MT.TransferLeader:
        this.#handleTransfer(m.from);
        return;
      case MT.AppendResp:
        this.#handleAppendResp(m);
        return;
      case MT.HeartbeatResp:
        this.#handleHeartbeatResp(m);
        return;
      case MT.SnapStatus: {
        const pr = this.prs.get(m.from);
        if (pr?.state === ProgressState.Snapshot) {
          if (m.reject) pr.pendingSnapshot = 0;
          pr.becomeProbe();
          pr.probeSent = true; // wait for the follower's answer before probing again
        }
        return;
      }
      case MT.Unreachable: {
        const pr = this.prs.get(m.from);
        if (pr?.state === ProgressState.Replicate) pr.becomeProbe();
        return;
      }
      default:
        return;
    }
  }

  #handleAppendResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    if (m.reject) {
      // Fast back-off: skip every entry of a term the follower does not have.
      const hint = this.log.findConflictByTerm(m.rejectHint, m.hintTerm);
      if (pr.maybeDecrTo(m.index, hint.index)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.#sendAppend(m.from);
      }
      return;
    }
    const wasPaused = pr.paused;
    if (pr.maybeUpdate(m.index)) {
      if (pr.state === ProgressState.Probe) pr.becomeReplicate();
      else if (pr.state === ProgressState.Snapshot && pr.match >= pr.pendingSnapshot) {
        pr.becomeProbe();
        pr.becomeReplicate();
      }
      pr.inflights.freeLE(m.index);
      if (this.#maybeCommit()) this.#bcastAppend();
      else if (wasPaused) this.#sendAppend(m.from);
      while (this.#sendAppend(m.from, false)) {
        // keep the window full
      }
      if (m.from === this.leadTransferee && pr.match === this.log.lastIndex) {
        this.#send(msg({ type: MT.TimeoutNow, from: this.id, to: m.from, term: this.term }));
      }
    }
  }

  #handleHeartbeatResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    pr.probeSent = false;
    // Appends may have been lost: a live follower with a full window gets room for one more, and
    // its answer (a rejection if there is a gap) drives the leader back to probing.
    if (pr.state === ProgressState.Replicate && pr.inflights.full) pr.inflights.freeFirstOne();
    if (pr.match < this.log.lastIndex) this.#sendAppend(m.from);
    if (m.context.length === 0) return;
    const confirmed = this.#readOnly.ack(m.from, m.context, this.id, this.#quorum(), this.voters);
    if (confirmed.length === 0) return;
    for (const r of confirmed) this.#answerRead(r.req, r.index);
    // Reads that queued up while the confirmed round was in flight go out as the next round now.
    const next = this.#readOnly.startIfIdle();
    if (next) this.#bcastHeartbeat(next);
  }

  #handleReadIndex(m: Message): void {
    // §6.4: the leader must first commit an entry of its own term to know the commit index is current.
    if (this.log.term(this.log.committed) !== this.term) {
      // Bounded with the confirmation queue: beyond it the read is dropped and its client retries.
      if (this.#pendingReads.length + this.#readOnly.size < pendingReadsMax) this.#pendingReads.push(m);
      return;
    }
    this.#startRead(m);
  }

  #releasePendingReads(): void {
    const reads = this.#pendingReads;
    this.#pendingReads = [];
    // All of them join one round (or the next, if one is in flight).
    for (const m of reads) this.#startRead(m, false);
    const ctx = this.#readOnly.startIfIdle();
    if (ctx) this.#bcastHeartbeat(ctx);
  }

  #startRead(m: Message, send = true): void {
    if (this.voters.size === 1) {
      this.#answerRead(m, this.log.committed);
      return;
    }
    // Batched (read-only.ts): a read arriving while a round is in flight waits for the next one.
    if (!this.#readOnly.add(m, this.log.committed, this.#pendingReads.length)) return;
    const ctx = send ? this.#readOnly.startIfIdle() : undefined;
    if (ctx) this.#bcastHeartbeat(ctx);
  }

  #answerRead(req: Message, index: number): void {
    if (req.from === this.id || req.from === 0) this.#readStates.push({ index, context: req.context });
    else
      this.#send(
        msg({
          type: MT.ReadIndexResp,
          from: this.id,
          to: req.from,
          term: this.term,
          index,
          context: req.context,
        }),
      );
  }

  /**
   * TimeoutNow to the remaining voter with the longest matching log, if it holds every committed
   * entry (the removal among them): it campaigns at once, and wins unless a voter holds entries
   * it lacks (uncommitted ones), in which case an ordinary election follows.
   */
  #handOffOnRemoval(): void {
    let best = 0;
    let bestMatch = -1;
    for (const id of this.voters) {
      const pr = this.prs.get(id);
      if (id === this.id || !pr) continue;
      if (pr.match > bestMatch || (pr.match === bestMatch && pr.recentActive)) {
        best = id;
        bestMatch = pr.match;
      }
    }
    if (best !== 0 && bestMatch >= this.log.committed)
      this.#send(msg({ type: MT.TimeoutNow, from: this.id, to: best, term: this.term }));
  }

  #handleTransfer(to: NodeId): void {
    if (to === this.id || !this.voters.has(to)) return;
    if (this.leadTransferee === to) return;
    this.leadTransferee = to;
    this.#electionElapsed = 0; // the transfer must finish within one election timeout
    const pr = this.prs.get(to)!;
    if (pr.match === this.log.lastIndex)
      this.#send(msg({ type: MT.TimeoutNow, from: this.id, to, term: this.term }));
    else this.#sendAppend(to);
  }

  #send(m: Message): void {
    this.#msgs.push(
      m.term === 0 && m.type !== MT.Propose && m.type !== MT.ReadIndex && m.type !== MT.TransferLeader
        ? { ...m, term: this.term }
        : m,
    );
  }
}
