/**
 * Value types of the KV contract. etcd v3 semantics, binary-safe.
 *
 * Keys and values are bytes (`Uint8Array`); every input also accepts a `string`, encoded as UTF-8.
 * Revisions are `number` (safe up to 2^53). Lease ids are int64 and always `bigint`; `0n` means
 * "no lease".
 */

/** Bytes, or a string that is encoded as UTF-8. */
export type Bytes = Uint8Array | string;

/** A store revision: a non-negative safe integer. */
export type Revision = number;

/** An etcd lease id (int64). `0n` means no lease. */
export type LeaseId = bigint;

/**
 * One key's state at a revision, as etcd's `mvccpb.KeyValue`.
 *
 * The bytes of `key` and `value` are read-only: a backend may hand out views of its own storage
 * (the embedded store returns views into the replicated log entry or snapshot that holds them,
 * shared by every member of an in-process cluster), so writing into them would change the stored
 * data. Copy them (`Uint8Array.prototype.slice`) before modifying.
 */
export interface KeyValue {
  readonly key: Uint8Array;
  /** Revision of the last creation of this key (start of the current generation). */
  readonly createRevision: Revision;
  /** Revision of the last modification of this key. */
  readonly modRevision: Revision;
  /** Number of modifications in the current generation; a delete resets it to 0. */
  readonly version: number;
  /** Empty when the read was keysOnly. */
  readonly value: Uint8Array;
  /** `0n` when the key has no lease. */
  readonly lease: LeaseId;
}

/** Options shared by every async operation: cancellation. */
export interface CallOptions {
  /** Aborting rejects the call with `signal.reason` and releases what it holds. */
  signal?: AbortSignal;
}

/** How to select keys: one key, a range `[key, end)`, a prefix, or everything from `key`. */
export interface KeySelector {
  /**
   * Range end, exclusive. An empty `end` (or none) selects the single key; `"\0"` selects every key
   * `>= key` (etcd's convention).
   */
  end?: Bytes;
  /** Select every key starting with `key`. Exclusive with `end` and `fromKey`. */
  prefix?: boolean;
  /** Select every key `>= key`. Exclusive with `end` and `prefix`. */
  fromKey?: boolean;
}

/** The order of a range's results (etcd's `RangeRequest.SortOrder`). */
export const SortOrder = { None: 'none', Ascend: 'ascend', Descend: 'descend' } as const;
/** One of the {@link SortOrder} values. */
export type SortOrder = (typeof SortOrder)[keyof typeof SortOrder];

/** The field a range's results are sorted by (etcd's `RangeRequest.SortTarget`). */
export const SortTarget = {
  Key: 'key',
  Version: 'version',
  Create: 'create',
  Mod: 'mod',
  Value: 'value',
} as const;
/** One of the {@link SortTarget} values. */
export type SortTarget = (typeof SortTarget)[keyof typeof SortTarget];

/** Options of `kv.range`: which keys, at which revision, how many, in what order (etcd's `RangeRequest`). */
export interface RangeOptions extends KeySelector, CallOptions {
  /** Read at this revision (0 or absent: the current one). Below compaction → `compacted`. */
  revision?: Revision;
  /** At most this many keys (0 or absent: no limit). `count` still reports all matches. */
  limit?: number;
  /** Sort by `target` in `order` (default: by key, ascending). */
  sort?: { target?: SortTarget; order?: SortOrder };
  /** Return keys without values. */
  keysOnly?: boolean;
  /** Return only the count. */
  countOnly?: boolean;
  /** Serve from the local member without a linearizability check (may be stale). */
  serializable?: boolean;
  /** Only keys whose mod revision is at least this. */
  minModRevision?: Revision;
  /** Only keys whose mod revision is at most this. */
  maxModRevision?: Revision;
  /** Only keys whose create revision is at least this. */
  minCreateRevision?: Revision;
  /** Only keys whose create revision is at most this. */
  maxCreateRevision?: Revision;
}

/** Options of `kv.get`: a single key, optionally at a revision or serializable. */
export type GetOptions = Pick<RangeOptions, 'revision' | 'serializable' | 'keysOnly' | 'signal'>;

/** What a range read returned (etcd's `RangeResponse`). */
export interface RangeResult {
  readonly kvs: KeyValue[];
  /** Number of keys in the range (not limited by `limit`). */
  readonly count: number;
  /** Whether `limit` cut off more keys. */
  readonly more: boolean;
  /** The store revision the read was served at (header revision). */
  readonly revision: Revision;
}

/** Options of `kv.put` (etcd's `PutRequest`). */
export interface PutOptions extends CallOptions {
  /** Attach the key to this lease (`0n`: none). */
  lease?: LeaseId;
  /** Return the previous key-value. */
  prevKv?: boolean;
  /** Keep the current value (the key must exist). */
  ignoreValue?: boolean;
  /** Keep the current lease (the key must exist). */
  ignoreLease?: boolean;
}

