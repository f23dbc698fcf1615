/** Byte and key helpers shared by the contract, recipes and backends. */
import { ConclaveError, ErrorCode } from './errors.js';
import type { Bytes, KeySelector, LeaseId } from './types.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false });

export const EMPTY = new Uint8Array(0);
/** etcd's "\0" range end: every key >= the start key. */
export const ZERO_KEY = new Uint8Array([0]);

/** `b` as bytes: a string is encoded as UTF-8, bytes are returned as they are. */
export function toBytes(b: Bytes): Uint8Array {
  if (typeof b === 'string') return encoder.encode(b);
  if (b instanceof Uint8Array) return b;
  throw new ConclaveError(ErrorCode.InvalidArgument, `expected a Uint8Array or string, got ${describe(b)}`);
}

/** `b` decoded as UTF-8 (invalid sequences become U+FFFD). */
export function toText(b: Uint8Array): string {
  return decoder.decode(b);
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}

/** Byte-wise comparison, as etcd orders keys. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * The smallest key greater than every key with this prefix (etcd's `GetPrefixRangeEnd`): the
 * prefix with its last non-0xff byte incremented and the rest dropped; `"\0"` (all keys) when the
 * prefix is empty or all 0xff.
 */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i]! < 0xff) {
      const end = prefix.slice(0, i + 1);
      end[i]! += 1;
      return end;
    }
  }
  return ZERO_KEY;
}

/**
 * Resolve a key selector to etcd's wire form `[key, rangeEnd)`: an empty `rangeEnd` is the single
 * key; `"\0"` is every key >= key. Throws `TypeError` on conflicting options.
 */
export function resolveRange(key: Bytes, sel: KeySelector | undefined): { key: Uint8Array; end: Uint8Array } {
  const k = toBytes(key);
  if (!sel) return { key: k, end: EMPTY };
  const chosen = (sel.end !== undefined ? 1 : 0) + (sel.prefix ? 1 : 0) + (sel.fromKey ? 1 : 0);
  if (chosen > 1)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'range: use only one of `end`, `prefix` and `fromKey`',
    );
  if (sel.prefix) {
    // An empty prefix means every key, as etcd's clientv3.WithPrefix on "".
    return k.length === 0 ? { key: ZERO_KEY, end: ZERO_KEY } : { key: k, end: prefixEnd(k) };
  }
  if (sel.fromKey) return { key: k.length === 0 ? ZERO_KEY : k, end: ZERO_KEY };
  if (sel.end !== undefined) return { key: k, end: toBytes(sel.end) };
  return { key: k, end: EMPTY };
}

/** Lease id in etcd's lowercase hex form (as used in Go recipe keys and etcdctl output). */
export function leaseHex(id: LeaseId): string {
  if (typeof id !== 'bigint')
    throw new ConclaveError(ErrorCode.InvalidArgument, `lease id must be a bigint, got ${describe(id)}`);
  return BigInt.asUintN(64, id).toString(16);
}
