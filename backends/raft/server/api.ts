/**
 * The seam between one `conclave serve` member and the client API served on its client URLs.
 *
 * The member side (the Raft node, its durable storage, the peer transport, identity) implements
 * `MemberBackend`; the API side (gRPC services and the JSON gateway) depends only on this file and
 * on the KV contract, so it can be tested over an in-process cluster as well as a real process.
 *
 * Contracts:
 * - `kv` serves every request on this member: writes are proposed (a follower's core forwards them
 *   to the leader) and resolve once applied here; linearizable reads use ReadIndex; `serializable`
 *   reads are local; lease keep-alives, time-to-live and lists are answered by the leader (a
 *   follower forwards them). Failures are `ConclaveError`s, which the API side maps to etcd's exact
 *   gRPC codes and messages.
 * - `info` is read on every response (headers), so each method is O(1) and never throws.
 * - IDs are etcd's uint64 member and cluster IDs (`bigint`), never the Raft core's small node ids.
 */
import type { KV } from '../../../src/kv.js';
import type { AuthChange, AuthStore } from '../store/auth-store.js';
import type { JwtTokens } from './jwt.js';

export interface MemberDescription {
  /** etcd member ID (uint64). */
  readonly id: bigint;
  /** `--name`; empty while an added member has not started (etcdctl prints "unstarted"). */
  readonly name: string;
  readonly peerUrls: readonly string[];
  readonly clientUrls: readonly string[];
  readonly isLearner: boolean;
}

export interface MemberInfo {
  readonly clusterId: bigint;
  readonly memberId: bigint;
  /** Version string reported by Maintenance.Status and /version (etcd's `version` field). */
  readonly version: string;
  /**
   * This member's current store revision (its applied state). The header revision of responses
   * that carry no revision of their own (lease calls, Status, watch progress), as etcd's `KV().Rev()`.
   */
  revision(): number;
  /**
   * The revision this member's store was compacted at, 0 when it never was (Compact at revision 0
   * is accepted on such a store, as etcd's). Absent: read as 0.
   */
  compactRevision?(): number;
  /** Current Raft term as this member knows it. */
  raftTerm(): number;
  /** The leader's member ID as this member knows it, `0n` when it knows none. */
  leaderId(): bigint;
  /** Last index of this member's Raft log. */
  raftIndex(): number;
  /** Highest index applied to this member's store. */
  raftAppliedIndex(): number;
  /** Size of the store as counted against `--quota-backend-bytes` (docs/server.md says which measure). */
  dbSizeBytes(): number;
  /** The cluster's members, as Cluster.MemberList reports them. */
  members(): readonly MemberDescription[];
  /**
   * Whether this member is a learner now (its applied configuration): it then serves only what
   * etcd 3.4 serves on a learner (learner.ts). Absent: never a learner. O(1): read per call.
   */
  isLearner?(): boolean;
  /** Raised alarms (Maintenance.Alarm GET, Status errors); absent means none. */
  alarms?(): readonly MemberAlarm[];
}

/** An alarm raised on a member (etcd's AlarmMember): `nospace` when the quota is exceeded. */
export interface MemberAlarm {
  readonly memberId: bigint;
  readonly alarm: 'nospace' | 'corrupt';
}

/** Request limits enforced once, in the member's propose path (etcd's flags and defaults). */
export interface RequestLimits {
  /** `--max-request-bytes`; etcd's default is 1.5 MiB. */
  readonly maxRequestBytes: number;
  /** `--max-txn-ops`; etcd's default is 128. */
  readonly maxTxnOps: number;
}

/** A membership change of etcd's Cluster service. */
export type MemberChange =
  | { readonly op: 'add'; readonly peerUrls: readonly string[]; readonly isLearner: boolean }
  | { readonly op: 'remove'; readonly id: bigint }
  | { readonly op: 'promote'; readonly id: bigint }
  | { readonly op: 'update'; readonly id: bigint; readonly peerUrls: readonly string[] };

/** The result of a change: the member added (MemberAdd) and the members after it. */
export interface MemberChangeResult {
  readonly member?: MemberDescription;
  readonly members: readonly MemberDescription[];
  /** The log index the change applied at. */
  readonly index: number;
}

/**
 * Membership changes (server/cluster.ts serves them). Refusals are `ConclaveError`s whose message
 * is etcd's text ("etcdserver: member not found", …), which the API side answers with etcd's code.
 */
export interface ClusterAdmin {
  memberChange(c: MemberChange): Promise<MemberChangeResult>;
}

/** A state hash of the store (Maintenance.HashKV): equal on every member at the same revision. */
export interface KvHash {
  readonly hash: number;
  readonly compactRevision: number;
  /** The revision hashed. */
  readonly revision: number;
}

/**
 * Maintenance operations (server/maintenance.ts serves them). Failures are `ConclaveError`s whose
 * message is etcd's text where etcd has one.
 */
export interface MaintenanceAdmin {
  /** A consistent snapshot of the store now: the body of a snapshot file (maintenance.ts frames it). */
  snapshot(): Promise<{ data: Uint8Array; index: number; term: number; revision: number }>;
  /** etcd's Defragment: what it does for this store is documented in docs/operations.md. */
  defragment(): Promise<void>;
  /** The hash of every key's records at `revision` (0: the current one). */
  hashKv(revision: number): Promise<KvHash>;
  /** Hands leadership to `target` (this member must lead). */
  moveLeader(target: bigint): Promise<void>;
  /** Every member's raised alarms (replicated: any member lists them all). */
  alarmList(): Promise<readonly MemberAlarm[]>;
  /**
   * etcd's AlarmRequest ACTIVATE/DEACTIVATE of one member's alarm, applied on every member;
   * resolves with the alarm (undefined: a deactivate of an alarm that was not raised).
   */
  alarm(
    action: 'activate' | 'deactivate',
    memberId: bigint,
    alarm: MemberAlarm['alarm'],
  ): Promise<MemberAlarm | undefined>;
}

/** What a member offers the Auth service: its live auth store and a way to propose changes. */
export interface MemberAuth {
  readonly store: AuthStore;
  propose(c: AuthChange): Promise<void>;
  /** `--client-cert-auth`: a verified certificate's CN names the user when no token is sent. */
  readonly clientCertAuth: boolean;
  /** `--auth-token jwt,…`: stateless signed tokens (server/jwt.ts) instead of simple ones. */
  readonly jwt?: JwtTokens;
}

export interface MemberBackend {
  readonly kv: KV;
  readonly info: MemberInfo;
  readonly limits: RequestLimits;
  /** Absent: the Cluster service answers membership changes UNIMPLEMENTED. */
  readonly cluster?: ClusterAdmin;
  /** The auth store and its changes (server/auth.ts); absent: the Auth service is UNIMPLEMENTED. */
  readonly auth?: MemberAuth;
  /** Absent: Snapshot, Defragment, Hash, HashKV and MoveLeader are answered UNIMPLEMENTED. */
  readonly maintenance?: MaintenanceAdmin;
}
