/**
 * Commands carried in Raft log entries, and their binary encoding. Every command carries a request
 * id, unique per proposer, so the proposing member can match the applied result.
 *
 * Encoding (format 1). A command is encoded once, by the proposer, and decoded once by every
 * member that applies it, so both directions sit on the write path; the format is hand-written
 * rather than JSON (whose base64-tagged bytes and reviver dominated the CPU profile of writes):
 *
 *   [format u8 = 1][op u8][id: str][body…]
 *
 * - `str`/`bytes`: a varint byte length, then the bytes (strings as UTF-8). A `Bytes` given as a
 *   string is encoded as its UTF-8 bytes and decodes as a `Uint8Array`: the store converts every
 *   `Bytes` with the same UTF-8 encoding (`toBytes`), so the applied result is identical.
 * - varint: unsigned LEB128 of a safe integer (lengths, counts, presence masks).
 * - `num`: float64 (revisions, TTLs, limits, compare numbers: exact for every JS number).
 * - `big`: int64 (lease ids; the validators bound them to int64, anything else is refused here).
 * - options objects: a varint, 0 if the object is absent, else `2 × mask + 1` (bit i of the mask:
 *   field i is present), then the present fields in order. Booleans are encoded by their truthiness (how the store reads them); fields the store
 *   does not read (such as `signal`) are not encoded.
 *
 * Decoding copies nothing: every byte string of the command (keys, values, range ends, compare
 * values) is a view into the entry's data, which the stored values then share (one array per
 * entry instead of one per value: a million value copies took most of the time of applying a
 * recovered WAL tail, and their garbage collection more). That makes two demands on the caller,
 * met by every producer of entry data today:
 * - nobody modifies the data afterwards (the store hands values out read-only; the log, the WAL
 *   writer and the in-memory transport only read entries; `encodeCommand` returns a fresh array);
 * - the data is not a window of a much larger buffer, which a stored value would pin for as long
 *   as it lives: the WAL reader copies each entry out of the segment it read (`decodePayload` in
 *   storage/records.ts), except the last segment's kept entries when they fill at least half of
 *   its read buffer (storage/wal.ts), and a network transport must do the same with its read
 *   buffers.
 * A payload whose first byte is not a known format version (a JSON command of a pre-1.0 data
 * directory starts with `{`) is refused with `corrupt`.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type {
  Bytes,
  CompactOptions,
  Compare,
  DeleteOptions,
  Op,
  PutOptions,
  RangeOptions,
  Txn,
} from '../../../src/types.js';

/**
 * A write checked against the auth store by the member that took it (server/auth.ts) carries the
 * auth revision of that check; it applies only if no auth change applied since (etcd's apply-time
 * `ErrAuthOldRevision`). Encoded as a prefix: `[op u8 = 8][num authRevision]`, then the command.
 */
export interface AuthChecked {
  authRevision?: number;
}

/**
 * The options property by which the client API (server/grpc.ts) hands the member's KV the auth
 * revision its permission check used (not part of the public KV contract: a symbol, read only
 * by the served member's KV, member.ts).
 */
export const authRevisionOption: unique symbol = Symbol('conclave.authRevision');

/** The auth revision an options object carries (see `authRevisionOption`), if any. */
export function authRevisionOf(o: object | undefined): number | undefined {
  return (o as { [authRevisionOption]?: number } | undefined)?.[authRevisionOption];
}

export type Command =
  | ({
      id: string;
      op: 'put';
      key: Uint8Array;
      value: Uint8Array;
      opts: Omit<PutOptions, 'signal'>;
    } & AuthChecked)
  | ({ id: string; op: 'delete'; key: Uint8Array; opts: Omit<DeleteOptions, 'signal'> } & AuthChecked)
  | ({ id: string; op: 'txn'; txn: Txn } & AuthChecked)
  | { id: string; op: 'compact'; revision: number; opts?: Omit<CompactOptions, 'signal'> }
  | { id: string; op: 'grant'; lease: bigint; ttlSeconds: number }
  | ({ id: string; op: 'revoke'; lease: bigint } & AuthChecked)
  /** A change to users, roles, permissions or auth state (store/auth-store.ts), as its JSON text. */
  | { id: string; op: 'auth'; change: string }
  /** etcd's AlarmRequest ACTIVATE/DEACTIVATE of one member's alarm (store/alarms.ts). */
  | {
      id: string;
      op: 'alarm';
      action: 'activate' | 'deactivate';
      memberId: bigint;
      alarm: 'nospace' | 'corrupt';
    }
  /**
   * A member's attributes (its name and client URLs) published through Raft when it starts, so
   * every member's MemberList shows them once applied (etcd's publish: a proposal of
   * `/0/members/<id>/attributes`). `attributes` is their JSON text.
   */
  | { id: string; op: 'attributes'; memberId: bigint; attributes: string };

