/**
 * The deterministic cluster simulator: N pure Raft cores driven on a virtual clock over a
 * faulty simulated network, with invariant checks after every step. Everything random comes from
 * one seeded PRNG, so a failing seed replays exactly.
 */
import { ProposalDropped } from '../../backends/raft/consensus/assert.js';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { decodeConfChange, Raft } from '../../backends/raft/consensus/raft.js';
import {
  type Entry,
  EntryType,
  type Message,
  MessageType,
  type Ready,
  Role,
  type Snapshot,
} from '../../backends/raft/consensus/types.js';
import { frame, RecordType, type WalRecord } from '../../backends/raft/storage/records.js';
import {
  finishReplay,
  newReplayState,
  type ReplayResult,
  replayRecords,
} from '../../backends/raft/storage/replay.js';
import { scanSegment } from '../../backends/raft/storage/wal.js';
import { Prng } from './prng.js';

export interface SimOptions {
  seed: number;
  nodes?: number;
  steps?: number;
  faults?: boolean;
  /** Steps of calm at the end (network healed, everyone up) before the liveness check. */
  quietSteps?: number;
  /** Test hook: lets a test tamper with a Ready before the driver uses it (to prove the checkers fail). */
  tamper?: (nodeId: number, rd: Ready) => Ready;
  /** Random membership changes (remove, re-add as learner, promote). Default true with 5 nodes. */
  confChanges?: boolean;
  /**
   * Simulated disks: each Ready is written as real WAL records and becomes durable only
   * after a virtual fsync delay; nothing of it is sent or applied before. A crash loses the
   * unsynced write or leaves a torn byte prefix of it; a restart may read a flipped bit in synced
   * data, which the WAL's recovery must detect — that node then stays down, never serving.
   */
  disk?: boolean;
}

export interface SimResult {
  seed: number;
  steps: number;
  applied: number;
  leadersElected: number;
  virtualMs: number;
  error?: string;
  /** Disk mode: torn tails repaired on restart, and corruptions detected (nodes that stayed down). */
  tornRepairs?: number;
  corruptionsDetected?: number;
}

const TICK_MS = 10;

/** One node's simulated disk: the WAL as bytes (synced prefix) and the last snapshot file (atomic). */
interface SimDisk {
  wal: Uint8Array;
  syncedBytes: number;
  snap: Snapshot | undefined;
  /** The write in flight: completes (is synced) at `doneAt`. */
  pending:
    | { rd: Ready; term: number; bytes: Uint8Array; doneAt: number; late: readonly Message[] }
    | undefined;
  /** Term and vote of the last synced hard state (a leader sends early only under them). */
  durableTerm: number;
  durableVote: number;
  /** Recovery found corruption: the node refuses to start for the rest of the run. */
  corrupt: boolean;
  /** Records written without waiting for a sync (commit-only hard states). */
  unsynced: Uint8Array;
}
const dec = new TextDecoder();
const enc = new TextEncoder();

interface SimNode {
  id: number;
  raft: Raft | undefined;
  storage: MemoryStorage;
  /** The state machine: applied command strings by index (undefined for no-ops / conf changes). */
  applied: Map<number, string>;
  appliedIndex: number;
  lastCommit: number;
  disk?: SimDisk;
  /** Log matching: the entry object last checked at each index of this node's log (see #checkLogMatching). */
  checkedEntries: Map<number, Entry>;
  /**
   * A paused process (a long GC pause, SIGSTOP, a stalled VM) until this virtual time: it neither
   * ticks nor handles messages or clients; messages to it wait. A leader paused past an election
   * timeout resumes believing it still leads — the case ReadIndex confirmation exists for.
   */
  pausedUntil: number;
}

interface InFlight {
  at: number;
  m: Message;
}

export class SimError extends Error {}

