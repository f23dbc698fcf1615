/**
 * Argument validation shared by every backend, so each public call rejects bad input with a
 * message naming the argument: wrong types and values out of range are both
 * `ConclaveError('invalid-argument')`.
 */
import { ConclaveError, ErrorCode, invalidArgument } from './errors.js';
import { describe, toBytes } from './keys.js';
import { limits } from './limits.js';
import type {
  Bytes,
  CallOptions,
  Compare,
  DeleteOptions,
  GetOptions,
  LeaseGrantOptions,
  Op,
  PutOptions,
  RangeOptions,
  Txn,
  WatchOptions,
} from './types.js';

export function checkBytes(name: string, v: unknown): Uint8Array {
  if (typeof v !== 'string' && !(v instanceof Uint8Array)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be a Uint8Array or string, got ${describe(v)}`,
    );
  }
  return toBytes(v as Bytes);
}

/** A key that must not be empty (etcd: "key is not provided"). */
export function checkKey(name: string, v: unknown): Uint8Array {
  const b = checkBytes(name, v);
  if (b.length === 0) invalidArgument(name, 'must not be empty (etcd: key is not provided)');
  return b;
}

export function checkRevision(name: string, v: unknown, opts: { allowZero?: boolean } = {}): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be a safe integer revision, got ${typeof v === 'number' ? v : describe(v)}`,
    );
  }
  if (v < 0 || (v === 0 && opts.allowZero === false))
    invalidArgument(name, `must be ${opts.allowZero === false ? '> 0' : '>= 0'}, got ${v}`);
  return v;
}

/** The key and selector options of a range or delete request (a single key must be non-empty). */
export function checkRangeArgs(key: Bytes, o: RangeOptions | DeleteOptions): void {
  checkBytes('key', key);
  if (!o.prefix && !o.fromKey && o.end === undefined) checkKey('key', key);
  const r = o as RangeOptions;
  if (r.limit !== undefined) checkNonNegativeInt('limit', r.limit);
  if (r.revision !== undefined) checkRevision('revision', r.revision);
  for (const f of ['minModRevision', 'maxModRevision', 'minCreateRevision', 'maxCreateRevision'] as const) {
    if (r[f] !== undefined) checkRevision(f, r[f]);
  }
}

export function checkNonNegativeInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be an integer, got ${typeof v === 'number' ? v : describe(v)}`,
    );
  }
  if (v < 0) invalidArgument(name, `must be >= 0, got ${v}`);
  return v;
}

export function checkLeaseId(name: string, v: unknown, opts: { allowZero?: boolean } = {}): bigint {
  if (typeof v !== 'bigint')
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be a bigint lease id, got ${describe(v)}`,
    );
  if (v < 0n || v > 0x7fff_ffff_ffff_ffffn) invalidArgument(name, `must be a non-negative int64, got ${v}`);
  if (v === 0n && opts.allowZero === false) invalidArgument(name, 'must not be 0n (0n means "no lease")');
  return v;
}

export function checkTtl(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be an integer number of seconds, got ${typeof v === 'number' ? v : describe(v)}`,
    );
  }
  if (v <= 0) invalidArgument(name, `must be > 0 seconds, got ${v}`);
  if (v > limits.leaseTtlSecondsMax)
    invalidArgument(name, `must be <= ${limits.leaseTtlSecondsMax} seconds, got ${v}`);
  return v;
}

export function checkSignal(opts: CallOptions | undefined): void {
  const s = opts?.signal;
  if (s !== undefined && !(s instanceof AbortSignal)) {
    throw new ConclaveError(ErrorCode.InvalidArgument, `signal must be an AbortSignal, got ${describe(s)}`);
  }
}

export function checkOptionsObject(name: string, v: unknown): void {
  if (v !== undefined && (typeof v !== 'object' || v === null)) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${name} must be an options object, got ${describe(v)}`,
    );
  }
}

const compareTargets = new Set(['version', 'create', 'mod', 'value', 'lease']);
const compareResults = new Set(['=', '!=', '<', '>']);

