/**
 * `setConfig`: writes a whole configuration under a prefix in one txn (puts the keys whose bytes
 * change, deletes the keys no longer present), optionally guarded by what a `ConfigWatcher` last
 * saw and checked with the watchers' schema first. Layout: config.ts.
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import { Err, Ok, type Result } from 'ts-results-es';
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { bytesEqual, prefixEnd, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import { limits } from '../src/limits.js';
import type { Bytes, CallOptions, Compare, KeyValue, Op } from '../src/types.js';
import {
  type ConfigDecoder,
  checkPrefix,
  configKeysMax,
  jsonDecode,
  readSnapshot,
} from './internal/config-common.js';
import type { PrefixSnapshot } from './internal/prefix-read.js';

/** Attempts of an unguarded `setConfig` whose txn lost a race with another writer. */
export const setConfigAttemptsMax = limits.retryAttemptsMax;

/** Encodes one field for `setConfig`. */
export type ConfigEncoder = (value: unknown, key: string) => Bytes;

const jsonEncode: ConfigEncoder = (value) => {
  const s = JSON.stringify(value);
  if (s === undefined)
    throw new ConclaveError(ErrorCode.InvalidArgument, 'setConfig: a value is not JSON-serialisable');
  return s;
};

export interface SetConfigOptions extends CallOptions {
  /**
   * Write only if nothing under the prefix changed after this revision (as read by a watcher's
   * `revision`); otherwise `Err(ConfigConflict)`.
   */
  readonly ifRevision?: number;
  /**
   * The keys (relative to the prefix) present at `ifRevision` (a watcher's `keys`). Lets the guard
   * detect deletions even when `ifRevision` has been compacted; without it, a compacted
   * `ifRevision` is reported as a conflict (re-read and retry).
   */
  readonly ifKeys?: readonly string[];
  /** Default: JSON. */
  readonly encode?: ConfigEncoder;
  /**
   * The watchers' schema: the config is encoded, decoded (with `decode`, default JSON) and
   * validated as a watcher would, and refused as `Err` with reason `invalid` before anything is
   * written if it fails.
   */
  readonly schema?: StandardSchemaV1;
  /** The watchers' decoder, for `schema` (default: JSON). */
  readonly decode?: ConfigDecoder;
}

/** `setConfig` with a `schema` refused the config: nothing was written. */
export interface ConfigInvalid {
  readonly reason: 'invalid';
  readonly issues: readonly StandardSchemaV1.Issue[];
}

/** What `setConfig` wrote: the txn's revision and the keys put and deleted. */
export interface ConfigWritten {
  /** The txn's revision (the read's, when nothing needed writing). */
  readonly revision: number;
  readonly put: readonly string[];
  readonly deleted: readonly string[];
}

/** A guarded `setConfig` found the prefix changed since `ifRevision`: nothing was written. */
export interface ConfigConflict {
  readonly ifRevision: number;
  /** The store revision at which the conflict was seen. */
  readonly revision: number;
  /** Keys known to have changed since `ifRevision` (may be empty when only the txn's guard failed). */
  readonly changedKeys: readonly string[];
  readonly reason: 'changed' | 'compacted';
}

/**
 * Writes `config` (a plain object: field → value; `undefined` fields are absent) as the whole
 * content of `prefix` in one txn: puts the keys whose bytes change and deletes keys no longer
 * present. With `ifRevision`, fails as `Err(ConfigConflict)` if anything under the prefix changed
 * after it. Unguarded, a txn that races another writer is retried (`limits.config.setAttemptsMax`), then
 * fails `retries-exhausted`. More than 128 puts+deletes, or more than 128 guarded keys, fails
 * `too-many-ops` (etcd's default --max-txn-ops) before anything is written.
 */
