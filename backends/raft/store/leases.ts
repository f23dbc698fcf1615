/**
 * Leases (etcd's lessor): granted TTL and attached keys are replicated state; expiry deadlines are
 * volatile and belong to the leader's clock (keep-alives refresh them without a log entry; a new
 * leader refreshes every lease with `promote`).
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

export interface Lease {
  readonly id: bigint;
  ttlSeconds: number;
  readonly grantedTtlSeconds: number;
  /** Attached keys (latin1 key strings). */
  readonly keys: Set<string>;
  /** Monotonic ms at which the lease expires (volatile; leader only). */
  expiryMs: number;
}

/** A bound on leases held at once (etcd has none by default; a store fed by clients needs one). */
export const leasesMax = 1_000_000;

export class Leases {
  readonly byId = new Map<bigint, Lease>();
  constructor(readonly minTtlSeconds: number) {}

  grant(id: bigint, ttlSeconds: number, nowMs: number): Lease {
    if (this.byId.has(id)) throw new ConclaveError(ErrorCode.InvalidArgument, 'lease already exists');
    if (this.byId.size >= leasesMax)
      throw new ConclaveError(ErrorCode.TooManyRequests, `too many leases (max ${leasesMax})`);
    const ttl = Math.max(ttlSeconds, this.minTtlSeconds);
    const l: Lease = {
      id,
      ttlSeconds: ttl,
      grantedTtlSeconds: ttl,
      keys: new Set(),
      expiryMs: nowMs + ttl * 1000,
    };
    this.byId.set(id, l);
    return l;
  }

  get(id: bigint): Lease | undefined {
    return this.byId.get(id);
  }

  require(id: bigint): Lease {
    const l = this.byId.get(id);
    if (!l) throw new ConclaveError(ErrorCode.LeaseNotFound, 'lease: requested lease not found');
    return l;
  }

  attach(id: bigint, key: string, undo?: Array<() => void>): void {
    const l = id !== 0n ? this.byId.get(id) : undefined;
    if (!l || l.keys.has(key)) return;
    l.keys.add(key);
    undo?.push(() => l.keys.delete(key));
  }

  detach(id: bigint, key: string, undo?: Array<() => void>): void {
    const l = id !== 0n ? this.byId.get(id) : undefined;
    if (!l?.keys.has(key)) return;
    l.keys.delete(key);
    undo?.push(() => l.keys.add(key));
  }

  /** Refreshes a lease; returns the TTL, or 0 when it is unknown (the holder has lost it). */
  renew(id: bigint, nowMs: number): number {
    const l = this.byId.get(id);
    if (!l) return 0;
    l.expiryMs = nowMs + l.ttlSeconds * 1000;
    return l.ttlSeconds;
  }

  remainingSeconds(id: bigint, nowMs: number): number {
    const l = this.byId.get(id);
    if (!l) return -1;
    return Math.max(0, Math.ceil((l.expiryMs - nowMs) / 1000));
  }

  /** Ids whose deadline has passed (the leader proposes their revocation). */
  expired(nowMs: number): bigint[] {
    const out: bigint[] = [];
    for (const l of this.byId.values()) if (l.expiryMs <= nowMs) out.push(l.id);
    return out;
  }

  /** A new leader gives every lease its full TTL again (etcd's Promote). */
  promote(nowMs: number): void {
    for (const l of this.byId.values()) l.expiryMs = nowMs + l.ttlSeconds * 1000;
  }
}
