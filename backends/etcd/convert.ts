/** Conversions between the KV contract's types and etcd's wire messages. */
import { ConclaveError, ErrorCode, invalidArgument } from '../../src/errors.js';
import { EMPTY, resolveRange, toBytes } from '../../src/keys.js';
import { big, type Int64, int64, num } from '../../src/protocol/codec.js';
import type {
  Compare,
  DeleteOptions,
  DeleteResult,
  KeyValue,
  Op,
  OpResponse,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  Txn,
  TxnResult,
} from '../../src/types.js';
import { checkLeaseId, checkNonNegativeInt, checkRevision } from '../../src/validate.js';

// Wire shapes as protobufjs decodes them (camelCase fields, int64 as Long or number).
export interface PbHeader {
  revision?: Int64;
  memberId?: Int64;
  raftTerm?: Int64;
}
export interface PbKeyValue {
  key?: Uint8Array;
  createRevision?: Int64;
  modRevision?: Int64;
  version?: Int64;
  value?: Uint8Array;
  lease?: Int64;
}
export interface PbRangeResponse {
  header?: PbHeader;
  kvs?: PbKeyValue[];
  more?: boolean;
  count?: Int64;
}
export interface PbPutResponse {
  header?: PbHeader;
  prevKv?: PbKeyValue | null;
}
export interface PbDeleteResponse {
  header?: PbHeader;
  deleted?: Int64;
  prevKvs?: PbKeyValue[];
}
export interface PbResponseOp {
  responseRange?: PbRangeResponse | null;
  responsePut?: PbPutResponse | null;
  responseDeleteRange?: PbDeleteResponse | null;
  responseTxn?: PbTxnResponse | null;
}
export interface PbTxnResponse {
  header?: PbHeader;
  succeeded?: boolean;
  responses?: PbResponseOp[];
}

/**
 * A decoded bytes field as a Uint8Array. protobufjs leaves an absent (empty) bytes field to its
 * prototype default, a plain empty Array — not a Uint8Array — so `?? EMPTY` would pass it on.
 */
function bytesOf(v: Uint8Array | null | undefined): Uint8Array {
  return v instanceof Uint8Array ? v : EMPTY;
}

export function kvFromPb(p: PbKeyValue): KeyValue {
  return {
    key: bytesOf(p.key),
    createRevision: num(p.createRevision),
    modRevision: num(p.modRevision),
    version: num(p.version),
    value: bytesOf(p.value),
    lease: big(p.lease),
  };
}

const sortOrders = { none: 0, ascend: 1, descend: 2 } as const;
const sortTargets = { key: 0, version: 1, create: 2, mod: 3, value: 4 } as const;

export function rangeRequest(
  key: Uint8Array | string,
  o: Omit<RangeOptions, 'signal'> = {},
): Record<string, unknown> {
  const r = resolveRange(key, o);
  const req: Record<string, unknown> = { key: r.key };
  if (r.end.length > 0) req.rangeEnd = r.end;
  if (o.limit !== undefined && checkNonNegativeInt('limit', o.limit) > 0) req.limit = o.limit;
  if (o.revision !== undefined && checkRevision('revision', o.revision) > 0) req.revision = o.revision;
  if (o.sort) {
    const order = o.sort.order ?? 'ascend';
    const target = o.sort.target ?? 'key';
    // Own properties only: `'toString' in sortOrders` is true.
    if (typeof order !== 'string' || !Object.hasOwn(sortOrders, order))
      invalidArgument('sort.order', `must be none, ascend or descend, got ${String(order)}`);
    if (typeof target !== 'string' || !Object.hasOwn(sortTargets, target))
      invalidArgument('sort.target', `must be key, version, create, mod or value, got ${String(target)}`);
    req.sortOrder = sortOrders[order];
    req.sortTarget = sortTargets[target];
  }
  if (o.serializable) req.serializable = true;
  if (o.keysOnly) req.keysOnly = true;
  if (o.countOnly) req.countOnly = true;
  if (o.minModRevision !== undefined) req.minModRevision = checkRevision('minModRevision', o.minModRevision);
  if (o.maxModRevision !== undefined) req.maxModRevision = checkRevision('maxModRevision', o.maxModRevision);
  if (o.minCreateRevision !== undefined)
    req.minCreateRevision = checkRevision('minCreateRevision', o.minCreateRevision);
  if (o.maxCreateRevision !== undefined)
    req.maxCreateRevision = checkRevision('maxCreateRevision', o.maxCreateRevision);
  return req;
}