export class Simulation {
  readonly rng: Prng;
  readonly opts: Required<SimOptions>;
  readonly nodes = new Map<number, SimNode>();
  net: InFlight[] = [];
  now = 0;
  /** Pairs "a>b" whose messages are dropped (asymmetric partitions are single pairs). */
  readonly cut = new Set<string>();
  readonly leaderOfTerm = new Map<number, number>();
  /** index → term:data of every entry applied anywhere (state machine safety). */
  readonly appliedGlobal = new Map<number, string>();
  /**
   * Log matching (§5.3): the first entry seen in any node's log for each (index, term), keyed by
   * `logKey`, with the term just before it. An (index, term) pair must always come with the same
   * data and the same previous term; by induction, two logs holding one (index, term) are then
   * identical up to that index.
   */
  readonly entryByIndexTerm = new Map<number, { prevTerm: number; entry: Entry }>();
  /** index → term of every entry a leader has counted as committed (leader completeness, §5.4). */
  readonly committedGlobal = new Map<number, { term: number; commitTerm: number }>();
  /** Highest index any node has applied: every later ReadIndex must return at least this. */
  ackedIndex = 0;
  /** Highest index any leader has committed: every later ReadIndex must return at least this too. */
  committedMax = 0;
  /** Per seed: the core's message size and in-flight window (small ones split appends, as after a long outage). */
  readonly #maxSizePerMsgBytes: number;
  readonly #maxInflightMsgs: number;
  readonly pendingReads = new Map<string, number>();
  leadersElected = 0;
  tornRepairs = 0;
  corruptionsDetected = 0;
  #readSeq = 0;
  #propSeq = 0;

  constructor(opts: SimOptions) {
    this.opts = {
      nodes: 5,
      steps: 2000,
      faults: true,
      quietSteps: 600,
      tamper: (_id, rd) => rd,
      confChanges: (opts.nodes ?? 5) >= 5,
      disk: false,
      ...opts,
    };
    this.rng = new Prng(opts.seed);
    this.#maxSizePerMsgBytes = this.rng.pick([4096, 4096, 256, 24]);
    this.#maxInflightMsgs = this.rng.pick([16, 16, 4, 1]);
    const voters = Array.from({ length: this.opts.nodes }, (_, i) => i + 1);
    for (const id of voters) {
      const storage = new MemoryStorage({ voters, learners: [] });
      const n: SimNode = {
        id,
        raft: undefined,
        storage,
        applied: new Map(),
        appliedIndex: 0,
        lastCommit: 0,
        checkedEntries: new Map(),
        pausedUntil: 0,
      };
      if (this.opts.disk)
        n.disk = {
          wal: new Uint8Array(64 * 1024),
          syncedBytes: 0,
          snap: undefined,
          pending: undefined,
          durableTerm: 0,
          durableVote: 0,
          corrupt: false,
          unsynced: new Uint8Array(0),
        };
      this.nodes.set(id, n);
      this.#start(n);
    }
  }

  #start(n: SimNode): void {
    if (n.disk) {
      if (n.disk.corrupt) return;
      if (!this.#recoverFromDisk(n)) return;
    }
    const r = this.rng.fork();
    n.raft = new Raft({
      id: n.id,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage: n.storage,
      random: () => r.next(),
      applied: n.storage.snap.meta.index,
      maxSizePerMsgBytes: this.#maxSizePerMsgBytes,
      maxInflightMsgs: this.#maxInflightMsgs,
    });
    // The state machine restarts from the snapshot (its data is the applied map up to that index).
    this.#restoreApplied(n, n.storage.snap, 'restarted from');
    n.lastCommit = Math.max(n.lastCommit, 0);
    n.pausedUntil = 0;
  }

