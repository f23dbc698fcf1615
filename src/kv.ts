import type * as T from './types.js';

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
  get(key: T.Bytes, opts?: T.GetOptions): Promise<T.KeyValue | undefined>;
  /** Reads a key, a range, a prefix or every key from `key` (etcd's `Range`). */
  range(key: T.Bytes, opts?: T.RangeOptions): Promise<T.RangeResult>;
  /** Writes `value` under `key`, optionally bound to a lease (etcd's `Put`). */
  put(key: T.Bytes, value: T.Bytes, opts?: T.PutOptions): Promise<T.PutResult>;
  /** Deletes a key, a range or a prefix (etcd's `DeleteRange`). */
  delete(key: T.Bytes, opts?: T.DeleteOptions): Promise<T.DeleteResult>;
  /** Runs a transaction atomically at one revision (etcd's `Txn`). */
  txn(txn: T.Txn, opts?: T.CallOptions): Promise<T.TxnResult>;
  /** Starts a watch; events arrive through the returned async iterator. */
  watch(key: T.Bytes, opts?: T.WatchOptions): T.Watch;
  /** The lease operations: grant, revoke, keep-alive, time-to-live, list. */
  readonly lease: T.LeaseApi;
  /** Compact history up to `revision`: reads below it fail afterwards. */
  compact(revision: number, opts?: T.CompactOptions): Promise<void>;
  /** The answering member's status: revision, version, leader, Raft term and index. */
  status(opts?: T.CallOptions): Promise<T.StatusResult>;
  /** Releases connections, watches and timers. Idempotent. */
  close(): Promise<void>;
  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}
