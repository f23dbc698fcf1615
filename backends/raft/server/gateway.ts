/**
 * The HTTP/1.1 JSON gateway of a `conclave serve` member: etcd 3.4's grpc-gateway routes
 * (`POST /v3/…` and `/v3beta/…`) plus `GET /health`, `GET /version` and `GET /metrics`, on the
 * same port as gRPC (listener.ts).
 *
 * One path per behaviour: a JSON request is converted to the protobuf message of its gRPC method,
 * encoded, and handed to the very handler grpc-js would call for that method (its own decoder
 * included, so the max-request-bytes check and every argument check are the gRPC ones); the
 * handler's response is encoded by its own serializer and converted to JSON. A method nobody has
 * registered is answered Unimplemented, as etcd's gateway relays its gRPC server's answer.
 *
 * JSON as etcd's gateway writes it (grpc-gateway v1's JSONPb with OrigName, EmitDefaults off):
 * proto field names (`create_revision`, `ID`, `grantedTTL`), bytes as standard base64, 64-bit
 * integers as strings, enums by name, fields at their default value left out (a PUT event has no
 * `type`). Requests accept proto names and lowerCamelCase JSON names, 64-bit integers as strings
 * or numbers (a number is read from its digits: a lease ID above 2^53 is exact), enums by name or
 * number. As etcd's gateway, a field the message does not have is ignored, a body's first JSON
 * value is the request (text after it is not read), and `null` or an empty body is the empty
 * request.
 *
 * Errors: `{"error": m, "message": m, "code": <gRPC code>}` with grpc-gateway's HTTP status for
 * the code; malformed JSON, a wrong type or invalid base64 is 400 with code 3 and a message naming
 * the field. Streaming routes (`/v3/watch`, `/v3/lease/keepalive`) read a stream of JSON objects
 * from the request body and answer one `{"result": …}` object per line, chunked; an error after
 * the first line is `{"error": {"grpc_code", "http_code", "message", "http_status"}}`.
 */
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import type { MemberBackend } from './api.js';
import { listenOn, toHttp1 } from './listener.js';
import type { ServerMetrics } from './metrics.js';

/** Conclave's own version, reported by GET /version beside the etcd API version. */
export const conclaveVersion = '0.1.0';
/** The etcd cluster API version served (GET /version `etcdcluster`). */
export const etcdClusterVersion = '3.4.0';

export interface GatewayOptions {
  /** `--max-request-bytes`: larger encoded requests are refused by the handlers (400). */
  readonly maxRequestBytes: number;
  /** HTTP connections open at once; more are closed at once (default `gatewayDefaults`). */
  readonly connectionsMax?: number;
  readonly metrics?: ServerMetrics;
}

export const gatewayDefaults = {
  connectionsMax: 10_000,
  /** A linearizable health read must answer within this (etcd's endpoint health uses 5 s). */
  healthReadTimeoutMs: 5_000,
} as const;

/**
 * Bytes of JSON body accepted for a request: base64 grows bytes by 4/3 and JSON adds field names,
 * so twice the encoded limit plus 512 KiB (etcd's gRPC overhead allowance) is room for any request
 * the handler could accept; a larger body is refused 413 without being parsed.
 */
export function bodyBytesMax(maxRequestBytes: number): number {
  return 2 * maxRequestBytes + 512 * 1024;
}

export interface Gateway {
  /** Serves an HTTP/1.x connection handed over by the listener, with the bytes it read. */
  readonly connection: (socket: net.Socket, head: Buffer) => void;
  /** Closes open connections (streams end); resolves when they are closed. */
  close(): Promise<void>;
  /** Streaming HTTP responses open now. */
  readonly openStreams: number;
}

interface UntypedHandler {
  func: (...args: unknown[]) => unknown;
  serialize: (m: unknown) => Buffer;
  deserialize: (b: Buffer) => unknown;
  type: 'unary' | 'clientStream' | 'serverStream' | 'bidi';
}

/** gRPC → HTTP status, as grpc-gateway v1 (etcd 3.4) maps them (runtime/errors.go). */
export const httpStatusOfCode: Readonly<Record<number, number>> = {
  0: 200,
  1: 408,
  2: 500,
  3: 400,
  4: 504,
  5: 404,
  6: 409,
  7: 403,
  8: 429,
  9: 412,
  10: 409,
  11: 400,
  12: 501,
  13: 500,
  14: 503,
  15: 500,
  16: 401,
};

interface Route {
  readonly grpcPath: string;
  readonly req: string;
  readonly res: string;
  readonly stream: boolean;
}

const route = (svc: string, method: string, req: string, res: string, stream = false): Route => ({
  grpcPath: `/etcdserverpb.${svc}/${method}`,
  req,
  res,
  stream,
});

