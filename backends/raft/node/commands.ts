/**
 * Commands carried in Raft log entries. Encoding: JSON with tagged bytes ({"$b": base64}) and
 * bigints ({"$n": decimal}), so values and lease ids round-trip exactly. Every command carries a
 * request id, unique per proposer, so the proposing member can match the applied result.
 */
import type { CompactOptions, DeleteOptions, PutOptions, Txn } from '../../../src/types.js';

export type Command =
  | { id: string; op: 'put'; key: Uint8Array; value: Uint8Array; opts: Omit<PutOptions, 'signal'> }
  | { id: string; op: 'delete'; key: Uint8Array; opts: Omit<DeleteOptions, 'signal'> }
  | { id: string; op: 'txn'; txn: Txn }
  | { id: string; op: 'compact'; revision: number; opts?: Omit<CompactOptions, 'signal'> }
  | { id: string; op: 'grant'; lease: bigint; ttlSeconds: number }
  | { id: string; op: 'revoke'; lease: bigint };

export function encodeCommand(c: Command): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify(c, (_k, v) => {
      if (typeof v === 'bigint') return { $n: v.toString() };
      if (v instanceof Uint8Array)
        return { $b: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
      if (v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data))
        return { $b: Buffer.from(v.data).toString('base64') };
      return v;
    }),
  );
}

export function decodeCommand(data: Uint8Array): Command {
  return JSON.parse(new TextDecoder().decode(data), (_k, v) => {
    if (v && typeof v === 'object') {
      if (typeof v.$n === 'string') return BigInt(v.$n);
      if (typeof v.$b === 'string') return new Uint8Array(Buffer.from(v.$b, 'base64'));
    }
    return v;
  }) as Command;
}