/** What a put returned (etcd's `PutResponse`). */
export interface PutResult {
  /** The revision the put created. */
  readonly revision: Revision;
  /** The key's previous state, when `prevKv` was asked for and the key existed. */
  readonly prevKv?: KeyValue;
}

/** Options of `kv.delete`: which keys (etcd's `DeleteRangeRequest`). */
export interface DeleteOptions extends KeySelector, CallOptions {
  /** Return the deleted keys' last states in `prevKvs`. */
  prevKv?: boolean;
}

/** What a delete returned (etcd's `DeleteRangeResponse`). */
export interface DeleteResult {
  /** The store revision after the delete (bumped only if a key was deleted). */
  readonly revision: Revision;
  /** Number of keys deleted. */
  readonly deleted: number;
  /** Present (possibly empty) only when `prevKv` was asked for. */
  readonly prevKvs: KeyValue[];
}

// ---------------------------------------------------------------------------------------------
// Transactions

/** The field of a key a txn compare looks at (etcd's `Compare.CompareTarget`). */
export const CompareTarget = {
  Version: 'version',
  Create: 'create',
  Mod: 'mod',
  Value: 'value',
  Lease: 'lease',
} as const;
/** One of the {@link CompareTarget} values. */
export type CompareTarget = (typeof CompareTarget)[keyof typeof CompareTarget];

/** The comparison a txn compare makes (etcd's `Compare.CompareResult`). */
export const CompareResult = { Equal: '=', NotEqual: '!=', Less: '<', Greater: '>' } as const;
/** One of the {@link CompareResult} values. */
export type CompareResult = (typeof CompareResult)[keyof typeof CompareResult];

/**
 * One comparison of a txn. For a range (`end`/`prefix`/`fromKey`) every key in it must satisfy the
 * comparison. A missing key has version, create and mod revision 0 and lease 0n; a VALUE compare on
 * a missing key is false (etcd).
 */
export type Compare = KeySelector & { key: Bytes; result: CompareResult } & (
    | { target: 'version'; value: number }
    | { target: 'create'; value: Revision }
    | { target: 'mod'; value: Revision }
    | { target: 'value'; value: Bytes }
    | { target: 'lease'; value: LeaseId }
  );

/** One operation of a txn branch. */
export type Op =
  | { type: 'get'; key: Bytes; options?: Omit<RangeOptions, 'signal' | 'serializable'> }
  | { type: 'put'; key: Bytes; value: Bytes; options?: Omit<PutOptions, 'signal'> }
  | { type: 'delete'; key: Bytes; options?: Omit<DeleteOptions, 'signal'> }
  | { type: 'txn'; txn: Txn };

/** A transaction: if every `compare` holds, run `success`, else `failure`, atomically at one revision (etcd's `TxnRequest`). */
export interface Txn {
  /** Conditions that must all hold (an empty list holds). */
  compare: Compare[];
  /** Operations run when every compare holds, in order. */
  success: Op[];
  /** Operations run otherwise, in order. */
  failure: Op[];
}

/** The result of one op, tagged like the op. */
export type OpResponse =
  | ({ type: 'get' } & RangeResult)
  | ({ type: 'put' } & PutResult)
  | ({ type: 'delete' } & DeleteResult)
  | ({ type: 'txn' } & TxnResult);

/** What a txn returned (etcd's `TxnResponse`). */
export interface TxnResult {
  /** Whether every compare held (so the `success` branch ran). */
  readonly succeeded: boolean;
  /** Header revision: bumped once iff the txn changed something. */
  readonly revision: Revision;
  /** One result per op of the branch that ran, in order. */
  readonly responses: OpResponse[];
}

// ---------------------------------------------------------------------------------------------
// Watch

/** Event types a watch can leave out (etcd's `WatchCreateRequest.FilterType`). */
export const WatchFilter = { NoPut: 'noput', NoDelete: 'nodelete' } as const;
/** One of the {@link WatchFilter} values. */
export type WatchFilter = (typeof WatchFilter)[keyof typeof WatchFilter];

/** Options of `kv.watch`: which keys, from which revision (etcd's `WatchCreateRequest`). */
export interface WatchOptions extends KeySelector, CallOptions {
  /** First revision to deliver, inclusive (0/absent: the next one after now). */
  startRevision?: Revision;
  /** Deliver each event's previous key state in `prevKv`. */
  prevKv?: boolean;
  /** Event types to leave out. */
  filters?: WatchFilter[];
  /** Ask the server for periodic progress notifications (empty batches with a revision). */
  progressNotify?: boolean;
  /**
   * The most batches buffered for a consumer that is not reading; past it the watch ends with a
   * `watch-overflow` error (default `limits.watchBufferBatchesMax`).
   */
  bufferBatchesMax?: number;
  /**
   * Replayed history (a `startRevision` in the past) arrives in batches of up to this many
   * revisions, each batch's `revision` the last one it covers, as etcd's server sends it (one
   * response of up to 1000 revisions per catch-up round). Default 1: a batch per revision.
   * Conclave's own Raft store honours it; etcd decides for itself.
   */
  replayBatchRevisionsMax?: number;
}

