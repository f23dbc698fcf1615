/**
 * Named upper bounds on everything fed by outside input (every queue, buffer, retry
 * and map has a bound; names end in `Max`). Backends and recipes import these rather than
 * inventing literals.
 */
export const limits = {
  /** Batches buffered per watch for a consumer that is not reading, before `watch-overflow`. */
  watchBufferBatchesMax: 1024,
  /** Watches multiplexed on one client stream. */
  watchesPerStreamMax: 10_000,
  /** Ops per txn (etcd's default --max-txn-ops). */
  txnOpsMax: 128,
  /** Request size the etcd server accepts by default (--max-request-bytes, 1.5 MiB). */
  requestBytesMax: 1.5 * 1024 * 1024,
  /** Attempts for a call that is safe to retry (reads, or writes known not to have been applied). */
  retryAttemptsMax: 5,
  /** Consecutive failed attempts to re-open a broken watch stream before its watches fail `unavailable`. */
  watchReconnectAttemptsMax: 60,
  /** Client calls in flight on one connection before callers queue. */
  inFlightCallsMax: 4096,
  /** Keep-alive attempts a Session makes inside one TTL before declaring the lease lost. */
  keepAliveAttemptsMax: 16,
  /** Longest lease TTL accepted (etcd's MaxLeaseTTL is 9,000,000,000 s; we bound it to a sane value). */
  leaseTtlSecondsMax: 9_000_000_000,
} as const;
