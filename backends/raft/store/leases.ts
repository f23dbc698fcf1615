/**
 * Leases (etcd's lessor): granted TTL and attached keys are replicated state; expiry deadlines and
 * the "being revoked" mark are volatile and belong to the lease primary (the leader, once it has
 * applied every entry of earlier terms): keep-alives refresh deadlines without a log entry, the
 * primary's expiry pass proposes revocations, and a new primary refreshes every lease (`promote`).
 *
 * The promise this file keeps: a renewal answered with TTL t at time T (the primary's clock) means
 * no revocation of that lease is decided before T + t. So a lease whose deadline has passed, or
 * whose revocation is proposed and not yet applied, is never renewed: `renew` answers `'expiring'`
 * and the caller waits for the revocation to apply, as etcd 3.4's lessor `Renew` waits on the
 * lease's revoke channel (or answers "not primary" if leadership moves first).
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

export interface Lease {
  readonly id: bigint;
  ttlSeconds: number;
  readonly grantedTtlSeconds: number;
  /** Attached keys (latin1 key strings). */
  readonly keys: Set<string>;
  /** Monotonic ms at which the lease expires (volatile; meaningful on the lease primary only). */
  expiryMs: number;
  /**
   * The primary decided to revoke it: its revocation is proposed and not yet applied (volatile).
   * Never renewed while set; cleared by `revokeFailed` (the next expiry pass proposes it again).
   */
  revoking: boolean;
}

/** A bound on leases held at once (etcd has none by default; a store fed by clients needs one). */
export const leasesMax = 1_000_000;

/** What `renew` found: the TTL granted (> 0), 0 for an unknown lease, or a lease that must not be renewed. */
export type Renewal = number | 'expiring';

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
      revoking: false,
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

  /** Forgets a lease (its revocation applied); false if it was unknown. */
  remove(id: bigint): boolean {
    return this.byId.delete(id);
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

  /**
   * Refreshes a live lease and returns its TTL; 0 when it is unknown (the holder has lost it).
   * `'expiring'` when its deadline has passed or its revocation is in flight: it is NOT refreshed
   * (etcd lessor.Renew: "a expired lease might be pending for revoking or going through quorum to
   * be revoked"); the caller waits for the revocation and then answers 0.
   */
  renew(id: bigint, nowMs: number): Renewal {
    const l = this.byId.get(id);
    if (!l) return 0;
    if (l.revoking || l.expiryMs <= nowMs) return 'expiring';
    l.expiryMs = nowMs + l.ttlSeconds * 1000;
    return l.ttlSeconds;
  }

  /** Whole seconds left (rounded up) as `timeToLive` reports them; 0 once expiring, -1 when unknown. */
  remainingSeconds(id: bigint, nowMs: number): number {
    const l = this.byId.get(id);
    if (!l) return -1;
    if (l.revoking) return 0;
    return Math.max(0, Math.ceil((l.expiryMs - nowMs) / 1000));
  }

  /**
   * The primary's expiry pass: marks every lease whose deadline has passed and that is not being
   * revoked yet as revoking, and returns their ids (the caller proposes their revocation).
   */
  startRevoking(nowMs: number): bigint[] {
    const out: bigint[] = [];
    for (const l of this.byId.values()) {
      if (l.revoking || l.expiryMs > nowMs) continue;
      l.revoking = true;
      out.push(l.id);
    }
    return out;
  }

  /**
   * A revocation proposal failed (dropped, timed out, leadership moved): the lease is no longer
   * marked, so the next expiry pass proposes it again. Its deadline has passed and nothing renewed
   * it meanwhile, so it is still expired and still refused by `renew`.
   */
  revokeFailed(id: bigint): void {
    const l = this.byId.get(id);
    if (l) l.revoking = false;
  }

  /**
   * A new primary refreshes every lease (etcd lessor.Promote): deadline = now + TTL + `extendMs`.
   * The previous primary's deadlines lived on its clock and are gone; `extendMs` (etcd: the
   * election timeout) covers keep-alives the previous leader answered before it noticed it was
   * deposed, so this member never expires a lease earlier than the previous one could have.
   * Revocation marks are cleared: the previous primary's proposals have either applied (the
   * caller promotes only after applying every entry of earlier terms) or never will.
   */
  promote(nowMs: number, extendMs = 0): void {
    for (const l of this.byId.values()) {
      l.expiryMs = nowMs + extendMs + l.ttlSeconds * 1000;
      l.revoking = false;
    }
  }
}