export function checkCompare(c: Compare, path: string): void {
  if (typeof c !== 'object' || c === null)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${path} must be a Compare object`);
  checkBytes(`${path}.key`, c.key);
  if (!compareTargets.has(c.target))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${path}.target must be one of ${[...compareTargets].join(', ')}, got ${String(c.target)}`,
    );
  if (!compareResults.has(c.result))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${path}.result must be one of = != < >, got ${String(c.result)}`,
    );
  switch (c.target) {
    case 'value':
      checkBytes(`${path}.value`, c.value);
      break;
    case 'lease':
      checkLeaseId(`${path}.value`, c.value);
      break;
    case 'version':
      checkNonNegativeInt(`${path}.value`, c.value);
      break;
    default:
      checkRevision(`${path}.value`, c.value);
  }
}

/**
 * etcd refuses a put that both keeps the current value and gives one (`ignoreValue` with a
 * non-empty value: "value is provided"), or keeps the current lease and names one (`ignoreLease`
 * with a non-zero lease: "lease is provided"). Checked before sending, so every backend reports it
 * the same way.
 */
export function checkPutOptions(
  path: string,
  value: Uint8Array,
  o: { ignoreValue?: boolean | undefined; ignoreLease?: boolean | undefined; lease?: bigint | undefined },
): void {
  if (o.ignoreValue && value.length > 0)
    invalidArgument(
      `${path}.value`,
      `ignoreValue keeps the current value, so the value must be empty (got ${value.length} bytes; etcd: value is provided)`,
    );
  if (o.ignoreLease && o.lease !== undefined && o.lease !== 0n)
    invalidArgument(
      `${path}.options.lease`,
      `ignoreLease keeps the current lease, so no lease may be given (got ${o.lease}; etcd: lease is provided)`,
    );
}

export function checkOp(op: Op, path: string): void {
  if (typeof op !== 'object' || op === null)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${path} must be an Op object`);
  switch (op.type) {
    case 'get':
    case 'delete':
      checkBytes(`${path}.key`, op.key);
      return;
    case 'put':
      checkKey(`${path}.key`, op.key);
      if (op.options?.lease !== undefined) checkLeaseId(`${path}.options.lease`, op.options.lease);
      checkPutOptions(path, checkBytes(`${path}.value`, op.value), op.options ?? {});
      return;
    case 'txn':
      checkTxn(op.txn, `${path}.txn`);
      return;
    default:
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `${path}.type must be get, put, delete or txn, got ${String((op as { type: unknown }).type)}`,
      );
  }
}

export function checkTxn(t: Txn, path = 'txn'): void {
  if (typeof t !== 'object' || t === null)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${path} must be { compare, success, failure }`);
  for (const f of ['compare', 'success', 'failure'] as const) {
    if (t[f] !== undefined && !Array.isArray(t[f]))
      throw new ConclaveError(ErrorCode.InvalidArgument, `${path}.${f} must be an array`);
  }
  for (const [i, c] of (t.compare ?? []).entries()) checkCompare(c, `${path}.compare[${i}]`);
  for (const [i, o] of (t.success ?? []).entries()) checkOp(o, `${path}.success[${i}]`);
  for (const [i, o] of (t.failure ?? []).entries()) checkOp(o, `${path}.failure[${i}]`);
}

/**
 * The argument checks of every KV call, in one place. Each backend (the etcd client, the embedded
 * store, a served member, the local store) calls the one for its method after its own "is this
 * client open" check and before doing anything else, so the same bad input is refused with the
 * same `invalid-argument` message on every backend. Each returns what it normalized.
 */
export const checkArgs = {
  /** Every call's options: absent or an object, with `signal` absent or an AbortSignal. */
  options(o: unknown): void {
    checkOptionsObject('options', o);
    checkSignal(o as CallOptions | undefined);
  },
  /** A single key (non-empty) and an optional revision. */
  get(key: unknown, o: GetOptions): Uint8Array {
    const k = checkKey('key', key);
    if (o.revision !== undefined) checkRevision('revision', o.revision);
    return k;
  },
  /** A key or selector (`end`, `prefix`, `fromKey`), a limit and revision bounds. */
  range(key: Bytes, o: RangeOptions): Uint8Array {
    checkRangeArgs(key, o);
    return toBytes(key);
  },
  /** A non-empty key, a value, an optional lease, and options etcd refuses together. */
  put(key: unknown, value: unknown, o: PutOptions): { key: Uint8Array; value: Uint8Array } {
    const k = checkKey('key', key);
    const v = checkBytes('value', value);
    if (o.lease !== undefined) checkLeaseId('lease', o.lease);
    checkPutOptions('put', v, o);
    return { key: k, value: v };
  },
  /** As `range` (a single key must be non-empty). */
  delete(key: Bytes, o: DeleteOptions): Uint8Array {
    checkRangeArgs(key, o);
    return toBytes(key);
  },
  /** Compares and both branches, recursively. */
  txn(t: Txn): void {
    checkTxn(t);
  },
  /** A key (may be empty with a selector) and an optional start revision. */
  watch(key: unknown, o: WatchOptions): Uint8Array {
    const k = checkBytes('key', key);
    if (o.startRevision !== undefined) checkRevision('startRevision', o.startRevision);
    return k;
  },
  /** A revision > 0. */
  compact(revision: unknown): number {
    return checkRevision('revision', revision, { allowZero: false });
  },
  /** A TTL in range and an optional explicit id; returns the id, 0n when the server is to choose. */
  leaseGrant(ttlSeconds: unknown, o: LeaseGrantOptions): bigint {
    checkTtl('ttlSeconds', ttlSeconds);
    return o.id === undefined ? 0n : checkLeaseId('id', o.id);
  },
  /** A lease id that names a lease (not 0n) for revoke, keep-alive and time-to-live. */
  leaseId(id: unknown): bigint {
    return checkLeaseId('id', id, { allowZero: false });
  },
} as const;
