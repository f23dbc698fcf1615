/**
 * Loads the etcd v3 wire definitions (etcd.proto beside this file) with protobufjs and offers the
 * small conversions both sides of the wire need: int64 fields decode as `Long` (or number) and are
 * turned into `number` revisions or `bigint` lease ids here, never through floating point for ids.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

type Type = protobuf.Type;

function loadRoot(): protobuf.Root {
  // In the source tree the .proto sits beside this file; in dist/ the build copies it there too.
  const path = fileURLToPath(new URL('./etcd.proto', import.meta.url));
  const parsed = protobuf.parse(readFileSync(path, 'utf8'), { keepCase: false });
  return parsed.root;
}

export const root = loadRoot();

function t(name: string): Type {
  return root.lookupType(`etcdserverpb.${name}`);
}

/** Message types by name, resolved once. */
export const pb = {
  RangeRequest: t('RangeRequest'),
  RangeResponse: t('RangeResponse'),
  PutRequest: t('PutRequest'),
  PutResponse: t('PutResponse'),
  DeleteRangeRequest: t('DeleteRangeRequest'),
  DeleteRangeResponse: t('DeleteRangeResponse'),
  TxnRequest: t('TxnRequest'),
  TxnResponse: t('TxnResponse'),
  CompactionRequest: t('CompactionRequest'),
  CompactionResponse: t('CompactionResponse'),
  WatchRequest: t('WatchRequest'),
  WatchResponse: t('WatchResponse'),
  LeaseGrantRequest: t('LeaseGrantRequest'),
  LeaseGrantResponse: t('LeaseGrantResponse'),
  LeaseRevokeRequest: t('LeaseRevokeRequest'),
  LeaseRevokeResponse: t('LeaseRevokeResponse'),
  LeaseKeepAliveRequest: t('LeaseKeepAliveRequest'),
  LeaseKeepAliveResponse: t('LeaseKeepAliveResponse'),
  LeaseTimeToLiveRequest: t('LeaseTimeToLiveRequest'),
  LeaseTimeToLiveResponse: t('LeaseTimeToLiveResponse'),
  LeaseLeasesRequest: t('LeaseLeasesRequest'),
  LeaseLeasesResponse: t('LeaseLeasesResponse'),
  StatusRequest: t('StatusRequest'),
  StatusResponse: t('StatusResponse'),
  AuthenticateRequest: t('AuthenticateRequest'),
  AuthenticateResponse: t('AuthenticateResponse'),
} as const;

/** gRPC method paths (`/package.Service/Method`), as etcd serves them. */
export const methods = {
  range: '/etcdserverpb.KV/Range',
  put: '/etcdserverpb.KV/Put',
  deleteRange: '/etcdserverpb.KV/DeleteRange',
  txn: '/etcdserverpb.KV/Txn',
  compact: '/etcdserverpb.KV/Compact',
  watch: '/etcdserverpb.Watch/Watch',
  leaseGrant: '/etcdserverpb.Lease/LeaseGrant',
  leaseRevoke: '/etcdserverpb.Lease/LeaseRevoke',
  leaseKeepAlive: '/etcdserverpb.Lease/LeaseKeepAlive',
  leaseTimeToLive: '/etcdserverpb.Lease/LeaseTimeToLive',
  leaseLeases: '/etcdserverpb.Lease/LeaseLeases',
  status: '/etcdserverpb.Maintenance/Status',
  authenticate: '/etcdserverpb.Auth/Authenticate',
} as const;

export function encoder(type: Type): (msg: object) => Buffer {
  return (msg) => {
    const bytes = type.encode(msg as Record<string, unknown>).finish();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function decoder<T>(type: Type): (buf: Buffer) => T {
  return (buf) => type.decode(buf) as unknown as T;
}

/** A decoded int64: protobufjs yields a Long-like object, or a number for small values. */
export type Int64 =
  | number
  | { low: number; high: number; unsigned?: boolean; toNumber(): number }
  | null
  | undefined;

/** int64 → number (revisions, counts, TTLs: all far below 2^53). */
export function num(v: Int64): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'number') return v;
  return v.toNumber();
}

/** int64/uint64 → bigint, exactly (lease ids, member ids). */
export function big(v: Int64, unsigned = false): bigint {
  if (v === null || v === undefined) return 0n;
  if (typeof v === 'number') return BigInt(v);
  const n = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  return unsigned || v.unsigned ? n : BigInt.asIntN(64, n);
}

/** bigint → the decimal string protobufjs accepts for an int64 field without precision loss. */
export function int64(v: bigint | number): string | number {
  return typeof v === 'number' ? v : v.toString();
}