/** etcd 3.4's gateway routes (rpc.proto's google.api.http bindings), under /v3 and /v3beta. */
export const gatewayRoutes: ReadonlyMap<string, Route> = new Map([
  ['kv/range', route('KV', 'Range', 'RangeRequest', 'RangeResponse')],
  ['kv/put', route('KV', 'Put', 'PutRequest', 'PutResponse')],
  ['kv/deleterange', route('KV', 'DeleteRange', 'DeleteRangeRequest', 'DeleteRangeResponse')],
  ['kv/txn', route('KV', 'Txn', 'TxnRequest', 'TxnResponse')],
  ['kv/compaction', route('KV', 'Compact', 'CompactionRequest', 'CompactionResponse')],
  ['watch', route('Watch', 'Watch', 'WatchRequest', 'WatchResponse', true)],
  ['lease/grant', route('Lease', 'LeaseGrant', 'LeaseGrantRequest', 'LeaseGrantResponse')],
  ['lease/revoke', route('Lease', 'LeaseRevoke', 'LeaseRevokeRequest', 'LeaseRevokeResponse')],
  ['kv/lease/revoke', route('Lease', 'LeaseRevoke', 'LeaseRevokeRequest', 'LeaseRevokeResponse')],
  [
    'lease/keepalive',
    route('Lease', 'LeaseKeepAlive', 'LeaseKeepAliveRequest', 'LeaseKeepAliveResponse', true),
  ],
  [
    'lease/timetolive',
    route('Lease', 'LeaseTimeToLive', 'LeaseTimeToLiveRequest', 'LeaseTimeToLiveResponse'),
  ],
  [
    'kv/lease/timetolive',
    route('Lease', 'LeaseTimeToLive', 'LeaseTimeToLiveRequest', 'LeaseTimeToLiveResponse'),
  ],
  ['lease/leases', route('Lease', 'LeaseLeases', 'LeaseLeasesRequest', 'LeaseLeasesResponse')],
  ['kv/lease/leases', route('Lease', 'LeaseLeases', 'LeaseLeasesRequest', 'LeaseLeasesResponse')],
  ['cluster/member/add', route('Cluster', 'MemberAdd', 'MemberAddRequest', 'MemberAddResponse')],
  ['cluster/member/remove', route('Cluster', 'MemberRemove', 'MemberRemoveRequest', 'MemberRemoveResponse')],
  ['cluster/member/update', route('Cluster', 'MemberUpdate', 'MemberUpdateRequest', 'MemberUpdateResponse')],
  ['cluster/member/list', route('Cluster', 'MemberList', 'MemberListRequest', 'MemberListResponse')],
  [
    'cluster/member/promote',
    route('Cluster', 'MemberPromote', 'MemberPromoteRequest', 'MemberPromoteResponse'),
  ],
  ['maintenance/alarm', route('Maintenance', 'Alarm', 'AlarmRequest', 'AlarmResponse')],
  ['maintenance/status', route('Maintenance', 'Status', 'StatusRequest', 'StatusResponse')],
  ['maintenance/defragment', route('Maintenance', 'Defragment', 'DefragmentRequest', 'DefragmentResponse')],
  ['maintenance/hash', route('Maintenance', 'HashKV', 'HashKVRequest', 'HashKVResponse')],
  [
    'maintenance/transfer-leadership',
    route('Maintenance', 'MoveLeader', 'MoveLeaderRequest', 'MoveLeaderResponse'),
  ],
  // etcd's Auth service (rpc.proto's /v3/auth/… bindings); the token it hands out is sent back in
  // the `Authorization` header (metadataOf).
  ...(
    [
      ['auth/enable', 'AuthEnable', 'AuthEnable'],
      ['auth/disable', 'AuthDisable', 'AuthDisable'],
      ['auth/status', 'AuthStatus', 'AuthStatus'],
      ['auth/authenticate', 'Authenticate', 'Authenticate'],
      ['auth/user/add', 'UserAdd', 'AuthUserAdd'],
      ['auth/user/get', 'UserGet', 'AuthUserGet'],
      ['auth/user/list', 'UserList', 'AuthUserList'],
      ['auth/user/delete', 'UserDelete', 'AuthUserDelete'],
      ['auth/user/changepw', 'UserChangePassword', 'AuthUserChangePassword'],
      ['auth/user/grant', 'UserGrantRole', 'AuthUserGrantRole'],
      ['auth/user/revoke', 'UserRevokeRole', 'AuthUserRevokeRole'],
      ['auth/role/add', 'RoleAdd', 'AuthRoleAdd'],
      ['auth/role/get', 'RoleGet', 'AuthRoleGet'],
      ['auth/role/list', 'RoleList', 'AuthRoleList'],
      ['auth/role/delete', 'RoleDelete', 'AuthRoleDelete'],
      ['auth/role/grant', 'RoleGrantPermission', 'AuthRoleGrantPermission'],
      ['auth/role/revoke', 'RoleRevokePermission', 'AuthRoleRevokePermission'],
    ] as const
  ).map(([p, method, msg]): [string, Route] => [p, route('Auth', method, `${msg}Request`, `${msg}Response`)]),
  // etcd's server-side recipes (v3election.proto, v3lock.proto; served by v3election.ts, v3lock.ts).
  ...(
    [
      ['election/campaign', 'v3electionpb.Election/Campaign', 'CampaignRequest', 'CampaignResponse'],
      ['election/proclaim', 'v3electionpb.Election/Proclaim', 'ProclaimRequest', 'ProclaimResponse'],
      ['election/leader', 'v3electionpb.Election/Leader', 'LeaderRequest', 'LeaderResponse'],
      ['election/observe', 'v3electionpb.Election/Observe', 'LeaderRequest', 'LeaderResponse'],
      ['election/resign', 'v3electionpb.Election/Resign', 'ResignRequest', 'ResignResponse'],
      ['lock/lock', 'v3lockpb.Lock/Lock', 'LockRequest', 'LockResponse'],
      ['lock/unlock', 'v3lockpb.Lock/Unlock', 'UnlockRequest', 'UnlockResponse'],
    ] as const
  ).map(([p, path, req, res]): [string, Route] => [
    p,
    { grpcPath: `/${path}`, req, res, stream: p === 'election/observe' },
  ]),
]);