  /**
   * Rebuilds a node's storage from its simulated disk with the real WAL parser, as a restart
   * would. Sometimes first flips a bit in synced data: recovery must then refuse (the node stays
   * down for good); it must never start from a damaged log. Returns whether the node may start.
   */
  #recoverFromDisk(n: SimNode): boolean {
    const d = n.disk!;
    const othersCorrupt = [...this.nodes.values()].some((m) => m.disk?.corrupt);
    let flipped = false;
    if (!othersCorrupt && d.syncedBytes > 0 && this.rng.chance(0.03)) {
      const bit = this.rng.int(d.syncedBytes * 8);
      d.wal[bit >> 3]! ^= 1 << (bit & 7);
      flipped = true;
    }
    const buf = d.wal.subarray(0, Math.max(d.syncedBytes, lastWritten(d.wal, d.syncedBytes)));
    let scan: ReturnType<typeof scanSegment>;
    let state: ReplayResult;
    const after = d.snap?.meta.index ?? 0;
    const base = { index: after, term: d.snap?.meta.term };
    try {
      scan = scanSegment(buf, `sim-node-${n.id}.wal`, true);
      const file = `sim-node-${n.id}.wal`;
      state = finishReplay(replayRecords(scan.records, base, file, newReplayState()), base, file);
    } catch (err) {
      if (!flipped) this.fail(`node ${n.id}: recovery refused an undamaged log: ${String(err)}`);
      d.corrupt = true;
      this.corruptionsDetected++;
      return false;
    }
    if (flipped) this.fail(`node ${n.id}: a flipped bit in synced WAL data went undetected`);
    if (scan.tornBytes > 0) this.tornRepairs++;
    // The torn tail is erased; the log continues from the end of the valid records.
    d.wal.fill(0, scan.end, Math.max(scan.end, buf.length));
    d.syncedBytes = scan.end;
    // As the WAL: entries discarded for not continuing the snapshot are reset durably.
    if (state.discarded && d.snap)
      this.#diskWrite(d, frame({ type: RecordType.LogReset, index: after, term: d.snap.meta.term }));
    const st = new MemoryStorage(d.snap?.meta.confState ?? n.storage.snap.meta.confState);
    if (d.snap) st.snap = d.snap;
    st.ents = state.ents;
    st.hardState = { ...state.hardState, commit: Math.max(state.hardState.commit, after) };
    d.durableTerm = state.hardState.term;
    d.durableVote = state.hardState.vote;
    n.storage = st;
    return true;
  }

  /** Disk mode: appends framed records to the WAL bytes (not yet synced). */
  #diskWrite(d: SimDisk, bytes: Uint8Array): void {
    if (d.syncedBytes + bytes.length > d.wal.length) {
      const grown = new Uint8Array(Math.max(d.wal.length * 2, d.syncedBytes + bytes.length));
      grown.set(d.wal.subarray(0, d.syncedBytes));
      d.wal = grown;
    }
    d.wal.set(bytes, d.syncedBytes);
    d.syncedBytes += bytes.length;
  }

  fail(msg: string): never {
    throw new SimError(`seed ${this.opts.seed} at ${this.now} ms: ${msg}`);
  }

  run(): SimResult {
    try {
      for (let step = 0; step < this.opts.steps; step++) this.step(this.opts.faults);
      this.heal();
      for (let step = 0; step < this.opts.quietSteps; step++)
        this.step(false, step < this.opts.quietSteps / 2);
      this.checkConverged();
      return {
        ...this.#summary(),
        ...(this.opts.disk
          ? { tornRepairs: this.tornRepairs, corruptionsDetected: this.corruptionsDetected }
          : {}),
      };
    } catch (err) {
      return {
        ...this.#summary(),
        error:
          err instanceof Error
            ? `${err.message}\n${err.stack?.split('\n').slice(1, 4).join('\n')}`
            : String(err),
      };
    }
  }

  /** What a run reports whether it passed or failed. */
  #summary(): SimResult {
    return {
      seed: this.opts.seed,
      steps: this.opts.steps,
      applied: this.appliedGlobal.size,
      leadersElected: this.leadersElected,
      virtualMs: this.now,
    };
  }

  heal(): void {
    this.cut.clear();
    for (const n of this.nodes.values()) {
      n.pausedUntil = 0;
      if (!n.raft) this.#start(n);
    }
  }

  #paused(n: SimNode): boolean {
    return n.pausedUntil > this.now;
  }

  step(faults: boolean, clients = true): void {
    this.now += TICK_MS;
    if (faults) this.#injectFaults();
    if (clients) this.#clientActions(faults);
    for (const n of this.nodes.values()) if (!this.#paused(n)) n.raft?.tick();
    this.#deliver(faults);
    // Checked before applying too: a diverged log or a wrong commit is reported as such, not
    // later as two nodes applying different entries.
    this.#checkInvariants();
    for (const n of this.nodes.values()) if (!this.#paused(n)) this.#process(n);
    this.#checkInvariants();
  }

  #injectFaults(): void {
    const ids = [...this.nodes.keys()];
    if (this.rng.chance(0.01)) {
      // A partition: a random minority (or majority) split, sometimes one-way.
      this.cut.clear();
      const side = new Set(ids.filter(() => this.rng.chance(0.4)));
      const oneWay = this.rng.chance(0.3);
      for (const a of ids)
        for (const b of ids)
          if (side.has(a) !== side.has(b) && (!oneWay || side.has(a))) this.cut.add(`${a}>${b}`);
    }
    if (this.rng.chance(0.01)) this.cut.clear();
    if (this.rng.chance(0.005)) {
      const n = this.nodes.get(this.rng.pick(ids))!;
      if (n.raft) {
        n.raft = undefined; // crash: volatile state is gone, storage stays
        const d = n.disk;
        if (d) d.unsynced = new Uint8Array(0);
        if (d?.pending) {
          // Power loss mid-write: sometimes a byte prefix of the unsynced write reached the disk.
          if (this.rng.chance(0.5)) {
            const torn = d.pending.bytes.subarray(0, this.rng.int(d.pending.bytes.length));
            if (d.syncedBytes + torn.length <= d.wal.length) d.wal.set(torn, d.syncedBytes);
          }
          d.pending = undefined;
        }
      }
    }
    if (this.rng.chance(0.02)) {
      for (const n of this.nodes.values()) if (!n.raft && this.rng.chance(0.5)) this.#start(n);
    }
    if (this.rng.chance(0.003)) {
      // A pause of 2 to 8 election timeouts (the cores use 10 ticks), often hitting the leader.
      const live = [...this.nodes.values()].filter((m) => m.raft && !this.#paused(m));
      const leader = live.find((m) => m.raft!.role === Role.Leader);
      const n = leader && this.rng.chance(0.5) ? leader : live.length > 0 ? this.rng.pick(live) : undefined;
      if (n) n.pausedUntil = this.now + (20 + this.rng.int(60)) * TICK_MS;
    }
  }

  #clientActions(faults: boolean): void {
    for (const n of this.nodes.values()) {
      if (!n.raft || n.pausedUntil === 0 || this.#paused(n)) continue;
      // A node just resumed from a pause: a client's read reaches it before any message does. A
      // leader deposed meanwhile must not answer it from its stale commit index (§6.4).
      n.pausedUntil = 0;
      this.#read(n);
    }
    const live = [...this.nodes.values()].filter((n) => n.raft && !this.#paused(n));
    if (live.length === 0) return;
    if (this.rng.chance(0.3)) {
      const n = this.rng.pick(live);
      try {
        n.raft!.propose(enc.encode(`p${this.opts.seed}-${this.#propSeq++}`));
      } catch (err) {
        if (!(err instanceof ProposalDropped)) throw err;
      }
    }
    if (this.rng.chance(0.05)) this.#read(this.rng.pick(live));
    if (faults && this.rng.chance(0.003)) {
      const leader = live.find((n) => n.raft!.role === Role.Leader);
      if (leader) leader.raft!.transferLeader(this.rng.pick([...this.nodes.keys()]));
    }
    if (faults && this.opts.confChanges && this.rng.chance(0.004)) this.#randomConfChange(live);
    if (this.rng.chance(0.01)) {
      const n = this.rng.pick(live);
      if (n.appliedIndex > n.raft!.log.snapIndex + 20) {
        const data = enc.encode(
          JSON.stringify([...n.applied.entries()].filter(([i]) => i <= n.appliedIndex)),
        );
        n.raft!.compact(n.appliedIndex, data);
        n.storage.compact(n.appliedIndex, data, n.raft!.confState());
        // A snapshot file is written atomically (tmp + fsync + rename).
        if (n.disk) n.disk.snap = n.storage.snap;
      }
    }
  }

  /** A linearizable read on `n`: it must return at least every index committed or applied before it starts. */
  #read(n: SimNode): void {
    const ctx = `r${this.#readSeq++}`;
    this.pendingReads.set(ctx, Math.max(this.ackedIndex, this.committedMax));
    n.raft!.readIndex(enc.encode(ctx));
  }

  /** Single-server changes (§4.1): remove a voter (maybe the leader), re-add it as a learner, promote it. */
  #randomConfChange(live: SimNode[]): void {
    const leader = live.find((n) => n.raft!.role === Role.Leader)?.raft;
    if (!leader) return;
    const cs = leader.confState();
    const all = [...this.nodes.keys()];
    const absent = all.filter((id) => !cs.voters.includes(id) && !cs.learners.includes(id));
    try {
      if (cs.learners.length > 0)
        leader.proposeConfChange({ type: 'add-voter', nodeId: this.rng.pick(cs.learners) });
      else if (absent.length > 0)
        leader.proposeConfChange({ type: 'add-learner', nodeId: this.rng.pick(absent) });
      else if (cs.voters.length > 3)
        leader.proposeConfChange({ type: 'remove', nodeId: this.rng.pick(cs.voters) });
    } catch (err) {
      if (!(err instanceof ProposalDropped)) throw err;
    }
  }

  /** The members of the final configuration, as the leader sees it. */
  members(): number[] {
    const leader = [...this.nodes.values()].find((n) => n.raft?.role === Role.Leader)?.raft;
    if (!leader) return [...this.nodes.keys()];
    const cs = leader.confState();
    return [...cs.voters, ...cs.learners];
  }

  #deliver(faults: boolean): void {
    const due: InFlight[] = [];
    const later: InFlight[] = [];
    for (const f of this.net) (f.at <= this.now ? due : later).push(f);
    this.net = later;
    // Reorder: shuffle what is due.
    for (let i = due.length - 1; i > 0; i--) {
      const j = this.rng.int(i + 1);
      [due[i], due[j]] = [due[j]!, due[i]!];
    }
    for (const f of due) {
      const to = this.nodes.get(f.m.to);
      if (to && this.#paused(to)) {
        this.net.push({ at: to.pausedUntil, m: f.m }); // waits in the paused process's socket
        continue;
      }
      const delivered =
        !!to?.raft && !this.cut.has(`${f.m.from}>${f.m.to}`) && !(faults && this.rng.chance(0.05));
      if (delivered) {
        const log = to!.raft!.log;
        if (f.m.type === MessageType.Heartbeat && f.m.commit > log.lastIndex)
          // A heartbeat's commit is at most what this node acknowledged, and acknowledged entries
          // are committed or persisted: they cannot be gone (etcd panics here too).
          this.fail(
            `durability: node ${f.m.to} got a heartbeat from ${f.m.from} (term ${f.m.term}) with commit ${f.m.commit}, but its log ends at ${log.lastIndex}: it lost entries it had acknowledged`,
          );
        to!.raft!.step(f.m);
        if (faults && this.rng.chance(0.02)) to!.raft!.step(f.m); // duplicate
      }
      // Like a real transport, report the fate of a snapshot to the leader that sent it.
      if (f.m.type === MessageType.Snapshot) this.#snapStatus(f.m.from, f.m.to, !delivered);
    }
  }

  #snapStatus(leader: number, follower: number, failed: boolean): void {
    const l = this.nodes.get(leader)?.raft;
    l?.step({
      type: MessageType.SnapStatus,
      from: follower,
      to: leader,
      term: 0,
      index: 0,
      logTerm: 0,
      entries: [],
      commit: 0,
      reject: failed,
      rejectHint: 0,
      hintTerm: 0,
      context: new Uint8Array(0),
    });
  }

  #process(n: SimNode): void {
    const r = n.raft;
    if (!r) return;
    const d = n.disk;
    if (d?.pending) {
      // Nothing of a Ready is sent or applied before its write is synced.
      if (d.pending.doneAt > this.now) return;
      const { rd, term, bytes, late } = d.pending;
      d.pending = undefined;
      this.#diskWrite(d, bytes);
      if (rd.hardState) {
        d.durableTerm = rd.hardState.term;
        d.durableVote = rd.hardState.vote;
      }
      this.#afterPersist(n, r, rd, term, late);
      return;
    }
    if (!r.hasReady()) return;
    const rd: Ready = this.opts.tamper(n.id, r.ready());
    if (d) {
      const prevHs = n.storage.hardState;
      const recs: WalRecord[] = [];
      if (rd.snapshot)
        recs.push({ type: RecordType.LogReset, index: rd.snapshot.meta.index, term: rd.snapshot.meta.term });
      for (const e of rd.entries) recs.push({ type: RecordType.Entry, entry: e });
      if (rd.hardState) recs.push({ type: RecordType.HardState, hardState: rd.hardState });
      const bytes = Buffer.concat([d.unsynced, ...recs.map(frame)]);
      // The in-memory log the core reads is updated at once (as DiskStorage mirrors it).
      this.#persistMemory(n, rd);
      // As DiskStorage: a Ready that only raises the commit index is not waited for; its record
      // rides with the next synced write and is lost if the node crashes first.
      const commitOnly =
        rd.entries.length === 0 &&
        !rd.snapshot &&
        (!rd.hardState || (rd.hardState.term === prevHs.term && rd.hardState.vote === prevHs.vote));
      if (commitOnly) {
        d.unsynced = bytes;
        this.#afterPersist(n, r, rd, r.term);
        return;
      }
      d.unsynced = new Uint8Array(0);
      // As DiskStorage: a received snapshot's file is written and renamed into place before the
      // WAL records (its log reset first) are written; a crash may fall between the two.
      if (rd.snapshot) d.snap = rd.snapshot;
      // The core keeps stepping messages while the write is in flight (as the node does): its
      // term may move on before this Ready is handled, so the Ready's own term travels with it.
      // As the node: a leader's appends and heartbeats go out while its write is in flight (Raft
      // thesis §10.2.1), unless the Ready changes the term or vote; the rest waits for the sync.
      const hs = rd.hardState;
      let late: Message[] = [...rd.messages];
      if (r.role === Role.Leader && (!hs || (hs.term === d.durableTerm && hs.vote === d.durableVote))) {
        late = [];
        for (const m of rd.messages) {
          if (m.type === MessageType.Append || m.type === MessageType.Heartbeat) this.#send(m);
          else late.push(m);
        }
      }
      // Usually a fast sync; sometimes a slow one (an fsync stall), the window where a leader's
      // early-sent appends are acknowledged by followers before its own write is durable.
      const syncMs = this.rng.chance(0.1) ? (3 + this.rng.int(12)) * TICK_MS : this.rng.int(3) * TICK_MS;
      d.pending = { rd, term: r.term, bytes, late, doneAt: this.now + syncMs };
      return;
    }
    this.#persistMemory(n, rd);
    this.#afterPersist(n, r, rd, r.term);
  }

  #persistMemory(n: SimNode, rd: Ready): void {
    if (rd.snapshot) {
      n.storage.applySnapshot(rd.snapshot);
      this.#restoreApplied(n, rd.snapshot, 'installed');
    }
    n.storage.append(rd.entries);
    if (rd.hardState) n.storage.setHardState(rd.hardState);
  }

  /** `term`: the core's term when it produced `rd`. */
  #afterPersist(
    n: SimNode,
    r: Raft,
    rd: Ready,
    term: number,
    messages: readonly Message[] = rd.messages,
  ): void {
    for (const m of messages) this.#send(m);
    for (const e of rd.committed) this.#apply(n, e);
    for (const rs of rd.readStates) {
      const ctx = dec.decode(rs.context);
      const floor = this.pendingReads.get(ctx);
      if (floor !== undefined && rs.index < floor)
        this.fail(`ReadIndex ${ctx} returned ${rs.index} below acknowledged index ${floor}`);
      this.pendingReads.delete(ctx);
    }
    if (rd.softState?.role === Role.Leader) {
      this.leadersElected++;
      const prev = this.leaderOfTerm.get(term);
      if (prev !== undefined && prev !== n.id)
        this.fail(`election safety: ${prev} and ${n.id} both lead term ${term}`);
      this.leaderOfTerm.set(term, n.id);
      // Leader completeness (§5.4): every entry committed by a leader of an earlier term is in the
      // new leader's log (a compacted prefix was committed, so it is covered). Only while its log
      // is still that leader's: the report may come late (a pause, a slow disk), after it stepped down.
      if (r.term === term && r.role === Role.Leader)
        for (const [index, e] of this.committedGlobal) {
          if (index <= r.log.snapIndex || e.commitTerm >= term) continue;
          const t = r.log.term(index);
          if (t !== e.term)
            this.fail(
              `leader completeness: leader ${n.id} of term ${term} lacks committed entry ${index} of term ${e.term} (has ${t ?? 'none'})`,
            );
        }
    }
    r.advance(rd);
  }

  #send(m: Message): void {
    const delay = this.opts.faults ? 1 + this.rng.int(30) : 1;
    this.net.push({ at: this.now + delay, m });
  }

  #apply(n: SimNode, e: Entry): void {
    if (e.index <= n.appliedIndex) return;
    if (e.index !== n.appliedIndex + 1) this.fail(`node ${n.id} applied ${e.index} after ${n.appliedIndex}`);
    n.appliedIndex = e.index;
    const v = `${e.term}:${e.type}:${dec.decode(e.data)}`;
    const seen = this.appliedGlobal.get(e.index);
    if (seen !== undefined && seen !== v)
      this.fail(`state machine safety: index ${e.index} is ${seen} on one node and ${v} on node ${n.id}`);
    this.appliedGlobal.set(e.index, v);
    if (e.index > this.ackedIndex) this.ackedIndex = e.index;
    n.applied.set(e.index, v);
    if (e.type === EntryType.ConfChange) n.raft!.applyConfChange(decodeConfChange(e.data));
  }

  /**
   * A node's state machine from a snapshot (on restart, or installed from a leader). State machine
   * safety holds across snapshots too: the snapshot must hold every entry 1..its index exactly as
   * the nodes that applied them applied them (a snapshot with a forged or missing entry would
   * otherwise pass unseen, since a restored node never re-applies those entries).
   */
  #restoreApplied(n: SimNode, snap: Snapshot, how: string): void {
    const text = dec.decode(snap.data);
    const applied = new Map(JSON.parse(text.length > 0 ? text : '[]') as Array<[number, string]>);
    for (let i = 1; i <= snap.meta.index; i++) {
      const v = applied.get(i);
      const seen = this.appliedGlobal.get(i);
      if (v === undefined || v !== seen)
        this.fail(
          `state machine safety: node ${n.id} ${how} a snapshot at ${snap.meta.index} whose entry ${i} is ${v ?? 'missing'}, applied elsewhere as ${seen ?? 'nothing'}`,
        );
    }
    n.applied = applied;
    n.appliedIndex = snap.meta.index;
  }

  #checkInvariants(): void {
    for (const n of this.nodes.values()) {
      const r = n.raft;
      if (!r) continue;
      r.log.checkInvariants();
      // Election safety (§5.2), on every node's state after every step: at most one leader per
      // term, whether or not its Ready has been handled yet.
      if (r.role === Role.Leader) {
        const prev = this.leaderOfTerm.get(r.term);
        if (prev !== undefined && prev !== n.id)
          this.fail(`election safety: ${prev} and ${n.id} both lead term ${r.term}`);
        this.leaderOfTerm.set(r.term, n.id);
      }
      if (r.log.committed < n.lastCommit && n.lastCommit <= n.storage.hardState.commit) {
        this.fail(`node ${n.id} commit went back from ${n.lastCommit} to ${r.log.committed}`);
      }
      this.#recordCommitted(n, r);
      n.lastCommit = r.log.committed;
      this.#checkLogMatching(n, r);
    }
  }

  /**
   * Whatever any node counts as committed may never change (§5.4.3): recorded here, checked
   * against every later commit on any node (a follower that advanced its commit index over
   * entries that do not match the leader's is caught here) and against every later leader's log
   * when it wins (leader completeness).
   */
  #recordCommitted(n: SimNode, r: Raft): void {
    const from = Math.max(r.log.snapIndex + 1, Math.min(n.lastCommit, r.log.committed) + 1);
    for (let i = r.log.committed; i >= from; i--) {
      const t = r.log.term(i)!;
      const known = this.committedGlobal.get(i);
      // Every newly committed index is looked at: a node whose log broke log matching may agree
      // at the top and differ below.
      if (known?.term === t) continue;
      if (i > this.committedMax) this.committedMax = i;
      if (known !== undefined)
        this.fail(
          `commit safety: ${r.role} ${n.id} in term ${r.term} committed ${i} of term ${t}, but ${i} of term ${known.term} was committed before (in term ${known.commitTerm})`,
        );
      this.committedGlobal.set(i, { term: t, commitTerm: r.term });
    }
  }

  /**
   * Log matching (§5.3), checked incrementally: only entries this node's log did not hold at the
   * last check are looked at. A log changes only at its end (a leader appends; a follower
   * truncates a conflicting suffix and appends; a snapshot replaces it), so walking back from the
   * last index until an entry is the very object checked last time visits exactly the new ones.
   */
  #checkLogMatching(n: SimNode, r: Raft): void {
    const log = r.log;
    const seen = n.checkedEntries;
    for (let i = log.lastIndex; i > log.snapIndex; i--) {
      const e = log.entry(i)!;
      if (seen.get(i) === e) break;
      seen.set(i, e);
      const prevTerm = log.term(i - 1)!;
      const key = logKey(i, e.term);
      const known = this.entryByIndexTerm.get(key);
      if (known === undefined) this.entryByIndexTerm.set(key, { prevTerm, entry: e });
      else if (known.entry !== e && (known.prevTerm !== prevTerm || !sameEntry(known.entry, e)))
        this.fail(
          `log matching: node ${n.id} holds entry ${i} of term ${e.term} after term ${prevTerm} as ${show(e)}, another log holds it after term ${known.prevTerm} as ${show(known.entry)}`,
        );
    }
  }

  /** After the quiet phase every live node has applied the same entries, as many as anyone. */
  checkConverged(): void {
    // A node that found corruption stays down (an operator replaces it); the rest must converge.
    const members = this.members()
      .map((id) => this.nodes.get(id)!)
      .filter((n) => !n.disk?.corrupt);
    const maxApplied = Math.max(...members.map((n) => n.appliedIndex));
    for (const n of members) {
      if (n.appliedIndex !== maxApplied)
        this.fail(
          `liveness: node ${n.id} applied ${n.appliedIndex}, others ${maxApplied}, after the quiet phase`,
        );
    }
    const leaders = members.filter((n) => n.raft?.role === Role.Leader);
    if (leaders.length !== 1) this.fail(`liveness: ${leaders.length} leaders after the quiet phase`);
  }
}

/** A numeric (index, term) key: terms stay far below 2^20 in a simulation (asserted). */
function logKey(index: number, term: number): number {
  if (term >= 0x100000) throw new SimError(`term ${term} out of the simulator's key range`);
  return index * 0x100000 + term;
}

function sameEntry(a: Entry, b: Entry): boolean {
  if (a.type !== b.type || a.data.length !== b.data.length) return false;
  for (let i = 0; i < a.data.length; i++) if (a.data[i] !== b.data[i]) return false;
  return true;
}

const show = (e: Entry): string => `${e.type === EntryType.ConfChange ? 'conf ' : ''}"${dec.decode(e.data)}"`;

/** End of the bytes written past `from` (a torn prefix left by a crash), or `from`. */
function lastWritten(buf: Uint8Array, from: number): number {
  for (let i = buf.length - 1; i >= from; i--) if (buf[i] !== 0) return i + 1;
  return from;
}

export function runSeed(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

export { MessageType };