/** The format version written in the first byte of every encoded command. */
export const commandFormat = 1;
/** Nesting depth of txns inside txns that a command may carry (a bound on decoder recursion). */
export const txnDepthMax = 64;
/** The encoder keeps its scratch buffer between calls only up to this size (larger ones are dropped). */
export const commandScratchBytesKept = 1024 * 1024;

const Op_ = {
  put: 1,
  delete: 2,
  txn: 3,
  compact: 4,
  grant: 5,
  revoke: 6,
  auth: 7,
  alarm: 9,
  attributes: 10,
} as const;
/** The op code of the auth-revision prefix (see `AuthChecked`). */
const authCheckedCode = 8;
/** By op code; 8 is the auth-revision prefix, not an op. */
const opNames = [
  '',
  'put',
  'delete',
  'txn',
  'compact',
  'grant',
  'revoke',
  'auth',
  '',
  'alarm',
  'attributes',
] as const;
const alarmActions = ['', 'activate', 'deactivate'] as const;
const alarmTypes = ['', 'nospace', 'corrupt'] as const;
const txnOpTypes = ['get', 'put', 'delete', 'txn'] as const;
const compareTargets = ['version', 'create', 'mod', 'value', 'lease'] as const;
const compareResults = ['=', '!=', '<', '>'] as const;

// ---------------------------------------------------------------------------------------------
// Writer

let scratch: Buffer = Buffer.allocUnsafe(4096);
/** `scratch` as a plain Uint8Array (whose `slice` copies into a plain array). */
let scratchPlain: Uint8Array = new Uint8Array(scratch.buffer, scratch.byteOffset, scratch.length);
let pos = 0;

function setScratch(b: Buffer): void {
  scratch = b;
  scratchPlain = new Uint8Array(b.buffer, b.byteOffset, b.length);
}

function reserve(n: number): void {
  if (pos + n <= scratch.length) return;
  const next = Buffer.allocUnsafe(Math.max(scratch.length * 2, pos + n));
  scratch.copy(next, 0, 0, pos);
  setScratch(next);
}

function u8(v: number): void {
  reserve(1);
  scratch[pos++] = v;
}

