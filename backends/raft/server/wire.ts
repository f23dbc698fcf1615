/**
 * etcd's wire messages ↔ the KV contract, for the server side: requests as protobufjs decodes them
 * become contract calls; contract results become response objects protobufjs encodes. The inverse
 * of backends/etcd/convert.ts.
 *
 * Encoding choices (the CPU budget): int64 fields are written from plain numbers (revisions,
 * counts, TTLs are far below 2^53); uint64 IDs and int64 lease IDs are written from precomputed
 * `{ low, high }` pairs (protobufjs' LongBits accepts any object with those fields), never through
 * strings; fields at their proto3 default are left out, as etcd leaves them out.
 */
import { EMPTY } from '../../../src/keys.js';
import { big, type Int64, num } from '../../../src/protocol/codec.js';
import type {
  Compare,
  CompareResult,
  CompareTarget,
  DeleteOptions,
  DeleteResult,
  KeyValue,
  Op,
  OpResponse,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  SortOrder,
  SortTarget,
  Txn,
  TxnResult,
  WatchEvent,
} from '../../../src/types.js';

/** A 64-bit integer as protobufjs writes it without conversion (LongBits.from reads low/high). */
export type Wire64 = { readonly low: number; readonly high: number; readonly unsigned: boolean } | number;

/** bigint → what protobufjs writes as int64/uint64 exactly (a number when it is small). */
export function wire64(v: bigint, unsigned = false): Wire64 {
  if (v >= 0n && v <= 0x1f_ffff_ffff_ffffn) return Number(v);
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffff_ffffn) | 0, high: Number(u >> 32n) | 0, unsigned };
}

// ---------------------------------------------------------------------------------------------
// Requests as decoded (camelCase fields, int64 as Long or number, absent bytes as an empty Array)

export interface PbRangeRequest {
  key?: Uint8Array;
  rangeEnd?: Uint8Array;
  limit?: Int64;
  revision?: Int64;
  sortOrder?: number;
  sortTarget?: number;
  serializable?: boolean;
  keysOnly?: boolean;
  countOnly?: boolean;
  minModRevision?: Int64;
  maxModRevision?: Int64;
  minCreateRevision?: Int64;
  maxCreateRevision?: Int64;
}
export interface PbPutRequest {
  key?: Uint8Array;
  value?: Uint8Array;
  lease?: Int64;
  prevKv?: boolean;
  ignoreValue?: boolean;
  ignoreLease?: boolean;
}
export interface PbDeleteRangeRequest {
  key?: Uint8Array;
  rangeEnd?: Uint8Array;
  prevKv?: boolean;
}
export interface PbCompare {
  result?: number;
  target?: number;
  key?: Uint8Array;
  version?: Int64;
  createRevision?: Int64;
  modRevision?: Int64;
  value?: Uint8Array;
  lease?: Int64;
  rangeEnd?: Uint8Array;
}
export interface PbRequestOp {
  requestRange?: PbRangeRequest | null;
  requestPut?: PbPutRequest | null;
  requestDeleteRange?: PbDeleteRangeRequest | null;
  requestTxn?: PbTxnRequest | null;
}
export interface PbTxnRequest {
  compare?: PbCompare[];
  success?: PbRequestOp[];
  failure?: PbRequestOp[];
}

/**
 * A decoded bytes field as a Uint8Array. protobufjs leaves an absent bytes field to its prototype
 * default, a plain empty Array.
 */
export function bytesOf(v: Uint8Array | null | undefined): Uint8Array {
  return v instanceof Uint8Array ? v : EMPTY;
}

const sortOrders: readonly SortOrder[] = ['none', 'ascend', 'descend'];
const sortTargets: readonly SortTarget[] = ['key', 'version', 'create', 'mod', 'value'];

/**
 * etcd's Range semantics for values the contract refuses: a revision <= 0 is the current one, a
 * limit <= 0 is no limit, a min/max filter of 0 is no filter (negative filters are treated as 0 too;
 * docs/server-api.md says so). An unknown sort order or target is no sort (etcd's switch falls through).
 */