// ---- JSON <-> protobuf ------------------------------------------------------------------------

/** etcd.proto with the proto field names kept (the JSON names of etcd's gateway). */
const jsonRoot: protobuf.Root = (() => {
  const path = fileURLToPath(new URL('../../../src/protocol/etcd.proto', import.meta.url));
  const r = protobuf.parse(readFileSync(path, 'utf8'), { keepCase: true }).root;
  r.resolveAll();
  return r;
})();

function jsonType(name: string): protobuf.Type | undefined {
  try {
    return jsonRoot.lookupType(`etcdserverpb.${name}`);
  } catch {
    return undefined;
  }
}

/** A request the gateway refuses before any handler sees it (400 unless `status` says otherwise). */
export class BadRequest extends Error {
  constructor(
    message: string,
    readonly code = grpc.status.INVALID_ARGUMENT,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** proto3's JSON name: lowerCamelCase of the field name (`create_revision` → `createRevision`). */
function jsonName(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

const fieldIndex = new WeakMap<protobuf.Type, Map<string, protobuf.Field>>();

function fieldsOf(t: protobuf.Type): Map<string, protobuf.Field> {
  let m = fieldIndex.get(t);
  if (!m) {
    m = new Map();
    for (const f of t.fieldsArray) {
      m.set(f.name, f);
      m.set(jsonName(f.name), f);
    }
    fieldIndex.set(t, m);
  }
  return m;
}

const base64Pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const int64Pattern = /^-?\d{1,20}$/;
const long64 = {
  int64: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  sint64: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  sfixed64: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  uint64: { min: 0n, max: 2n ** 64n - 1n },
  fixed64: { min: 0n, max: 2n ** 64n - 1n },
} as const;
const int32Range = {
  int32: [-(2 ** 31), 2 ** 31 - 1],
  sint32: [-(2 ** 31), 2 ** 31 - 1],
  sfixed32: [-(2 ** 31), 2 ** 31 - 1],
  uint32: [0, 2 ** 32 - 1],
  fixed32: [0, 2 ** 32 - 1],
} as const;

const kind = (v: unknown): string =>
  v === null
    ? 'null'
    : Array.isArray(v)
      ? 'an array'
      : v instanceof JsonNumber
        ? `the number ${clip(v.text)}`
        : `a ${typeof v}`;

/**
 * Converts one parsed JSON value (`parseJson`'s, or plain JSON values) to a plain object
 * `t.encode` takes, checking every field's type. Throws `BadRequest` naming the field (`where`)
 * for anything etcd's gateway would not accept. A field the message does not have is ignored, as
 * etcd 3.4's gateway ignores it (grpc-gateway's JSONPb decodes with jsonpb's AllowUnknownFields):
 * a misspelt field name is the default value, exactly as it is on etcd.
 */
export function fromJson(t: protobuf.Type, v: unknown, where = t.name): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof JsonNumber)
    throw new BadRequest(`${where}: expected a JSON object, got ${kind(v)}`);
  const fields = fieldsOf(t);
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) {
    const f = fields.get(k);
    if (!f) continue;
    if (val === null) continue; // JSON null is the default value, as in proto3 JSON.
    const at = `${where}.${f.name}`;
    if (f.repeated) {
      if (!Array.isArray(val)) throw new BadRequest(`${at}: expected an array, got ${kind(val)}`);
      out[f.name] = val.map((e, i) => fieldValue(f, e, `${at}[${i}]`));
    } else out[f.name] = fieldValue(f, val, at);
  }
  return out;
}