function varint(v: number): void {
  reserve(8);
  while (v >= 0x80) {
    scratch[pos++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  scratch[pos++] = v;
}

function num(v: number): void {
  reserve(8);
  scratch.writeDoubleLE(v, pos);
  pos += 8;
}

function big(v: bigint): void {
  if (typeof v !== 'bigint' || v < -0x8000_0000_0000_0000n || v > 0x7fff_ffff_ffff_ffffn)
    throw new RangeError(`command: a lease id must be an int64 bigint, got ${String(v)}`);
  reserve(8);
  scratch.writeBigInt64LE(v, pos);
  pos += 8;
}

function bytes(b: Bytes): void {
  if (typeof b === 'string') {
    // Short ASCII strings (request ids, most keys) byte by byte: two native calls cost more.
    if (b.length < 0x80) {
      reserve(1 + b.length);
      const start = pos;
      scratch[pos++] = b.length;
      let i = 0;
      for (; i < b.length; i++) {
        const ch = b.charCodeAt(i);
        if (ch >= 0x80) break;
        scratch[pos++] = ch;
      }
      if (i === b.length) return;
      pos = start;
    }
    const n = Buffer.byteLength(b, 'utf8');
    varint(n);
    reserve(n);
    pos += scratch.write(b, pos, 'utf8');
    return;
  }
  varint(b.length);
  reserve(b.length);
  scratch.set(b, pos);
  pos += b.length;
}

/** Writes a presence mask for `fields` of `o`, then calls `write` for each present one. */
function optional<T extends object>(
  o: T | undefined,
  fields: readonly (keyof T)[],
  write: (f: keyof T, v: NonNullable<T[keyof T]>) => void,
): void {
  if (o === undefined || o === null) {
    varint(0);
    return;
  }
  let mask = 0;
  for (let i = 0; i < fields.length; i++)
    if (o[fields[i]!] !== undefined && o[fields[i]!] !== null) mask |= 1 << i;
  varint(mask * 2 + 1);
  if (mask === 0) return;
  for (let i = 0; i < fields.length; i++)
    if (mask & (1 << i)) write(fields[i]!, o![fields[i]!] as NonNullable<T[keyof T]>);
}

type PutOpts = Omit<PutOptions, 'signal'>;
type DelOpts = Omit<DeleteOptions, 'signal'>;
type GetOpts = Omit<RangeOptions, 'signal' | 'serializable'>;

const putFields = ['lease', 'prevKv', 'ignoreValue', 'ignoreLease'] as const;
const delFields = ['end', 'prefix', 'fromKey', 'prevKv'] as const;
const getFields = [
  'end',
  'prefix',
  'fromKey',
  'revision',
  'limit',
  'sort',
  'keysOnly',
  'countOnly',
  'minModRevision',
  'maxModRevision',
  'minCreateRevision',
  'maxCreateRevision',
] as const;
const selectorFields = ['end', 'prefix', 'fromKey'] as const;

/** Writes one field value by its JS type (the field lists above fix which type each field has). */
function field(v: unknown): void {
  if (typeof v === 'boolean') u8(v ? 1 : 0);
  else if (typeof v === 'number') num(v);
  else if (typeof v === 'bigint') big(v);
  else if (typeof v === 'string' || v instanceof Uint8Array) bytes(v);
  else throw new TypeError(`command: cannot encode a field of type ${typeof v}`);
}

function putOpts(o: PutOpts | undefined): void {
  optional(o, putFields, (f, v) => (f === 'lease' ? big(v as bigint) : u8(v ? 1 : 0)));
}

function delOpts(o: DelOpts | undefined): void {
  optional(o, delFields, (f, v) => (f === 'end' ? bytes(v as Bytes) : u8(v ? 1 : 0)));
}

function getOpts(o: GetOpts | undefined): void {
  optional(o, getFields, (f, v) => {
    if (f === 'end') bytes(v as Bytes);
    else if (f === 'sort') {
      const s = v as NonNullable<GetOpts['sort']>;
      optional(s, ['target', 'order'] as const, (_f, x) => bytes(String(x)));
    } else if (typeof v === 'number') num(v);
    else u8(v ? 1 : 0);
  });
}

function compare(c: Compare): void {
  const t = compareTargets.indexOf(c.target);
  const r = compareResults.indexOf(c.result);
  if (t < 0 || r < 0) throw new TypeError(`command: unknown compare ${String(c.target)} ${String(c.result)}`);
  u8((t << 4) | r);
  bytes(c.key);
  optional(c, selectorFields, (f, v) => (f === 'end' ? bytes(v as Bytes) : u8(v ? 1 : 0)));
  if (c.target === 'value') bytes(c.value);
  else if (c.target === 'lease') big(c.value);
  else num(c.value);
}

function op(o: Op, depth: number): void {
  switch (o.type) {
    case 'get':
      u8(0);
      bytes(o.key);
      getOpts(o.options);
      return;
    case 'put':
      u8(1);
      bytes(o.key);
      bytes(o.value);
      putOpts(o.options);
      return;
    case 'delete':
      u8(2);
      bytes(o.key);
      delOpts(o.options);
      return;
    case 'txn':
      u8(3);
      txn(o.txn, depth + 1);
      return;
    default:
      throw new TypeError(`command: unknown txn op ${String((o as { type: unknown }).type)}`);
  }
}

function txn(t: Txn, depth: number): void {
  if (depth > txnDepthMax) throw new RangeError(`command: txns nested deeper than ${txnDepthMax}`);
  const cs = t.compare ?? [];
  varint(cs.length);
  for (const c of cs) compare(c);
  for (const branch of [t.success ?? [], t.failure ?? []]) {
    varint(branch.length);
    for (const o of branch) op(o, depth);
  }
}

export function encodeCommand(c: Command): Uint8Array {
  pos = 0;
  try {
    u8(commandFormat);
    const ar = (c as AuthChecked).authRevision;
    if (ar !== undefined) {
      u8(authCheckedCode);
      num(ar);
    }
    u8(Op_[c.op]);
    bytes(c.id);
    switch (c.op) {
      case 'put':
        bytes(c.key);
        bytes(c.value);
        putOpts(c.opts);
        break;
      case 'delete':
        bytes(c.key);
        delOpts(c.opts);
        break;
      case 'txn':
        txn(c.txn, 0);
        break;
      case 'compact':
        num(c.revision);
        optional(c.opts, ['physical'] as const, (_f, v) => field(!!v));
        break;
      case 'grant':
        big(c.lease);
        num(c.ttlSeconds);
        break;
      case 'revoke':
        big(c.lease);
        break;
      case 'auth':
        bytes(c.change);
        break;
      case 'alarm':
        // [action u8][member ID: the uint64's bits as an int64][type u8]
        u8(alarmActions.indexOf(c.action));
        big(BigInt.asIntN(64, c.memberId));
        u8(alarmTypes.indexOf(c.alarm));
        break;
      case 'attributes':
        // [member ID: the uint64's bits as an int64][attributes: str]
        big(BigInt.asIntN(64, c.memberId));
        bytes(c.attributes);
        break;
      default:
        throw new TypeError(`command: unknown op ${String((c as { op: unknown }).op)}`);
    }
    return scratchPlain.slice(0, pos);
  } finally {
    if (scratch.length > commandScratchBytesKept) setScratch(Buffer.allocUnsafe(4096));
    pos = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Strings up to this many bytes are decoded char by char when they are ASCII. */
const strAsciiBytesMax = 32;

class Reader {
  readonly #b: Uint8Array;
  /** Made on the first number read (a plain put carries none). */
  #view: DataView | undefined;
  p = 0;

  constructor(b: Uint8Array) {
    this.#b = b;
  }

  get #dv(): DataView {
    this.#view ??= new DataView(this.#b.buffer, this.#b.byteOffset, this.#b.byteLength);
    return this.#view;
  }

  #need(n: number): void {
    if (this.p + n > this.#b.length) throw new RangeError(`truncated at byte ${this.p} (needs ${n} more)`);
  }

  u8(): number {
    this.#need(1);
    return this.#b[this.p++]!;
  }

  varint(): number {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if (b < 0x80) break;
      mul *= 0x80;
      if (mul > 2 ** 53) throw new RangeError(`varint too long at byte ${this.p}`);
    }
    return v;
  }

  num(): number {
    this.#need(8);
    const v = this.#dv.getFloat64(this.p, true);
    this.p += 8;
    return v;
  }

  big(): bigint {
    this.#need(8);
    const v = this.#dv.getBigInt64(this.p, true);
    this.p += 8;
    return v;
  }

  bool(): boolean {
    return this.u8() !== 0;
  }

  /** A view into the entry (see the module comment), always a plain `Uint8Array`. */
  bytes(): Uint8Array {
    const n = this.varint();
    this.#need(n);
    const out = new Uint8Array(this.#b.buffer, this.#b.byteOffset + this.p, n);
    this.p += n;
    return out;
  }

  str(): string {
    const n = this.varint();
    this.#need(n);
    const b = this.#b;
    const start = this.p;
    this.p += n;
    // Short ASCII strings (request ids) char by char: a Buffer and a native call cost more.
    if (n <= strAsciiBytesMax) {
      let s = '';
      let i = start;
      for (; i < start + n; i++) {
        const ch = b[i]!;
        if (ch >= 0x80) break;
        s += String.fromCharCode(ch);
      }
      if (i === start + n) return s;
    }
    return Buffer.from(b.buffer, b.byteOffset + start, n).toString('utf8');
  }

  get done(): boolean {
    return this.p === this.#b.length;
  }
}

/** Reads a presence mask and the present fields into a new object. */
function readOptional<T extends object>(
  r: Reader,
  fields: readonly (keyof T)[],
  read: (f: keyof T) => unknown,
): T | undefined {
  const m = r.varint();
  if (m === 0) return undefined;
  const mask = (m - 1) / 2;
  if (m % 2 === 0 || mask >= 1 << fields.length) throw new RangeError(`unknown option fields (${m})`);
  const o = {} as Record<keyof T, unknown>;
  for (let i = 0; i < fields.length; i++) if (mask & (1 << i)) o[fields[i]!] = read(fields[i]!);
  return o as T;
}

function readPutOpts(r: Reader): PutOpts | undefined {
  return readOptional<PutOpts>(r, putFields, (f) => (f === 'lease' ? r.big() : r.bool()));
}

function readDelOpts(r: Reader): DelOpts | undefined {
  return readOptional<DelOpts>(r, delFields, (f) => (f === 'end' ? r.bytes() : r.bool()));
}

function readGetOpts(r: Reader): GetOpts | undefined {
  return readOptional<GetOpts>(r, getFields, (f) => {
    if (f === 'end') return r.bytes();
    if (f === 'sort')
      return readOptional<NonNullable<GetOpts['sort']>>(r, ['target', 'order'], () => r.str()) ?? {};
    if (f === 'prefix' || f === 'fromKey' || f === 'keysOnly' || f === 'countOnly') return r.bool();
    return r.num();
  });
}

function readCompare(r: Reader): Compare {
  const tr = r.u8();
  const target = compareTargets[tr >> 4];
  const result = compareResults[tr & 0x0f];
  if (target === undefined || result === undefined) throw new RangeError(`unknown compare code ${tr}`);
  const key = r.bytes();
  const sel = readOptional<Pick<Compare, 'end' | 'prefix' | 'fromKey'>>(r, selectorFields, (f) =>
    f === 'end' ? r.bytes() : r.bool(),
  );
  const value = target === 'value' ? r.bytes() : target === 'lease' ? r.big() : r.num();
  return { key, ...sel, target, result, value } as Compare;
}

function readOp(r: Reader, depth: number): Op {
  const t = txnOpTypes[r.u8()];
  switch (t) {
    case 'get': {
      const key = r.bytes();
      const options = readGetOpts(r);
      return options ? { type: t, key, options } : { type: t, key };
    }
    case 'put': {
      const key = r.bytes();
      const value = r.bytes();
      const options = readPutOpts(r);
      return options ? { type: t, key, value, options } : { type: t, key, value };
    }
    case 'delete': {
      const key = r.bytes();
      const options = readDelOpts(r);
      return options ? { type: t, key, options } : { type: t, key };
    }
    case 'txn':
      return { type: t, txn: readTxn(r, depth + 1) };
    default:
      throw new RangeError('unknown txn op code');
  }
}

function readList<T>(r: Reader, read: () => T): T[] {
  const n = r.varint();
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(read());
  return out;
}

function readTxn(r: Reader, depth: number): Txn {
  if (depth > txnDepthMax) throw new RangeError(`txns nested deeper than ${txnDepthMax}`);
  const compare = readList(r, () => readCompare(r));
  const success = readList(r, () => readOp(r, depth));
  const failure = readList(r, () => readOp(r, depth));
  return { compare, success, failure };
}

function readBody(r: Reader): Command {
  let code = r.u8();
  let authRevision: number | undefined;
  if (code === authCheckedCode) {
    authRevision = r.num();
    code = r.u8();
    if (code !== Op_.put && code !== Op_.delete && code !== Op_.txn && code !== Op_.revoke)
      throw new RangeError(`op code ${code} after an auth revision`);
  }
  const c = readOp_(r, code);
  if (authRevision !== undefined) (c as AuthChecked).authRevision = authRevision;
  return c;
}

function readOp_(r: Reader, code: number): Command {
  const op = opNames[code];
  const id = r.str();
  switch (op) {
    case 'put': {
      const key = r.bytes();
      const value = r.bytes();
      return { id, op, key, value, opts: readPutOpts(r) ?? {} };
    }
    case 'delete': {
      const key = r.bytes();
      return { id, op, key, opts: readDelOpts(r) ?? {} };
    }
    case 'txn':
      return { id, op, txn: readTxn(r, 0) };
    case 'compact': {
      const revision = r.num();
      const opts = readOptional<Omit<CompactOptions, 'signal'>>(r, ['physical'], () => r.bool());
      return opts ? { id, op, revision, opts } : { id, op, revision };
    }
    case 'grant': {
      const lease = r.big();
      return { id, op, lease, ttlSeconds: r.num() };
    }
    case 'revoke':
      return { id, op, lease: r.big() };
    case 'auth':
      return { id, op, change: r.str() };
    case 'alarm': {
      const action = alarmActions[r.u8()];
      const memberId = BigInt.asUintN(64, r.big());
      const alarm = alarmTypes[r.u8()];
      if (!action || !alarm) throw new RangeError('an alarm command with an unknown action or type');
      return { id, op, action, memberId, alarm };
    }
    case 'attributes': {
      const memberId = BigInt.asUintN(64, r.big());
      return { id, op, memberId, attributes: r.str() };
    }
    default:
      throw new RangeError(`unknown op code ${code}`);
  }
}

/** Decodes an entry's command; a malformed or foreign payload fails `corrupt` (never a partial command). */
export function decodeCommand(data: Uint8Array): Command {
  const format = data[0];
  if (format !== commandFormat) {
    const what =
      format === 0x7b
        ? 'a JSON command written by an older Conclave (pre-1.0 data directories are not upgraded; start from an empty directory)'
        : `an unknown command format ${String(format)}`;
    throw new ConclaveError(ErrorCode.Corrupt, `raft log entry holds ${what}`);
  }
  const r = new Reader(data);
  r.p = 1;
  let c: Command;
  try {
    c = readBody(r);
  } catch (err) {
    throw new ConclaveError(
      ErrorCode.Corrupt,
      `raft log entry: malformed command (${(err as Error).message})`,
      { cause: err },
    );
  }
  if (!r.done)
    throw new ConclaveError(
      ErrorCode.Corrupt,
      `raft log entry: ${data.length - r.p} bytes after the command`,
    );
  return c;
}