export function rangeResult(p: PbRangeResponse): RangeResult {
  return {
    kvs: (p.kvs ?? []).map(kvFromPb),
    count: num(p.count),
    more: p.more ?? false,
    revision: num(p.header?.revision),
  };
}

export function putRequest(
  key: Uint8Array,
  value: Uint8Array | string,
  o: Omit<PutOptions, 'signal'> = {},
): Record<string, unknown> {
  const req: Record<string, unknown> = { key, value: toBytes(value) };
  if (o.lease !== undefined && checkLeaseId('lease', o.lease) !== 0n) req.lease = int64(o.lease);
  if (o.prevKv) req.prevKv = true;
  if (o.ignoreValue) req.ignoreValue = true;
  if (o.ignoreLease) req.ignoreLease = true;
  return req;
}

export function putResult(p: PbPutResponse, wantPrev: boolean): PutResult {
  const revision = num(p.header?.revision);
  if (wantPrev && p.prevKv?.key && p.prevKv.key.length > 0) return { revision, prevKv: kvFromPb(p.prevKv) };
  return { revision };
}

export function deleteRequest(
  key: Uint8Array | string,
  o: Omit<DeleteOptions, 'signal'> = {},
): Record<string, unknown> {
  const r = resolveRange(key, o);
  const req: Record<string, unknown> = { key: r.key };
  if (r.end.length > 0) req.rangeEnd = r.end;
  if (o.prevKv) req.prevKv = true;
  return req;
}

export function deleteResult(p: PbDeleteResponse): DeleteResult {
  return {
    revision: num(p.header?.revision),
    deleted: num(p.deleted),
    prevKvs: (p.prevKvs ?? []).map(kvFromPb),
  };
}

const compareResults = { '=': 0, '>': 1, '<': 2, '!=': 3 } as const;
const compareTargets = { version: 0, create: 1, mod: 2, value: 3, lease: 4 } as const;

function compareToPb(c: Compare): Record<string, unknown> {
  const r = resolveRange(c.key, c);
  const out: Record<string, unknown> = {
    key: r.key,
    result: compareResults[c.result],
    target: compareTargets[c.target],
  };
  if (r.end.length > 0) out.rangeEnd = r.end;
  switch (c.target) {
    case 'version':
      out.version = c.value;
      break;
    case 'create':
      out.createRevision = c.value;
      break;
    case 'mod':
      out.modRevision = c.value;
      break;
    case 'value':
      out.value = toBytes(c.value);
      break;
    case 'lease':
      out.lease = int64(c.value);
      break;
  }
  return out;
}

function opToPb(op: Op): Record<string, unknown> {
  switch (op.type) {
    case 'get':
      return { requestRange: rangeRequest(op.key, op.options) };
    case 'put':
      return { requestPut: putRequest(toBytes(op.key), op.value, op.options) };
    case 'delete':
      return { requestDeleteRange: deleteRequest(op.key, op.options) };
    case 'txn':
      return { requestTxn: txnRequest(op.txn) };
  }
}

export function txnRequest(t: Txn): Record<string, unknown> {
  return {
    compare: (t.compare ?? []).map(compareToPb),
    success: (t.success ?? []).map(opToPb),
    failure: (t.failure ?? []).map(opToPb),
  };
}

/**
 * `fallbackRevision`: a nested txn's response carries no header in etcd; its responses (and it)
 * report the enclosing txn's revision.
 */
export function txnResult(p: PbTxnResponse, t: Txn, fallbackRevision = 0): TxnResult {
  const succeeded = p.succeeded ?? false;
  const ops = (succeeded ? t.success : t.failure) ?? [];
  const revision = num(p.header?.revision) || fallbackRevision;
  const responses: OpResponse[] = (p.responses ?? []).map((r, i) => opResponse(r, ops[i], revision));
  return { succeeded, revision, responses };
}

function opResponse(r: PbResponseOp, op: Op | undefined, revision: number): OpResponse {
  // Responses inside a txn carry no header of their own in etcd; use the txn's revision.
  if (r.responseRange) return { type: 'get', ...rangeResult(r.responseRange), revision };
  if (r.responsePut)
    return { type: 'put', ...putResult(r.responsePut, op?.type === 'put' && !!op.options?.prevKv), revision };
  if (r.responseDeleteRange) return { type: 'delete', ...deleteResult(r.responseDeleteRange), revision };
  if (r.responseTxn) {
    const nested = op?.type === 'txn' ? op.txn : { compare: [], success: [], failure: [] };
    return { type: 'txn', ...txnResult(r.responseTxn, nested, revision), revision };
  }
  throw new ConclaveError(ErrorCode.Internal, 'txn: etcd returned an empty ResponseOp');
}
