/**
 * The public shape of the pure Raft core, modelled on etcd-io/raft's RawNode:
 * inputs `tick()`, `step(msg)`, `propose(data)`, `proposeConfChange(cc)`, `readIndex(ctx)`,
 * `transferLeader(id)`; output `ready()` → `Ready`, then `advance(ready)`.
 *
 * The core does no I/O, reads no clock and draws no randomness of its own: the driver (the node
 * loop, or the simulator) persists `Ready.hardState`/`entries`/`snapshot`, sends `messages`,
 * applies `committed`, then calls `advance`.
 *
 * Node ids are positive safe integers. Terms and indexes are non-negative safe integers.
 */

export type NodeId = number;

export const EntryType = { Normal: 0, ConfChange: 1 } as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  /** Opaque command bytes (for ConfChange: an encoded ConfChange, see `encodeConfChange`). Empty for the leader's no-op. */
  readonly data: Uint8Array;
}

/** Persistent state that must be durable before messages of this Ready are sent. */
export interface HardState {
  readonly term: number;
  /** 0 when no vote was cast in `term`. */
  readonly vote: NodeId;
  readonly commit: number;
}

export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export interface SnapshotMeta {
  readonly index: number;
  readonly term: number;
  readonly confState: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** The state machine's serialized state at `meta.index` (opaque to consensus). */
  readonly data: Uint8Array;
}

/**
 * `update` changes nothing in the configuration: it carries a member's new attributes (its peer
 * URLs, in `context`) through the log as a membership change, as etcd's ConfChangeUpdateNode does,
 * so it is ordered with the other changes (one at a time).
 */
export const ConfChangeType = {
  AddVoter: 'add-voter',
  AddLearner: 'add-learner',
  Remove: 'remove',
  Update: 'update',
} as const;
export type ConfChangeType = (typeof ConfChangeType)[keyof typeof ConfChangeType];

/** One single-server membership change (Raft dissertation §4.1); promoting a learner is AddVoter. */
export interface ConfChange {
  readonly type: ConfChangeType;
  readonly nodeId: NodeId;
  /** Opaque to consensus (e.g. the member's peer URL). */
  readonly context?: Uint8Array;
}

export const MessageType = {
  Append: 'app',
  AppendResp: 'app-resp',
  Vote: 'vote',
  VoteResp: 'vote-resp',
  PreVote: 'prevote',
  PreVoteResp: 'prevote-resp',
  Heartbeat: 'heartbeat',
  HeartbeatResp: 'heartbeat-resp',
  Snapshot: 'snap',
  /** Follower-side report that a snapshot send failed / finished (from the driver). */
  SnapStatus: 'snap-status',
  /** Driver-side report that a peer is unreachable. */
  Unreachable: 'unreachable',
  TimeoutNow: 'timeout-now',
  /** A proposal forwarded from a follower to the leader. */
  Propose: 'prop',
  /** A ReadIndex request forwarded from a follower to the leader, and its answer. */
  ReadIndex: 'read-index',
  ReadIndexResp: 'read-index-resp',
  /** A leadership-transfer request forwarded to the leader. */
  TransferLeader: 'transfer-leader',
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/**
 * A peer message. One flat shape (like raftpb.Message) keeps the wire codec simple; fields unused
 * by a type are 0 / empty.
 */
export interface Message {
  readonly type: MessageType;
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
  /** Append: index of the entry before `entries`. Resp: the index acknowledged / rejected. */
  readonly index: number;
  /** Append: term of the entry at `index`. */
  readonly logTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
  readonly reject: boolean;
  /** On reject: the follower's hint (last index, or the first index of the conflicting term). */
  readonly rejectHint: number;
  /** On reject: the term of the follower's entry at `rejectHint` (fast back-off). */
  readonly hintTerm: number;
  readonly snapshot?: Snapshot;
  /** ReadIndex / heartbeat context. */
  readonly context: Uint8Array;
}

export interface ReadState {
  /** The commit index at which the read may be served once applied. */
  readonly index: number;
  /** The context passed to `readIndex`. */
  readonly context: Uint8Array;
}

export const Role = {
  Follower: 'follower',
  PreCandidate: 'pre-candidate',
  Candidate: 'candidate',
  Leader: 'leader',
} as const;
export type Role = (typeof Role)[keyof typeof Role];

export interface SoftState {
  readonly leader: NodeId; // 0 when unknown
  readonly role: Role;
}

export interface Ready {
  /** Changed soft state (not persisted), when it changed. */
  readonly softState?: SoftState;
  /** Changed hard state, when it changed: persist before sending `messages`. */
  readonly hardState?: HardState;
  /** Entries to append to stable storage (may overwrite a suffix), before sending `messages`. */
  readonly entries: readonly Entry[];
  /** A snapshot to install into storage and the state machine. */
  readonly snapshot?: Snapshot;
  /** Messages to send after persisting. (The leader's Append messages may be sent in parallel with its own persist.) */
  readonly messages: readonly Message[];
  /** Entries committed and ready to apply, in order. */
  readonly committed: readonly Entry[];
  readonly readStates: readonly ReadState[];
}

/** The storage seam the core reads its stable log from (hashicorp-style narrow interface). */
export interface LogStorage {
  initialState(): { hardState: HardState; confState: ConfState };
  /** Entries in [lo, hi), at most `maxBytes` total (but at least one entry). */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  term(index: number): number;
  firstIndex(): number;
  lastIndex(): number;
  snapshot(): Snapshot;
}

export interface RaftConfig {
  readonly id: NodeId;
  /** Ticks without hearing from a leader before campaigning; randomized in [e, 2e). */
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly storage: LogStorage;
  /** Returns a float in [0, 1); seeded by the driver. */
  readonly random: () => number;
  /** The index of the last entry already applied (on restart). */
  readonly applied?: number;
  readonly preVote?: boolean; // default true
  readonly checkQuorum?: boolean; // default true
  readonly maxSizePerMsgBytes?: number;
  readonly maxInflightMsgs?: number;
  readonly maxInflightBytes?: number;
  readonly maxUncommittedEntriesBytes?: number;
}