/**
 * An integer field's value: a JSON number written as an integer (read from its digits, so
 * 64-bit values are exact), or a decimal string (how etcd's gateway writes 64-bit integers).
 * Go's decoder refuses a fraction or an exponent for an integer field, and so does this.
 */
function integerOf(v: unknown, at: string): bigint {
  if (v instanceof JsonNumber) {
    if (int64Pattern.test(v.text)) return BigInt(v.text);
    throw new BadRequest(`${at}: ${clip(v.text)} is not an integer`);
  }
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return BigInt(v);
    throw new BadRequest(`${at}: ${v} is not an integer JSON number can carry exactly; send it as a string`);
  }
  if (typeof v === 'string' && int64Pattern.test(v)) return BigInt(v);
  throw new BadRequest(`${at}: expected an integer (number or decimal string), got ${describe(v)}`);
}

function fieldValue(f: protobuf.Field, v: unknown, at: string): unknown {
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Type) return fromJson(rt, v, at);
  if (rt instanceof protobuf.Enum) {
    // By name (own keys only: the values object inherits the names by number), or by number;
    // etcd's gateway refuses a number written as a string ("2") as an unknown name.
    if (typeof v === 'string') {
      if (!Object.hasOwn(rt.values, v))
        throw new BadRequest(`${at}: "${clip(v)}" is not one of ${Object.keys(rt.values).join(', ')}`);
      return rt.values[v];
    }
    if (v instanceof JsonNumber || typeof v === 'number') {
      const n = integerOf(v, at);
      if (n >= -(2n ** 31n) && n < 2n ** 31n) return Number(n);
    }
    throw new BadRequest(`${at}: expected an enum name or number, got ${kind(v)}`);
  }
  switch (f.type) {
    case 'bytes':
      if (typeof v !== 'string') throw new BadRequest(`${at}: expected a base64 string, got ${kind(v)}`);
      if (!base64Pattern.test(v)) throw new BadRequest(`${at}: "${clip(v)}" is not valid standard base64`);
      return Buffer.from(v, 'base64');
    case 'string':
      if (typeof v !== 'string') throw new BadRequest(`${at}: expected a string, got ${kind(v)}`);
      return v;
    case 'bool':
      if (typeof v !== 'boolean') throw new BadRequest(`${at}: expected true or false, got ${kind(v)}`);
      return v;
    case 'double':
    case 'float':
      if (v instanceof JsonNumber) return Number(v.text);
      if (typeof v !== 'number') throw new BadRequest(`${at}: expected a number, got ${kind(v)}`);
      return v;
  }
  if (f.type in long64) {
    const r = long64[f.type as keyof typeof long64];
    const b = integerOf(v, at);
    if (b < r.min || b > r.max) throw new BadRequest(`${at}: ${b} is out of range for ${f.type}`);
    // protobufjs writes 64-bit fields from any {low, high} pair (two's complement halves).
    const u = BigInt.asUintN(64, b);
    return { low: Number(u & 0xffff_ffffn) | 0, high: Number(u >> 32n) | 0, unsigned: b >= 0n };
  }
  if (f.type in int32Range) {
    const [lo, hi] = int32Range[f.type as keyof typeof int32Range];
    const n = integerOf(v, at);
    if (n < BigInt(lo) || n > BigInt(hi)) throw new BadRequest(`${at}: ${n} is out of range for ${f.type}`);
    return Number(n);
  }
  throw new BadRequest(`${at}: fields of type ${f.type} are not accepted`);
}

const clip = (s: string): string => (s.length > 40 ? `${s.slice(0, 40)}…` : s);
const describe = (v: unknown): string => (typeof v === 'string' ? `"${clip(v)}"` : kind(v));

const int64Types = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);

/**
 * A decoded message as etcd's gateway writes it: proto field names, defaults left out, bytes
 * base64, 64-bit integers as decimal strings, enums by name, in declaration order.
 */
export function toJson(t: protobuf.Type, m: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of t.fieldsArray) {
    const v = m[f.name];
    if (v === undefined || v === null) continue;
    if (f.repeated) {
      const a = v as unknown[];
      if (a.length > 0) out[f.name] = a.map((e) => jsonValue(f, e, true));
      continue;
    }
    const j = jsonValue(f, v, false);
    if (j !== undefined) out[f.name] = j;
  }
  return out;
}