export function rangeOptions(r: PbRangeRequest): RangeOptions {
  const o: RangeOptions = {};
  const end = bytesOf(r.rangeEnd);
  if (end.length > 0) o.end = end;
  const limit = num(r.limit);
  if (limit > 0) o.limit = limit;
  const rev = num(r.revision);
  if (rev > 0) o.revision = rev;
  const order = r.sortOrder ?? 0;
  const target = r.sortTarget ?? 0;
  if (order !== 0 || target !== 0) {
    // etcd (apply.go Range): a target other than KEY with order NONE sorts ascending.
    const so = sortOrders[order] ?? 'none';
    const st = sortTargets[target] ?? 'key';
    o.sort = { order: so === 'none' && st !== 'key' ? 'ascend' : so, target: st };
  }
  if (r.serializable) o.serializable = true;
  if (r.keysOnly) o.keysOnly = true;
  if (r.countOnly) o.countOnly = true;
  const minMod = num(r.minModRevision);
  if (minMod > 0) o.minModRevision = minMod;
  const maxMod = num(r.maxModRevision);
  if (maxMod > 0) o.maxModRevision = maxMod;
  const minCreate = num(r.minCreateRevision);
  if (minCreate > 0) o.minCreateRevision = minCreate;
  const maxCreate = num(r.maxCreateRevision);
  if (maxCreate > 0) o.maxCreateRevision = maxCreate;
  return o;
}

export function putOptions(r: PbPutRequest): PutOptions {
  const o: PutOptions = {};
  const lease = big(r.lease);
  if (lease !== 0n) o.lease = lease;
  if (r.prevKv) o.prevKv = true;
  if (r.ignoreValue) o.ignoreValue = true;
  if (r.ignoreLease) o.ignoreLease = true;
  return o;
}

export function deleteOptions(r: PbDeleteRangeRequest): DeleteOptions {
  const o: DeleteOptions = {};
  const end = bytesOf(r.rangeEnd);
  if (end.length > 0) o.end = end;
  if (r.prevKv) o.prevKv = true;
  return o;
}

const compareResults: readonly CompareResult[] = ['=', '>', '<', '!='];
const compareTargets: readonly CompareTarget[] = ['version', 'create', 'mod', 'value', 'lease'];

/**
 * A wire Compare. etcd reads the union member named by `target` (an unset one reads as 0 or empty).
 * Enum values etcd does not know (apply.go compareKV): an unknown result makes the compare true, an
 * unknown target compares 0 with 0. `undefined` = always true (dropped); negative numbers are
 * clamped to 0 (the contract has no negative revisions).
 */
export function compareOf(c: PbCompare): Compare | undefined {
  const result = compareResults[c.result ?? 0];
  if (result === undefined) return undefined;
  const target = compareTargets[c.target ?? 0];
  const key = bytesOf(c.key);
  const end = bytesOf(c.rangeEnd);
  const sel = end.length > 0 ? { key, result, end } : { key, result };
  switch (target) {
    case 'version':
      return { ...sel, target, value: Math.max(0, num(c.version)) };
    case 'create':
      return { ...sel, target, value: Math.max(0, num(c.createRevision)) };
    case 'mod':
      return { ...sel, target, value: Math.max(0, num(c.modRevision)) };
    case 'value':
      return { ...sel, target, value: bytesOf(c.value) };
    case 'lease': {
      const l = big(c.lease);
      return { ...sel, target, value: l < 0n ? 0n : l };
    }
    default:
      // 0 compared with 0: only '=' holds. "version < 0" never holds, on any key or none.
      return result === '=' ? undefined : { key, target: 'version', result: '<', value: 0 };
  }
}

function opOf(op: PbRequestOp): Op {
  if (op.requestRange) {
    const { serializable: _s, ...options } = rangeOptions(op.requestRange);
    return { type: 'get', key: bytesOf(op.requestRange.key), options };
  }
  if (op.requestPut)
    return {
      type: 'put',
      key: bytesOf(op.requestPut.key),
      value: bytesOf(op.requestPut.value),
      options: putOptions(op.requestPut),
    };
  if (op.requestDeleteRange)
    return {
      type: 'delete',
      key: bytesOf(op.requestDeleteRange.key),
      options: deleteOptions(op.requestDeleteRange),
    };
  // checkTxnRequest refused an empty RequestOp before this is reached.
  return { type: 'txn', txn: txnOf(op.requestTxn ?? {}) };
}