export function setConfig(
  kv: KV,
  prefix: string,
  config: Readonly<Record<string, unknown>>,
  opts: SetConfigOptions & { readonly schema: StandardSchemaV1 },
): Promise<Result<ConfigWritten, ConfigConflict | ConfigInvalid>>;
export function setConfig(
  kv: KV,
  prefix: string,
  config: Readonly<Record<string, unknown>>,
  opts?: SetConfigOptions,
): Promise<Result<ConfigWritten, ConfigConflict>>;
export async function setConfig(
  kv: KV,
  prefix: string,
  config: Readonly<Record<string, unknown>>,
  opts: SetConfigOptions = {},
): Promise<Result<ConfigWritten, ConfigConflict | ConfigInvalid>> {
  checkPrefix('setConfig', prefix);
  if (typeof config !== 'object' || config === null || Array.isArray(config))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'setConfig: config must be a plain object (field → value)',
    );
  const { ifRevision, signal } = opts;
  if (ifRevision !== undefined && (!Number.isSafeInteger(ifRevision) || ifRevision < 1))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'setConfig: ifRevision must be a positive integer revision',
    );
  const wanted = encodeConfig(config, opts.encode ?? jsonEncode);
  if (opts.schema !== undefined) {
    const issues = await checkConfig(wanted, opts.schema, opts.decode ?? jsonDecode);
    if (issues.length > 0) return Err({ reason: 'invalid', issues });
  }
  for (let attempt = 1; attempt <= setConfigAttemptsMax; attempt++) {
    signal?.throwIfAborted();
    const snap = await readSnapshot(kv, prefix, signal);
    const plan = planWrite(prefix, snap, wanted, ifRevision);
    if (ifRevision !== undefined) {
      const conflict = await checkUnchanged(kv, prefix, snap, ifRevision, opts.ifKeys, signal);
      if (conflict) return Err(conflict);
    }
    if (plan.ops.length === 0) return Ok({ revision: snap.revision, put: [], deleted: [] });
    const t = await kv.txn({ compare: plan.compare, success: plan.ops, failure: [] }, { signal });
    if (t.succeeded) return Ok({ revision: t.revision, put: plan.put, deleted: plan.deleted });
    if (ifRevision !== undefined)
      return Err({ ifRevision, revision: t.revision, changedKeys: [], reason: 'changed' });
  }
  throw new ConclaveError(
    ErrorCode.RetriesExhausted,
    `setConfig ${prefix}: other writers kept changing the prefix; gave up after ${setConfigAttemptsMax} attempts`,
  );
}

/** The issues a watcher with `schema` and `decode` would report for `wanted` (none: valid). */
async function checkConfig(
  wanted: Map<string, Uint8Array>,
  schema: StandardSchemaV1,
  decode: ConfigDecoder,
): Promise<readonly StandardSchemaV1.Issue[]> {
  if (typeof schema?.['~standard']?.validate !== 'function')
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'setConfig: schema must be a Standard Schema v1 (zod, valibot, arktype…)',
    );
  const entries: [string, unknown][] = [];
  const issues: StandardSchemaV1.Issue[] = [];
  for (const [key, bytes] of wanted) {
    try {
      entries.push([key, decode(bytes, key)]);
    } catch (err) {
      issues.push({
        message: `cannot decode: ${err instanceof Error ? err.message : String(err)}`,
        path: [key],
      });
    }
  }
  if (issues.length > 0) return issues;
  try {
    const r = await schema['~standard'].validate(Object.fromEntries(entries));
    return r.issues ?? [];
  } catch (err) {
    return [{ message: `schema validation threw: ${err instanceof Error ? err.message : String(err)}` }];
  }
}

function encodeConfig(
  config: Readonly<Record<string, unknown>>,
  encode: ConfigEncoder,
): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const [key, value] of Object.entries(config)) {
    if (value === undefined) continue;
    out.set(key, toBytes(encode(value, key)));
  }
  if (out.size > configKeysMax)
    throw new ConclaveError(
      ErrorCode.RequestTooLarge,
      `setConfig: the config has ${out.size} fields, more than configKeysMax (${configKeysMax})`,
    );
  return out;
}