/** One value; `undefined` for a singular scalar at its default (left out). */
function jsonValue(f: protobuf.Field, v: unknown, element: boolean): unknown {
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Type) return toJson(rt, v as Record<string, unknown>);
  if (rt instanceof protobuf.Enum) {
    if (v === 0 && !element) return undefined;
    return rt.valuesById[v as number] ?? v;
  }
  if (f.type === 'bytes') {
    const b = v as Uint8Array;
    if (b.length === 0 && !element) return undefined;
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
  }
  if (int64Types.has(f.type)) {
    const s = String(v); // Long#toString honours its sign flag; a number prints as itself.
    return s === '0' && !element ? undefined : s;
  }
  if (!element && (v === 0 || v === false || v === '')) return undefined;
  return v;
}

// ---- HTTP -------------------------------------------------------------------------------------

interface GrpcError {
  code?: number;
  details?: string;
  message?: string;
}

const corsHeaders = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'POST, GET, OPTIONS, PUT, DELETE',
  'Access-Control-Allow-Headers': 'accept, content-type, authorization',
} as const;

const streamHeaders = { ...corsHeaders, 'Content-Type': 'application/json' } as const;

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...corsHeaders,
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function errorBody(code: number, message: string): object {
  return { error: message, message, code };
}

function sendError(res: http.ServerResponse, code: number, message: string, status?: number): void {
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  sendJson(res, status ?? httpStatusOfCode[code] ?? 500, errorBody(code, message));
}

/** grpc-gateway's in-stream error object (after the first line has been sent). */
function streamError(code: number, message: string): object {
  const status = httpStatusOfCode[code] ?? 500;
  return {
    error: { grpc_code: code, http_code: status, message, http_status: http.STATUS_CODES[status] ?? '' },
  };
}

/**
 * Splits a byte stream of concatenated JSON values (whitespace between them optional, as Go's
 * json.Decoder reads a request body) into the text of each top-level value. Each value is bounded
 * by `valueBytesMax`.
 */
export class JsonSplitter {
  #buf = '';
  #depth = 0;
  #inString = false;
  #escape = false;
  #start = -1;
  #scanned = 0;

  constructor(readonly valueBytesMax: number) {}

