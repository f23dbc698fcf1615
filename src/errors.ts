/**
 * Conclave's one error type (every code, its causes and what to do: docs/errors.md). Backends
 * translate native errors (gRPC status codes, Raft refusals) into these codes at their edge;
 * callers branch on `code`, never on messages.
 */

export const ErrorCode = {
  /** No member could be reached, or the member has no leader. Retry. */
  Unavailable: 'unavailable',
  /** The requested revision was compacted; `compactRevision` says the oldest readable one. */
  Compacted: 'compacted',
  /** The requested revision is newer than the store's. */
  FutureRevision: 'future-revision',
  LeaseNotFound: 'lease-not-found',
  /** The Session's lease expired or could not be kept alive. */
  SessionLost: 'session-lost',
  /** The member is not the leader (raft backend). Retry, possibly elsewhere. */
  NotLeader: 'not-leader',
  /** The caller's AbortSignal fired. */
  Aborted: 'aborted',
  /** The call's deadline passed. */
  DeadlineExceeded: 'deadline-exceeded',
  InvalidArgument: 'invalid-argument',
  /** A bound was hit (uncommitted bytes, request rate); back off and retry. */
  TooManyRequests: 'too-many-requests',
  /** Request or value larger than the server (or the client's send limit) accepts. Never retried. */
  RequestTooLarge: 'request-too-large',
  /** A response larger than the client accepts (etcd client: `maxReceiveBytes`); read less at a time. */
  ResponseTooLarge: 'response-too-large',
  /**
   * The TLS handshake failed: unknown CA, expired or not yet valid certificate, wrong host name,
   * client certificate missing or refused, or a peer that does not speak TLS. A configuration (or
   * an attack) rather than a passing fault: not retryable.
   */
  TlsFailure: 'tls-failure',
  /** A txn repeated a key among its puts/deletes, or had too many ops. */
  DuplicateKey: 'duplicate-key',
  TooManyOps: 'too-many-ops',
  /** A watcher fell further behind than its bound allowed. */
  WatchOverflow: 'watch-overflow',
  /** The request may or may not have been applied (connection lost mid-call); not retried blindly. */
  Indeterminate: 'indeterminate',
  PermissionDenied: 'permission-denied',
  Unauthenticated: 'unauthenticated',
  /** The client or server was closed. */
  Closed: 'closed',
  /** Stored data failed a checksum or could not be decoded. */
  Corrupt: 'corrupt',
  /**
   * A data directory is held by another process (or another member of this one): one directory
   * holds one member. Stop the other owner, or use another directory. Not retryable.
   */
  Locked: 'locked',
  /** A recipe-level conflict (e.g. a semaphore's stored permit count differs from the caller's). */
  Conflict: 'conflict',
  /** An STM/counter retry bound ran out. */
  RetriesExhausted: 'retries-exhausted',
  /** Anything the backend did not classify; `cause` holds the original. */
  Internal: 'internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const retryableCodes: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.Unavailable,
  ErrorCode.NotLeader,
  ErrorCode.TooManyRequests,
  ErrorCode.DeadlineExceeded,
]);

/** What a `ConclaveError` carries besides its code and message. */
export interface ConclaveErrorOptions {
  /** The error that caused this one. */
  cause?: unknown;
  /** Override the default retryability of the code. */
  retryable?: boolean;
  /** For `compacted`: the store's compact revision. */
  compactRevision?: number;
  /** Free-form structured details (e.g. the argument name). */
  details?: Record<string, unknown>;
}

/**
 * The one error type of every public function: a stable `code` (see `ErrorCode` and
 * docs/errors.md), a message that says what was wrong and what to do, and whether repeating the
 * call may succeed (`retryable`).
 */
export class ConclaveError extends Error {
  override readonly name = 'ConclaveError';
  /** What went wrong, as a stable code to branch on. */
  readonly code: ErrorCode;
  /** Whether the same call may succeed if simply retried (it was certainly not applied). */
  readonly retryable: boolean;
  /** For `compacted`: the store's compact revision. */
  readonly compactRevision?: number;
  /** Structured details (e.g. the argument name, the key). */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: ConclaveErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? retryableCodes.has(code);
    if (opts.compactRevision !== undefined) this.compactRevision = opts.compactRevision;
    if (opts.details !== undefined) this.details = opts.details;
  }

  /** Whether `err` is a `ConclaveError` (with `code`, when given). */
  static is(err: unknown, code?: ErrorCode): err is ConclaveError {
    return err instanceof ConclaveError && (code === undefined || err.code === code);
  }
}

/** Throws `invalid-argument` naming the argument. */
export function invalidArgument(argument: string, problem: string): never {
  throw new ConclaveError(ErrorCode.InvalidArgument, `${argument}: ${problem}`, { details: { argument } });
}

/** The rejection value for an aborted signal: its reason, or an `aborted` ConclaveError. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new ConclaveError(ErrorCode.Aborted, 'the operation was aborted');
}

/** Throws the signal's reason if it is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortReason(signal);
}