/**
 * The txn that makes the prefix equal `wanted`, guarded so it applies only to the state read:
 * no key under the prefix modified or created after the read (one range compare), and every key
 * the txn leaves alone (all keys, when guarded by `ifRevision`) still at its read mod revision —
 * a key deleted meanwhile fails that compare.
 */
function planWrite(
  prefix: string,
  snap: PrefixSnapshot,
  wanted: Map<string, Uint8Array>,
  ifRevision: number | undefined,
): { compare: Compare[]; ops: Op[]; put: string[]; deleted: string[] } {
  const p = toBytes(prefix);
  const stored = new Map(snap.kvs.map((kv) => [toText(kv.key.subarray(p.length)), kv]));
  const put: string[] = [];
  const deleted: string[] = [];
  const compare: Compare[] = [
    { key: prefix, prefix: true, target: 'mod', result: '<', value: (ifRevision ?? snap.revision) + 1 },
  ];
  for (const [key, value] of wanted) {
    const kv = stored.get(key);
    if (!kv || !bytesEqual(kv.value, value)) put.push(key);
  }
  for (const [key, kv] of stored) {
    if (!wanted.has(key)) deleted.push(key);
    else if (ifRevision !== undefined || !put.includes(key))
      compare.push({ key: kv.key, target: 'mod', result: '=', value: kv.modRevision });
  }
  if (ifRevision !== undefined)
    for (const key of deleted)
      compare.push({
        key: stored.get(key)!.key,
        target: 'mod',
        result: '=',
        value: stored.get(key)!.modRevision,
      });
  const ops: Op[] = [
    ...put.map((key): Op => ({ type: 'put', key: `${prefix}${key}`, value: wanted.get(key)! })),
    ...deleted.map((key): Op => ({ type: 'delete', key: stored.get(key)!.key })),
  ];
  const max = limits.txnOpsMax;
  if (ops.length > max)
    throw new ConclaveError(
      ErrorCode.TooManyOps,
      `setConfig ${prefix}: the write needs ${ops.length} puts and deletes, more than one etcd txn allows (${max}, --max-txn-ops); write the config in smaller steps or use fewer keys`,
    );
  if (compare.length > max)
    throw new ConclaveError(
      ErrorCode.TooManyOps,
      `setConfig ${prefix}: guarding ${compare.length - 1} stored keys needs more compares than one etcd txn allows (${max}, --max-txn-ops); use fewer keys`,
    );
  return { compare, ops, put, deleted };
}

/** Err when something under the prefix changed after `ifRevision` (judged from the read `snap`). */
async function checkUnchanged(
  kv: KV,
  prefix: string,
  snap: PrefixSnapshot,
  ifRevision: number,
  ifKeys: readonly string[] | undefined,
  signal: AbortSignal | undefined,
): Promise<ConfigConflict | undefined> {
  const p = toBytes(prefix);
  const rel = (k: KeyValue) => toText(k.key.subarray(p.length));
  const conflict = (changedKeys: string[], reason: ConfigConflict['reason'] = 'changed') => ({
    ifRevision,
    revision: snap.revision,
    changedKeys,
    reason,
  });
  if (ifRevision > snap.revision)
    throw new ConclaveError(
      ErrorCode.FutureRevision,
      `setConfig ${prefix}: ifRevision ${ifRevision} is newer than the store (${snap.revision})`,
    );
  const modified = snap.kvs.filter((k) => k.modRevision > ifRevision).map(rel);
  if (modified.length > 0) return conflict(modified);
  // Every key now was there, unchanged, at ifRevision; deletions since are what is left to find.
  if (ifKeys) {
    const now = new Set(snap.kvs.map(rel));
    const gone = ifKeys.filter((k) => !now.has(k));
    return gone.length > 0 || ifKeys.length !== now.size ? conflict(gone) : undefined;
  }
  try {
    const then = await kv.range(p, { end: prefixEnd(p), revision: ifRevision, countOnly: true, signal });
    return then.count !== snap.kvs.length ? conflict([]) : undefined;
  } catch (err) {
    if (ConclaveError.is(err, ErrorCode.Compacted)) return conflict([], 'compacted');
    throw err;
  }
}