  /** Adds text; returns the complete values found. Throws `BadRequest` for a value over the bound. */
  push(text: string): string[] {
    this.#buf += text;
    const out: string[] = [];
    const b = this.#buf;
    let i = this.#scanned;
    for (; i < b.length; i++) {
      const c = b.charCodeAt(i);
      if (this.#inString) {
        if (this.#escape) this.#escape = false;
        else if (c === 0x5c) this.#escape = true;
        else if (c === 0x22) this.#inString = false;
        continue;
      }
      if (this.#start < 0) {
        if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
        this.#start = i;
        if (c !== 0x7b && c !== 0x5b) {
          // A scalar at the top level: hand it over alone so JSON.parse says what is wrong.
          out.push(b.slice(i));
          this.#reset('');
          return out;
        }
      }
      if (c === 0x22) this.#inString = true;
      else if (c === 0x7b || c === 0x5b) this.#depth++;
      else if (c === 0x7d || c === 0x5d) {
        if (--this.#depth === 0) {
          out.push(b.slice(this.#start, i + 1));
          this.#start = -1;
        }
      }
    }
    if (this.#start < 0) this.#reset('');
    else {
      if (i - this.#start > this.valueBytesMax)
        throw new BadRequest(
          `a request object is over ${this.valueBytesMax} bytes: raise --max-request-bytes`,
          grpc.status.INVALID_ARGUMENT,
          413,
        );
      this.#buf = b.slice(this.#start);
      this.#scanned = i - this.#start;
      this.#start = 0;
    }
    return out;
  }

  /** What is left when the body ends: incomplete text, or '' when nothing is pending. */
  rest(): string {
    return this.#start < 0 ? '' : this.#buf.trim();
  }

  #reset(buf: string): void {
    this.#buf = buf;
    this.#scanned = 0;
    this.#start = -1;
    this.#depth = 0;
  }
}

/**
 * A JSON number as its literal text. Go's decoder (etcd's gateway) reads an int64 field from the
 * number's digits, so `{"ID": 9007199254740993}` is that lease ID exactly; JSON.parse would round
 * it to a double first. The field it lands in decides how the text is read (fieldValue).
 */
export class JsonNumber {
  constructor(readonly text: string) {}
}

/** Nesting of objects and arrays in a request body at most (deeper is refused, never a stack overflow). */
export const jsonDepthMax = 256;

const numberLiteral = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/**
 * Parses the first JSON value of `text` and ignores what follows it, as etcd's gateway does: it
 * decodes a unary request with one `json.Decoder.Decode` call, which reads one value and leaves
 * the rest of the body unread. Numbers become `JsonNumber`s; objects have no prototype (a
 * `__proto__` key is just a key). Throws `BadRequest` for text that is not JSON.
 */
export function parseJson(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    throw new BadRequest(
      i >= text.length
        ? `the request body is not valid JSON: it ends inside a value (${what})`
        : `the request body is not valid JSON: ${what} at position ${i}`,
    );
  };
  const ws = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else return;
    }
  };
  const str = (): string => {
    const start = i++;
    for (;;) {
      if (i >= text.length) fail('an unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) break;
      if (c === 0x5c) i++;
      else if (c < 0x20) fail('a control character inside a string');
      i++;
    }
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      i = start;
      return fail('an invalid escape in the string');
    }
  };
  const value = (depth: number): unknown => {
    ws();
    const c = text.charCodeAt(i);
    if (c === 0x22) return str();
    if (c === 0x7b || c === 0x5b) {
      if (depth >= jsonDepthMax) fail(`nesting deeper than ${jsonDepthMax} levels`);
      i++;
      ws();
      if (c === 0x5b) {
        const a: unknown[] = [];
        if (text.charCodeAt(i) === 0x5d) {
          i++;
          return a;
        }
        for (;;) {
          a.push(value(depth + 1));
          ws();
          const d = text.charCodeAt(i);
          if (d !== 0x5d && d !== 0x2c) fail(`expected "," or "]" in an array`);
          i++;
          if (d === 0x5d) return a;
        }
      }
      const o: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
      if (text.charCodeAt(i) === 0x7d) {
        i++;
        return o;
      }
      for (;;) {
        ws();
        if (text.charCodeAt(i) !== 0x22) fail('expected a double-quoted field name');
        const k = str();
        ws();
        if (text.charCodeAt(i) !== 0x3a) fail('expected ":" after a field name');
        i++;
        o[k] = value(depth + 1);
        ws();
        const d = text.charCodeAt(i);
        if (d !== 0x7d && d !== 0x2c) fail(`expected "," or "}" in an object`);
        i++;
        if (d === 0x7d) return o;
      }
    }
    for (const [word, v] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const)
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    numberLiteral.lastIndex = i;
    const m = numberLiteral.exec(text);
    if (m) {
      i += m[0].length;
      return new JsonNumber(m[0]);
    }
    return fail(i >= text.length ? 'no value' : `unexpected ${JSON.stringify(text[i])}`);
  };
  return value(0);
}

/** Starts the gateway over `server`'s registered handlers (looked up per request). */
export function startGateway(server: grpc.Server, backend: MemberBackend, o: GatewayOptions): Gateway {
  const handlers = (server as unknown as { handlers?: Map<string, UntypedHandler> }).handlers;
  if (!(handlers instanceof Map))
    throw new Error('@grpc/grpc-js changed: Server has no handler map for the JSON gateway to call');
  const bodyMax = bodyBytesMax(o.maxRequestBytes);
  const connectionsMax = o.connectionsMax ?? gatewayDefaults.connectionsMax;
  const sockets = new Set<net.Socket>();
  const streams = new Set<http.ServerResponse>();
  const { info } = backend;

  const httpServer = http.createServer({ keepAlive: true }, (req, res) => {
    void handle(req, res).catch((err: unknown) => {
      sendError(res, grpc.status.INTERNAL, `gateway: ${(err as Error).message ?? String(err)}`);
    });
  });
  // A malformed request line or header: Node answers 400 itself when this is not overridden.
  httpServer.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0]!;
    if (url === '/health' || url === '/metrics' || url === '/version') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res);
      req.resume();
      if (url === '/version')
        return sendJson(res, 200, {
          etcdserver: info.version,
          etcdcluster: etcdClusterVersion,
          conclave: conclaveVersion,
        });
      if (url === '/health') return health(res);
      return metrics(res);
    }
    const m = /^\/v3(?:beta)?\/(.+)$/.exec(url);
    const r = m ? gatewayRoutes.get(m[1]!) : undefined;
    if (!r) {
      req.resume();
      res.writeHead(404, { ...corsHeaders, 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('Not Found\n');
      return;
    }
    if (req.method === 'OPTIONS') {
      req.resume();
      res.writeHead(200, corsHeaders);
      res.end();
      return;
    }
    if (req.method !== 'POST') return methodNotAllowed(res);
    const reqType = jsonType(r.req);
    const resType = jsonType(r.res);
    const h = handlers!.get(r.grpcPath);
    if (!h || !reqType || !resType) {
      req.resume();
      return sendError(
        res,
        grpc.status.UNIMPLEMENTED,
        `unknown method ${r.grpcPath.split('/')[2]} for service ${r.grpcPath.split('/')[1]}: not served by this member`,
      );
    }
    if (r.stream) return stream(req, res, h, reqType, resType);
    let body: string;
    try {
      body = await readBody(req, bodyMax);
    } catch (err) {
      if (err instanceof BadRequest) return sendError(res, err.code, err.message, err.status);
      throw err;
    }
    let request: unknown;
    try {
      // An empty body, or `null`, is the empty request: Go's decoder leaves the message untouched
      // at EOF and for a JSON null. Text after the first value is not read (etcd's gateway decodes
      // one value).
      const value = body.trim() === '' ? null : parseJson(body);
      const msg = value === null ? {} : fromJson(reqType, value);
      request = h.deserialize(Buffer.from(reqType.encode(msg).finish()));
    } catch (err) {
      if (err instanceof BadRequest) return sendError(res, err.code, err.message, err.status);
      return sendError(res, grpc.status.INVALID_ARGUMENT, `the request could not be decoded: ${String(err)}`);
    }
    const call = { request, metadata: metadataOf(req), cancelled: false };
    (h.func as (c: unknown, cb: grpc.sendUnaryData<unknown>) => void)(call, (err, value) => {
      if (err) {
        const e = err as GrpcError;
        return sendError(res, e.code ?? grpc.status.UNKNOWN, e.details ?? e.message ?? 'unknown error');
      }
      try {
        sendJson(res, 200, toJson(resType, resType.decode(h.serialize(value)) as never));
      } catch (e) {
        sendError(res, grpc.status.INTERNAL, `gateway: the response could not be encoded: ${String(e)}`);
      }
    });
  }

  function methodNotAllowed(res: http.ServerResponse): void {
    res.writeHead(405, { ...corsHeaders, 'Content-Type': 'text/plain; charset=utf-8', Allow: 'POST' });
    res.end('Method Not Allowed\n');
  }

  function health(res: http.ServerResponse): Promise<void> {
    return serveHealth(backend, o.metrics, res);
  }

  function metrics(res: http.ServerResponse): Promise<void> {
    return serveMetrics(o.metrics, res);
  }

  function stream(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    h: UntypedHandler,
    reqType: protobuf.Type,
    resType: protobuf.Type,
  ): void {
    const call = new GatewayStreamCall(res, metadataOf(req), (m) =>
      toJson(resType, resType.decode(h.serialize(m)) as never),
    );
    streams.add(res);
    res.on('close', () => {
      streams.delete(res);
      call.gone();
    });
    const splitter = new JsonSplitter(bodyMax);
    req.setEncoding('utf8');
    const fail = (err: unknown): void => {
      req.off('data', onData);
      req.resume();
      const e = err instanceof BadRequest ? err : new BadRequest(String(err));
      call.failed(e.code, e.message, e.status);
    };
    const onData = (text: string): void => {
      try {
        for (const value of splitter.push(text)) {
          const msg = fromJson(reqType, parseJson(value));
          if (!call.deliver(h.deserialize(Buffer.from(reqType.encode(msg).finish())))) req.pause();
        }
      } catch (err) {
        fail(err);
      }
    };
    call.onRead = () => req.resume();
    req.on('data', onData);
    req.on('end', () => {
      const rest = splitter.rest();
      if (rest !== '')
        return fail(new BadRequest(`the request body ends inside a JSON value: ${clip(rest)}`));
      call.deliver(null);
    });
    // Headers go out with the first line (or end): a request stream whose first object is bad
    // is answered with its own status, as a unary request is.
    (h.func as (c: unknown) => void)(call);
  }

  const toHttp = toHttp1(httpServer);
  return {
    connection(socket: net.Socket, head: Buffer): void {
      if (sockets.size >= connectionsMax) {
        socket.destroy();
        return;
      }
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      toHttp(socket, head);
    },
    get openStreams() {
      return streams.size;
    },
    async close(): Promise<void> {
      for (const r of streams) r.end();
      const open = [...sockets];
      await Promise.all(
        open.map(
          (s) =>
            new Promise<void>((resolve) => {
              if (s.destroyed) return resolve();
              s.once('close', () => resolve());
              s.destroySoon();
              setTimeout(() => s.destroy(), 1000).unref();
            }),
        ),
      );
    },
  };
}

