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
} from './types.js';

/**
 * The KV contract every backend implements and every recipe is written against.
 *
 * Semantics are etcd v3.4's, as pinned by the conformance suite (`test/conformance`):
 * - the store starts at revision 1; each write (put, delete that deleted something, txn that
 *   changed something) bumps the revision exactly once;
 * - a delete resets `version` to 0; the next put starts a new generation;
 * - reads below the compacted revision fail with `compacted`, above the current one with
 *   `future-revision`;
 * - every failure is a `ConclaveError` (see errors.ts); argument mistakes are `TypeError` or
 *   `invalid-argument`.
 */
export interface KV extends AsyncDisposable {
  /** The key's current value (or at `revision`), or undefined when absent. */
  get(key: Bytes, opts?: GetOptions): Promise<KeyValue | undefined>;
  /** Reads a key, a range, a prefix or every key from `key` (etcd's `Range`). */
  range(key: Bytes, opts?: RangeOptions): Promise<RangeResult>;
  /** Writes `value` under `key`, optionally bound to a lease (etcd's `Put`). */
  put(key: Bytes, value: Bytes, opts?: PutOptions): Promise<PutResult>;
  /** Deletes a key, a range or a prefix (etcd's `DeleteRange`). */
  delete(key: Bytes, opts?: DeleteOptions): Promise<DeleteResult>;
  /** Runs a transaction atomically at one revision (etcd's `Txn`). */
  txn(txn: Txn, opts?: CallOptions): Promise<TxnResult>;
  /** Starts a watch; events arrive through the returned async iterator. */
  watch(key: Bytes, opts?: WatchOptions): Watch;
  /** The lease operations: grant, revoke, keep-alive, time-to-live, list. */
  readonly lease: LeaseApi;
  /** Compact history up to `revision`: reads below it fail afterwards. */
  compact(revision: number, opts?: CompactOptions): Promise<void>;
  /** The answering member's status: revision, version, leader, Raft term and index. */
  status(opts?: CallOptions): Promise<StatusResult>;
  /** Releases connections, watches and timers. Idempotent. */
  close(): Promise<void>;
  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}