/** One change of one key in a watch batch (etcd's `mvccpb.Event`). */
export interface WatchEvent {
  /** Whether the key was written or deleted. */
  readonly type: 'put' | 'delete';
  /** For a delete: the key with `modRevision` = the delete revision, empty value, version 0. */
  readonly kv: KeyValue;
  /** The key's state before the event, when the watch asked for `prevKv` (and it existed). */
  readonly prevKv?: KeyValue;
}

/** Events of one or more revisions, in order; a revision is never split across batches unless fragmenting. */
export interface WatchBatch {
  readonly events: WatchEvent[];
  /** Header revision of the response (for progress notifications: everything up to it was delivered). */
  readonly revision: Revision;
  /** True for a progress notification (no events). */
  readonly progress?: boolean;
}

/**
 * A live watch: an async iterator of batches. It ends (the iterator returns) after `close()`;
 * it throws `ConclaveError` `compacted` (with `compactRevision`) when the start revision was
 * compacted, and `watch-overflow` when the consumer fell too far behind.
 */
export interface Watch extends AsyncIterable<WatchBatch>, AsyncDisposable {
  /**
   * Resolves once the server has accepted the watch, with the store revision at which it was
   * registered (etcd: the created response's header revision). Every event from `startRevision`
   * follows; a watch without `startRevision` delivers exactly the events after that revision. Rejects
   * if the watch fails or is closed before it is accepted.
   *
   * Latency note (etcd): a watch whose `startRevision` is at or below the server's current revision
   * is served from etcd's "unsynced" group, whose events are caught up only every 100 ms; a watch
   * without `startRevision` is live at once. A waiter that must not miss a change since revision R
   * can open its watch without a start revision and cover (R, ready] with one read (see
   * recipes/internal/wait.ts).
   */
  readonly ready: Promise<Revision>;
  /** Cancels the watch; the iterator then ends. Idempotent. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Leases

/** Options of `lease.grant`. */
export interface LeaseGrantOptions extends CallOptions {
  /** Ask for this id (0n/absent: the server picks). */
  id?: LeaseId;
}

/** A granted lease (etcd's `LeaseGrantResponse`). */
export interface LeaseGrant {
  /** The lease's id. */
  readonly id: LeaseId;
  /** The TTL the server granted, in seconds. */
  readonly ttlSeconds: number;
}

/** The answer to one keep-alive (etcd's `LeaseKeepAliveResponse`). */
export interface LeaseKeepAliveResult {
  /** The lease's id. */
  readonly id: LeaseId;
  /** Remaining TTL after the refresh; 0 (or less) means the lease is unknown or expired: it is lost. */
  readonly ttlSeconds: number;
}

/** A lease's remaining time (etcd's `LeaseTimeToLiveResponse`). */
export interface LeaseTimeToLive {
  /** The lease's id. */
  readonly id: LeaseId;
  /** Remaining seconds; -1 when the lease does not exist (expired or never granted). */
  readonly ttlSeconds: number;
  /** The TTL the lease was granted with, in seconds. */
  readonly grantedTtlSeconds: number;
  /** Keys attached, when asked for with `keys: true`. */
  readonly keys: Uint8Array[];
}

/** The lease operations of a KV client (etcd's `Lease` service). */
export interface LeaseApi {
  /** Grants a lease of `ttlSeconds` (the server may raise it to its minimum TTL). */
  grant(ttlSeconds: number, opts?: LeaseGrantOptions): Promise<LeaseGrant>;
  /** Revoke; attached keys are deleted at one revision. Unknown lease → `lease-not-found`. */
  revoke(id: LeaseId, opts?: CallOptions): Promise<{ revision: Revision }>;
  /** Renews the lease once; a `ttlSeconds` of 0 or less in the answer means it is gone. */
  keepAliveOnce(id: LeaseId, opts?: CallOptions): Promise<LeaseKeepAliveResult>;
  /** The lease's remaining and granted TTL, and its keys with `keys: true`. */
  timeToLive(id: LeaseId, opts?: CallOptions & { keys?: boolean }): Promise<LeaseTimeToLive>;
  /** Every lease the store holds. */
  list(opts?: CallOptions): Promise<LeaseId[]>;
}

// ---------------------------------------------------------------------------------------------
// Maintenance

/** A member's status (etcd's `StatusResponse`). */
export interface StatusResult {
  /** Current store revision. */
  readonly revision: Revision;
  /** The server's version string. */
  readonly version: string;
  /** The answering member's id, when the backend has members. */
  readonly memberId?: bigint;
  /** The member id of the current Raft leader, when known. */
  readonly leader?: bigint;
  /** The member's current Raft term. */
  readonly raftTerm?: number;
  /** The member's last Raft log index. */
  readonly raftIndex?: number;
  /** The size of the member's backend storage in bytes. */
  readonly dbSizeBytes?: number;
}

/** Options of `kv.compact`. */
export interface CompactOptions extends CallOptions {
  /** Wait until the compaction is applied to the backend (etcd's `physical`). */
  physical?: boolean;
}