/**
 * etcd 3.4's /health: false with a NOSPACE alarm raised or no leader known, else the result of a
 * linearizable read (etcd does a quorum read too), bounded by `healthReadTimeoutMs`.
 */
export async function healthy(backend: MemberBackend): Promise<boolean> {
  const { info } = backend;
  if ((info.alarms?.() ?? []).some((a) => a.alarm === 'nospace')) return false;
  if (info.leaderId() === 0n) return false;
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), gatewayDefaults.healthReadTimeoutMs);
  try {
    await backend.kv.range(Buffer.from('health'), { limit: 1, signal: ac.signal });
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

async function serveHealth(
  backend: MemberBackend,
  metrics: ServerMetrics | undefined,
  res: http.ServerResponse,
): Promise<void> {
  const ok = await healthy(backend);
  metrics?.healthCheck(ok);
  sendJson(res, ok ? 200 : 503, { health: ok ? 'true' : 'false' });
}

async function serveMetrics(metrics: ServerMetrics | undefined, res: http.ServerResponse): Promise<void> {
  if (!metrics) {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end('metrics are not served by this server\n');
    return;
  }
  const text = await metrics.registry.metrics();
  res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
  res.end(text);
}

export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * etcd's `--listen-metrics-urls`: a plain HTTP server answering GET /metrics and GET /health
 * only (no client API), for scrapers kept off the client port.
 */
export async function startMetricsServer(
  host: string,
  port: number,
  backend: MemberBackend,
  metrics: ServerMetrics,
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    req.resume();
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Allow: 'GET' });
      res.end('Method Not Allowed\n');
      return;
    }
    const work =
      url === '/metrics'
        ? serveMetrics(metrics, res)
        : url === '/health'
          ? serveHealth(backend, metrics, res)
          : undefined;
    if (!work) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('Not Found\n');
      return;
    }
    work.catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(`${String(err)}\n`);
    });
  });
  await listenOn(server, host, port, 'metrics');
  server.on('error', () => undefined);
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * The gRPC metadata of a gateway request: etcd's gateway passes the `Authorization` header on and
 * etcd reads it as the auth token (rpctypes.TokenFieldNameSwagger), so it becomes `token` here.
 */
