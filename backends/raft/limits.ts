/**
 * Request limits of the Raft store, etcd's `--max-request-bytes` and `--max-txn-ops`, enforced once,
 * where a member proposes a request (node/node.ts `propose`), so the embedded store and a
 * `conclave serve` member refuse exactly what etcd refuses. A refused request never enters the
 * log: nothing is written, on any member.
 *
 * What is measured, as etcd does it:
 * - bytes: etcd refuses a proposal whose marshalled raft request is larger than
 *   `--max-request-bytes` (etcdserver/v3_server.go, `processInternalRaftRequestOnce`, "etcdserver:
 *   request is too large"). Here it is the encoded command (node/commands.ts) that would enter the
 *   log: the key, value and options plus a few dozen bytes of framing, as etcd's.
 * - ops: etcd's `checkTxnRequest` (etcdserver/api/v3rpc/key.go, "etcdserver: too many operations in
 *   txn request"): the longest of a txn's compare, success and failure lists may hold at most
 *   `--max-txn-ops` entries, and a nested txn gets what its parent leaves (the max minus the parent's
 *   longest list).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { limits } from '../../src/limits.js';
import type { Txn } from '../../src/types.js';
import { type Command, encodeCommand } from './node/commands.js';
import type { RequestLimits } from './server/api.js';

export type { RequestLimits } from './server/api.js';

/** etcd's defaults: `--max-request-bytes` 1.5 MiB, `--max-txn-ops` 128. */
export const requestLimitsDefault: RequestLimits = Object.freeze({
  maxRequestBytes: limits.requestBytesMax,
  maxTxnOps: limits.txnOpsMax,
});

/** Largest `maxRequestBytes` accepted (etcd warns above 10 MiB; a Raft entry this size is already slow). */
export const maxRequestBytesMax = 64 * 1024 * 1024;

/** The limits `o` asks for, defaults filled in; `invalid-argument` unless each is a positive integer. */
export function resolveRequestLimits(o: Partial<RequestLimits> = {}): RequestLimits {
  const check = (name: keyof RequestLimits, v: number | undefined, max: number): number => {
    if (v === undefined) return requestLimitsDefault[name];
    if (!Number.isSafeInteger(v) || v < 1 || v > max)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `${name} must be an integer from 1 to ${max}, got ${v}`,
        {
          details: { argument: name },
        },
      );
    return v;
  };
  return {
    maxRequestBytes: check('maxRequestBytes', o.maxRequestBytes, maxRequestBytesMax),
    maxTxnOps: check('maxTxnOps', o.maxTxnOps, Number.MAX_SAFE_INTEGER),
  };
}

/** Throws `too-many-ops` when a list of `t` (or of a nested txn) is longer than etcd allows. */
export function checkTxnOps(t: Txn, maxTxnOps: number): void {
  const used = Math.max((t.compare ?? []).length, (t.success ?? []).length, (t.failure ?? []).length);
  if (used > maxTxnOps)
    throw new ConclaveError(
      ErrorCode.TooManyOps,
      `etcdserver: too many operations in txn request (a txn list holds ${used}, more than --max-txn-ops ${maxTxnOps}); split the txn`,
      { details: { maxTxnOps } },
    );
  for (const op of [...(t.success ?? []), ...(t.failure ?? [])]) {
    if (op.type === 'txn') checkTxnOps(op.txn, maxTxnOps - used);
  }
}

/**
 * Encodes `c` for the log after checking it against `l`: `too-many-ops` for a txn with too many
 * ops, `request-too-large` for a command larger than `l.maxRequestBytes`. Neither is retryable:
 * the same request is refused again.
 */
export function encodeRequest(c: Command, l: RequestLimits): Uint8Array {
  if (c.op === 'txn') checkTxnOps(c.txn, l.maxTxnOps);
  const data = encodeCommand(c);
  if (data.length > l.maxRequestBytes)
    throw new ConclaveError(
      ErrorCode.RequestTooLarge,
      `etcdserver: request is too large (${data.length} bytes encoded, more than --max-request-bytes ${l.maxRequestBytes}); store large values elsewhere and keep a reference in the store, or split the write`,
      { details: { requestBytes: data.length, maxRequestBytes: l.maxRequestBytes } },
    );
  return data;
}