export function txnOf(t: PbTxnRequest): Txn {
  const compare: Compare[] = [];
  for (const c of t.compare ?? []) {
    const cc = compareOf(c);
    if (cc) compare.push(cc);
  }
  return { compare, success: (t.success ?? []).map(opOf), failure: (t.failure ?? []).map(opOf) };
}

// ---------------------------------------------------------------------------------------------
// Responses

/** mvccpb.KeyValue for the wire; zero fields left out. */
export function kvToPb(kv: KeyValue): Record<string, unknown> {
  // etcd (gogoproto) writes no field at its zero value: a delete event's kv has only key and
  // mod_revision, a keys-only read has no value.
  const o: Record<string, unknown> = { key: kv.key };
  if (kv.createRevision !== 0) o.createRevision = kv.createRevision;
  if (kv.modRevision !== 0) o.modRevision = kv.modRevision;
  if (kv.version !== 0) o.version = kv.version;
  if (kv.value.length > 0) o.value = kv.value;
  if (kv.lease !== 0n) o.lease = wire64(kv.lease);
  return o;
}

function kvsToPb(kvs: readonly KeyValue[]): Record<string, unknown>[] {
  const out = new Array<Record<string, unknown>>(kvs.length);
  for (let i = 0; i < kvs.length; i++) out[i] = kvToPb(kvs[i]!);
  return out;
}

export function rangeBody(r: RangeResult): Record<string, unknown> {
  const o: Record<string, unknown> = { kvs: kvsToPb(r.kvs) };
  if (r.count !== 0) o.count = r.count;
  if (r.more) o.more = true;
  return o;
}

export function putBody(r: PutResult): Record<string, unknown> {
  return r.prevKv ? { prevKv: kvToPb(r.prevKv) } : {};
}

export function deleteBody(r: DeleteResult): Record<string, unknown> {
  return r.deleted === 0
    ? { prevKvs: kvsToPb(r.prevKvs) }
    : { deleted: r.deleted, prevKvs: kvsToPb(r.prevKvs) };
}

/**
 * A txn's responses, with etcd's per-op header revisions (apply.go, mvcc storeTxnWrite): inside a
 * txn that changes something (a put, or a delete that deleted a key) at new revision R, a read or a
 * delete that no change precedes reports R - 1 and every op after the first change reports R; a put
 * always reports R; a txn that changes nothing reports R everywhere. A nested txn's header carries
 * no revision.
 */
export function txnBody(r: TxnResult): Record<string, unknown> {
  const st = { changed: false, begin: changes(r.responses) ? r.revision - 1 : r.revision, rev: r.revision };
  return txnBodyAt(r, st);
}

function changes(rs: readonly OpResponse[]): boolean {
  for (const x of rs) {
    if (x.type === 'put' || (x.type === 'delete' && x.deleted > 0)) return true;
    if (x.type === 'txn' && changes(x.responses)) return true;
  }
  return false;
}

interface TxnWalk {
  changed: boolean;
  readonly begin: number;
  readonly rev: number;
}

function txnBodyAt(r: TxnResult, st: TxnWalk): Record<string, unknown> {
  const responses = new Array<Record<string, unknown>>(r.responses.length);
  for (let i = 0; i < responses.length; i++) responses[i] = opResponseToPb(r.responses[i]!, st);
  return r.succeeded ? { succeeded: true, responses } : { responses };
}

function opResponseToPb(r: OpResponse, st: TxnWalk): Record<string, unknown> {
  switch (r.type) {
    case 'get':
      return { responseRange: { header: { revision: st.changed ? st.rev : st.begin }, ...rangeBody(r) } };
    case 'put':
      st.changed = true;
      return { responsePut: { header: { revision: st.rev }, ...putBody(r) } };
    case 'delete':
      if (r.deleted > 0) st.changed = true;
      return {
        responseDeleteRange: { header: { revision: st.changed ? st.rev : st.begin }, ...deleteBody(r) },
      };
    case 'txn':
      return { responseTxn: { header: {}, ...txnBodyAt(r, st) } };
  }
}

export function eventToPb(ev: WatchEvent): Record<string, unknown> {
  const o: Record<string, unknown> = { kv: kvToPb(ev.kv) };
  if (ev.type === 'delete') o.type = 1;
  if (ev.prevKv) o.prevKv = kvToPb(ev.prevKv);
  return o;
}
