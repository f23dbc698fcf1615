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
 *
 * Cost (etcd's lessor keeps a heap of expiries, lease/lease_queue.go): an expiry pass and a
 * renewal cost O(log n) or less, never a walk over every lease, so an idle primary's tick does
 * not grow with the number of leases; `promote` is O(1). Deadlines live in two forms:
 * - set in the current promotion epoch (granted, renewed, restored, or being revoked): explicit
 *   in `expiryMs`, kept in a binary min-heap indexed by each lease's `heapIndex`;
 * - not touched since the last `promote`: `promotedAt + ttl`, the same for every lease of one TTL,
 *   so they are found in (TTL, id) order through a B+ tree of every lease (sorted-btree) by a
 *   cursor that passes each lease at most once per epoch (leases renewed meanwhile are skipped:
 *   the heap has them). The cursor walks at most `expiryScanMax` leases per pass, so the moment
 *   one TTL's leases all pass their promoted deadline costs a few bounded passes, not one long one.
 */
import BTreeModule from 'sorted-btree';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

// sorted-btree ships CommonJS with `default` as the class.
const BTree = ((BTreeModule as unknown as { default?: unknown }).default ??
  BTreeModule) as typeof import('sorted-btree').default;
type BTree<K, V> = import('sorted-btree').default<K, V>;

export interface Lease {
  readonly id: bigint;
  ttlSeconds: number;
  readonly grantedTtlSeconds: number;
  /** Attached keys (latin1 key strings). */
  readonly keys: Set<string>;
  /**
   * Monotonic ms at which the lease expires (volatile; meaningful on the lease primary only), when
   * set in the current promotion epoch; else the deadline is the promotion's (`Leases.deadline`).
   * Changed only by `Leases`.
   */
  expiryMs: number;
  /**
   * The primary decided to revoke it: its revocation is proposed and not yet applied (volatile).
   * Never renewed while set; cleared by `revokeFailed` (the next expiry pass proposes it again) and
   * by `promote`. Meaningful in the current promotion epoch only (`Leases.isRevoking`).
   */
  revoking: boolean;
  /** The promotion epoch `expiryMs` and `revoking` belong to (set by `Leases`). */
  epoch?: number;
  /** Position in the deadline heap; -1 when not in it (set by `Leases`). */
  heapIndex?: number;
}

/** A bound on leases held at once (etcd has none by default; a store fed by clients needs one). */
export const leasesMax = 1_000_000;

/**
 * Leases not renewed since the last promotion that one expiry pass looks at, at most (each is
 * looked at once per promotion): bounds a pass when many leases of one TTL reach their promoted
 * deadline together; the rest are found by the next passes (a tick apart on a Raft member).
 */
export const expiryScanMax = 4096;

/** What `renew` found: the TTL granted (> 0), 0 for an unknown lease, or a lease that must not be renewed. */
export type Renewal = number | 'expiring';

const byTtlThenId = (a: Lease, b: Lease): number =>
  a.ttlSeconds - b.ttlSeconds || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/**
 * The leases by id. Every change goes through `set`, `delete` and `clear` (also from outside: a
 * snapshot restore fills it), which keep the deadline indexes in step.
 */
class LeaseMap extends Map<bigint, Lease> {
  #owner: Leases | undefined;

  attach(owner: Leases): void {
    this.#owner = owner;
  }

  override set(id: bigint, l: Lease): this {
    const old = super.get(id);
    if (old === l) return this; // already held and indexed
    if (old !== undefined) this.#owner?.unindex(old);
    super.set(id, l);
    this.#owner?.index(l);
    return this;
  }

  override delete(id: bigint): boolean {
    const l = super.get(id);
    if (l === undefined) return false;
    super.delete(id);
    this.#owner?.unindex(l);
    return true;
  }

  override clear(): void {
    super.clear();
    this.#owner?.unindexAll();
  }
}

export class Leases {
  readonly byId: Map<bigint, Lease>;
  /** Promotions so far: `expiryMs` and `revoking` of a lease from an earlier epoch are void. */
  #epoch = 0;
  /** The current promotion's base: an untouched lease's deadline is this + its TTL. */
  #promotedAtMs = 0;
  /** Leases with an explicit deadline in this epoch, not being revoked: a min-heap on `expiryMs`. */
  #heap: Lease[] = [];
  /** Every lease in (TTL, id) order: the promoted deadlines' order. */
  readonly #byTtl: BTree<Lease, undefined> = new BTree<Lease, undefined>(undefined, byTtlThenId);
  /** The last lease the promoted-deadline cursor passed in this epoch (undefined: none yet). */
  #cursor: Lease | undefined;
  /** No promoted deadline falls before this (the cursor's next lease's), so a pass need not look. */
  #scanFromMs = Number.POSITIVE_INFINITY;
  /**
   * Leases the expiry passes have looked at so far (taken off the heap, or stepped to by the
   * promoted-deadline cursor): what a pass costs, counted for tests (an idle pass adds 0).
   */
  visited = 0;

  constructor(readonly minTtlSeconds: number) {
    const map = new LeaseMap();
    map.attach(this);
    this.byId = map;
  }

  /** Indexes a lease added to `byId` (its `expiryMs` and `revoking` count as this epoch's). */
  index(l: Lease): void {
    l.epoch = this.#epoch;
    l.heapIndex = -1;
    this.#byTtl.set(l, undefined);
    if (!l.revoking) this.#push(l);
  }

  /** Drops a lease removed from `byId` from the indexes. */
  unindex(l: Lease): void {
    this.#byTtl.delete(l);
    if (l.epoch === this.#epoch && (l.heapIndex ?? -1) >= 0) this.#removeAt(l.heapIndex!);
    l.heapIndex = -1;
  }

  /** `byId` was cleared. */
  unindexAll(): void {
    for (const l of this.#heap) l.heapIndex = -1;
    this.#heap = [];
    this.#byTtl.clear();
    this.#cursor = undefined;
    this.#scanFromMs = Number.POSITIVE_INFINITY;
  }

  /** The lease's deadline (monotonic ms) on this member's clock. */
  deadline(l: Lease): number {
    return l.epoch === this.#epoch ? l.expiryMs : this.#promotedAtMs + l.ttlSeconds * 1000;
  }

  /** Whether the lease's revocation is proposed and not yet applied (this epoch's mark). */
  isRevoking(l: Lease): boolean {
    return l.epoch === this.#epoch && l.revoking;
  }

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
      epoch: this.#epoch,
      heapIndex: -1,
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
    if (this.isRevoking(l) || this.deadline(l) <= nowMs) return 'expiring';
    const expiry = nowMs + l.ttlSeconds * 1000;
    if (l.epoch === this.#epoch && (l.heapIndex ?? -1) >= 0) {
      l.expiryMs = expiry;
      this.#fix(l.heapIndex!);
    } else {
      // First renewal since the promotion: the deadline becomes explicit (the cursor skips it).
      l.epoch = this.#epoch;
      l.revoking = false;
      l.expiryMs = expiry;
      this.#push(l);
    }
    return l.ttlSeconds;
  }

  /** Whole seconds left (rounded up) as `timeToLive` reports them; 0 once expiring, -1 when unknown. */
  remainingSeconds(id: bigint, nowMs: number): number {
    const l = this.byId.get(id);
    if (!l) return -1;
    if (this.isRevoking(l)) return 0;
    return Math.max(0, Math.ceil((this.deadline(l) - nowMs) / 1000));
  }

  /**
   * The primary's expiry pass: marks every lease whose deadline has passed and that is not being
   * revoked yet as revoking, and returns their ids (the caller proposes their revocation). At most
   * `max` ids; the promoted-deadline cursor looks at most `expiryScanMax` leases: what is left is
   * returned by the next passes. Costs O(log n) per lease returned, and O(1) when none is due.
   */
  startRevoking(nowMs: number, max = Number.POSITIVE_INFINITY): bigint[] {
    const out: bigint[] = [];
    const heap = this.#heap;
    while (heap.length > 0 && heap[0]!.expiryMs <= nowMs && out.length < max) {
      const l = this.#removeAt(0);
      this.visited++;
      l.revoking = true;
      out.push(l.id);
    }
    if (nowMs < this.#scanFromMs) return out;
    for (let scanned = 0; scanned < expiryScanMax && out.length < max; scanned++) {
      const next = this.#byTtl.nextHigherKey(this.#cursor);
      this.visited++;
      if (next === undefined) {
        this.#scanFromMs = Number.POSITIVE_INFINITY;
        return out;
      }
      const due = this.#promotedAtMs + next.ttlSeconds * 1000;
      if (due > nowMs) {
        this.#scanFromMs = due;
        return out;
      }
      this.#cursor = next;
      // Touched in this epoch (renewed, granted, restored or being revoked): the heap has it.
      if (next.epoch === this.#epoch) continue;
      next.epoch = this.#epoch;
      next.expiryMs = due;
      next.heapIndex = -1;
      next.revoking = true;
      out.push(next.id);
    }
    // Bounded: look again on the next pass.
    this.#scanFromMs = nowMs;
    return out;
  }

  /**
   * A revocation proposal failed (dropped, timed out, leadership moved): the lease is no longer
   * marked, so the next expiry pass proposes it again. Its deadline has passed and nothing renewed
   * it meanwhile, so it is still expired and still refused by `renew`.
   */
  revokeFailed(id: bigint): void {
    const l = this.byId.get(id);
    if (!l || !this.isRevoking(l)) return;
    l.revoking = false;
    this.#push(l);
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
    // O(1): every deadline and mark of the earlier epoch is void; untouched leases' deadlines are
    // `promotedAt + TTL`, found in TTL order by the cursor (no walk over the leases here).
    this.#epoch++;
    this.#promotedAtMs = nowMs + extendMs;
    this.#heap = [];
    this.#cursor = undefined;
    this.#scanFromMs = Number.NEGATIVE_INFINITY;
  }

  /** Throws if the heap or the epoch marks are inconsistent; for tests. O(n). */
  checkInvariants(): void {
    const heap = this.#heap;
    for (let i = 0; i < heap.length; i++) {
      const l = heap[i]!;
      if (l.heapIndex !== i || l.epoch !== this.#epoch || l.revoking)
        throw new Error(`lease heap: entry ${i}`);
      if (i > 0 && heap[(i - 1) >> 1]!.expiryMs > l.expiryMs) throw new Error(`lease heap: order at ${i}`);
      if (this.byId.get(l.id) !== l) throw new Error(`lease heap: ${l.id} is not held`);
    }
    if (this.#byTtl.size !== this.byId.size) throw new Error('lease index: size');
    for (const l of this.byId.values()) {
      const inHeap = l.epoch === this.#epoch && (l.heapIndex ?? -1) >= 0;
      if (l.epoch === this.#epoch && !l.revoking && !inHeap)
        throw new Error(`lease ${l.id}: lost its deadline`);
    }
  }

  // A binary min-heap on expiryMs; each lease knows its index (heapIndex), so a renewal moves it in place.

  #push(l: Lease): void {
    l.heapIndex = this.#heap.length;
    this.#heap.push(l);
    this.#up(l.heapIndex);
  }

  #removeAt(i: number): Lease {
    const heap = this.#heap;
    const l = heap[i]!;
    const last = heap.pop()!;
    if (last !== l) {
      heap[i] = last;
      last.heapIndex = i;
      this.#fix(i);
    }
    l.heapIndex = -1;
    return l;
  }

  #fix(i: number): void {
    if (!this.#up(i)) this.#down(i);
  }

  #up(i: number): boolean {
    const heap = this.#heap;
    const l = heap[i]!;
    let moved = false;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = heap[p]!;
      if (parent.expiryMs <= l.expiryMs) break;
      heap[i] = parent;
      parent.heapIndex = i;
      i = p;
      moved = true;
    }
    heap[i] = l;
    l.heapIndex = i;
    return moved;
  }

  #down(i: number): void {
    const heap = this.#heap;
    const n = heap.length;
    const l = heap[i]!;
    while (true) {
      const a = 2 * i + 1;
      if (a >= n) break;
      const b = a + 1;
      const c = b < n && heap[b]!.expiryMs < heap[a]!.expiryMs ? b : a;
      if (heap[c]!.expiryMs >= l.expiryMs) break;
      heap[i] = heap[c]!;
      heap[i]!.heapIndex = i;
      i = c;
    }
    heap[i] = l;
    l.heapIndex = i;
  }
}