function metadataOf(req: http.IncomingMessage): grpc.Metadata {
  const md = new grpc.Metadata();
  const token = req.headers.authorization;
  if (typeof token === 'string' && token !== '') md.set('token', token);
  return md;
}

/** Reads a request body of at most `max` bytes as text; over it, a 413 `BadRequest`. */
function readBody(req: http.IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    const tooLarge = (n: number) =>
      new BadRequest(
        `the request body (${n} bytes) is over the gateway's limit of ${max} bytes (twice --max-request-bytes plus 512 KiB)`,
        grpc.status.INVALID_ARGUMENT,
        413,
      );
    if (declared > max) {
      req.resume();
      return reject(tooLarge(declared));
    }
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > max) {
        chunks.length = 0;
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge(n));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * What a streaming gRPC handler sees of an HTTP streaming request: a duplex object stream whose
 * reads are the decoded request messages and whose writes become `{"result": …}` lines. Handlers
 * end it with `end()`, fail it with `emit('error', {code, details})`, and learn the client left
 * from 'cancelled'. The response's back-pressure is the Writable's (a write calls back once the
 * socket has taken the line).
 */
class GatewayStreamCall extends Duplex {
  readonly metadata: grpc.Metadata;
  cancelled = false;
  onRead: (() => void) | undefined;
  readonly #res: http.ServerResponse;
  readonly #json: (m: unknown) => unknown;
  #failed = false;

  constructor(res: http.ServerResponse, metadata: grpc.Metadata, json: (m: unknown) => unknown) {
    super({ objectMode: true, highWaterMark: 16 });
    this.metadata = metadata;
    this.#res = res;
    this.#json = json;
    // Handlers fail a stream by emitting 'error' with a gRPC status object.
    this.on('error', (e: GrpcError) => {
      this.failed(e.code ?? grpc.status.UNKNOWN, e.details ?? e.message ?? 'unknown error');
    });
  }

  /** Hands a request message (or `null` at the end of the body) to the handler. */
  deliver(m: unknown): boolean {
    if (this.#failed) return true;
    return this.push(m);
  }

  /** Ends the response with an error: its own status before any line, else an error line. */
  failed(code: number, message: string, status?: number): void {
    if (this.#failed) return;
    this.#failed = true;
    const res = this.#res;
    if (!res.writableEnded) {
      if (!res.headersSent) sendError(res, code, message, status);
      else res.end(`${JSON.stringify(streamError(code, message))}\n`);
    }
    this.gone();
  }

  /** The response closed (client left, or ended): the handler sees 'cancelled' and 'close'. */
  gone(): void {
    if (this.destroyed) return;
    if (!this.#res.writableFinished) {
      this.cancelled = true;
      this.emit('cancelled');
    }
    this.destroy();
  }

  override _read(): void {
    this.onRead?.();
  }

  override _write(m: unknown, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const res = this.#res;
    if (res.writableEnded) {
      cb();
      return;
    }
    let line: string;
    try {
      line = `${JSON.stringify({ result: this.#json(m) })}\n`;
    } catch (err) {
      cb(err as Error);
      return;
    }
    if (!res.headersSent) res.writeHead(200, streamHeaders);
    if (res.write(line)) cb();
    else res.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.#res.headersSent) this.#res.writeHead(200, streamHeaders);
    if (!this.#res.writableEnded) this.#res.end();
    cb();
  }
}
