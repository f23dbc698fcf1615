/**
 * Partitioner (OpenStack tooz's partitioned groups): assigns items — shard ids, tenant names — to
 * the live members of a group with a consistent hash ring, answered locally from the group's
 * cached member list, and reports which tracked items moved when a member joins or leaves, so a
 * worker fleet rebalances without a coordinator.
 *
 * The ring is a pure function of (member ids, their weights, `vnodes`): two processes that see
 * the same member list give the same answers (`buildRing`, `ringOwners`; the exact outputs are
 * pinned by test/unit/partitioner.test.ts).
 *
 * Ring: each member with weight w gets `max(1, round(vnodes × w))` points; point v of member id is
 * the first 48 bits (big-endian) of SHA-256(id + "\0" + v). Points are sorted by (hash, id). An
 * item hashes to the first 48 bits of SHA-256("item\0" + item); its owners are the distinct
 * members met walking the ring clockwise from the first point at or after that hash (wrapping),
 * `replicas` of them (fewer when the group is smaller). Adding or removing a member of weight w
 * among total weight W moves about w/W of the items, and only to or from that member.
 */
import { createHash } from 'node:crypto';
import { invalidArgument } from '../src/errors.js';
import type { CallOptions } from '../src/types.js';
import type { GroupChange, GroupMemberInfo, GroupView } from './group.js';
import { ChangeFeed } from './internal/change-feed.js';

/** Default virtual nodes per member of weight 1 (`vnodes`). */
export const partitionerVnodesDefault = 64;
/** Most points one ring may hold (members × vnodes × weight): it bounds memory and rebuild time. */
export const partitionerRingPointsMax = 1_000_000;
/** Most items a partitioner tracks for its moved-item reports. */
export const partitionerTrackedMax = 100_000;
/** Changes buffered per change iterator; past it the backlog merges into one change (`resync: 'overflow'`). */
export const partitionerChangesBufferedMax = 256;

interface State {
  readonly ring: Ring;
  readonly members: readonly GroupMemberInfo[];
  readonly revision: number;
}

/** A member as the ring sees it. */
export interface RingMember {
  readonly id: string;
  /** Relative share of items (default 1); a finite number > 0. */
  readonly weight?: number;
}

/** A built ring: sorted points and their member ids (parallel arrays). */
export interface Ring {
  readonly points: readonly number[];
  readonly ids: readonly string[];
  /** Distinct members on the ring. */
  readonly members: number;
}

const h48 = (s: string): number => createHash('sha256').update(s, 'utf8').digest().readUIntBE(0, 6);

/** The ring for these members (order of `members` does not matter). Pure. */
export function buildRing(members: readonly RingMember[], vnodes = partitionerVnodesDefault): Ring {
  if (!Number.isSafeInteger(vnodes) || vnodes < 1)
    invalidArgument('vnodes', `must be an integer >= 1, got ${vnodes}`);
  const seen = new Set<string>();
  const pts: Array<{ p: number; id: string }> = [];
  for (const m of members) {
    if (seen.has(m.id)) invalidArgument('members', `member id ${m.id} appears twice`);
    seen.add(m.id);
    const w = m.weight ?? 1;
    if (typeof w !== 'number' || !Number.isFinite(w) || w <= 0)
      invalidArgument('weight', `member ${m.id}: weight must be a finite number > 0, got ${w}`);
    const n = Math.max(1, Math.round(vnodes * w));
    if (pts.length + n > partitionerRingPointsMax)
      invalidArgument(
        'vnodes',
        `the ring would exceed partitionerRingPointsMax (${partitionerRingPointsMax}) points`,
      );
    for (let v = 0; v < n; v++) pts.push({ p: h48(`${m.id}\0${v}`), id: m.id });
  }
  pts.sort((a, b) => a.p - b.p || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return { points: pts.map((x) => x.p), ids: pts.map((x) => x.id), members: seen.size };
}

/**
 * The owners of `item` on `ring`: up to `replicas` distinct member ids, primary first, skipping the
 * members in `ignore` (tooz's `ignore_members`: e.g. members known to be draining). Pure.
 */
export function ringOwners(ring: Ring, item: string, replicas = 1, ignore?: Iterable<string>): string[] {
  if (!Number.isSafeInteger(replicas) || replicas < 1)
    invalidArgument('replicas', `must be an integer >= 1, got ${replicas}`);
  const n = ring.points.length;
  if (n === 0) return [];
  const skip = ignore === undefined ? undefined : new Set(ignore);
  const h = h48(`item\0${item}`);
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ring.points[mid]! < h) lo = mid + 1;
    else hi = mid;
  }
  const want = Math.min(replicas, ring.members);
  const out: string[] = [];
  for (let i = 0; out.length < want && i < n; i++) {
    const id = ring.ids[(lo + i) % n]!;
    if (!out.includes(id) && !skip?.has(id)) out.push(id);
  }
  return out;
}

/** A tracked item whose owners changed. */
export interface MovedItem {
  readonly item: string;
  readonly from: readonly string[];
  readonly to: readonly string[];
}

/** A membership change as the partitioner saw it. */
export interface PartitionChange {
  readonly revision: number;
  readonly joined: readonly string[];
  readonly left: readonly string[];
  /** Member ids on the new ring, sorted. */
  readonly members: readonly string[];
  /** Tracked items whose owners changed (with `replicas` owners each). */
  readonly moved: readonly MovedItem[];
  /** From the group view's re-read, when set. */
  readonly resync?: GroupChange['resync'];
}

/** Options of a `Partitioner`. */
export interface PartitionerOptions {
  /** Virtual nodes per member of weight 1 (default `limits.partitioner.vnodesDefault`). */
  readonly vnodes?: number;
  /** A member's weight from its stored data (default: every member weighs 1). Must be pure. */
  readonly weight?: (member: GroupMemberInfo) => number;
  /** Owners per item in `moved` reports (default 1). */
  readonly replicas?: number;
  /** Items to report moves for (more can be added with `track`). */
  readonly track?: Iterable<string>;
}

/**
 * Consistent-hash assignment over a live group view (a `GroupView`, or a `GroupMember`'s `view`).
 * `owners()` is answered locally from the ring of the members the partitioner last saw.
 */
export class Partitioner implements AsyncDisposable {
  readonly view: GroupView;
  readonly vnodes: number;
  readonly replicas: number;
  readonly #weight: (m: GroupMemberInfo) => number;
  readonly #tracked = new Set<string>();
  #ring: Ring;
  #members: readonly GroupMemberInfo[];
  #revision: number;
  readonly #stop = new AbortController();
  readonly #source: AsyncGenerator<GroupChange, void, undefined>;
  /** A consumer that fell behind gets one merged change from what it last saw to now. */
  readonly #feed = new ChangeFeed<PartitionChange, State>(partitionerChangesBufferedMax, (seen) => {
    const now = this.#state();
    return [{ change: this.#diff(seen, now, 'overflow'), after: now }];
  });
  readonly #running: Promise<void>;

  constructor(view: GroupView, opts: PartitionerOptions = {}) {
    this.view = view;
    this.vnodes = opts.vnodes ?? partitionerVnodesDefault;
    this.replicas = opts.replicas ?? 1;
    if (!Number.isSafeInteger(this.replicas) || this.replicas < 1)
      invalidArgument('replicas', `must be an integer >= 1, got ${this.replicas}`);
    this.#weight = opts.weight ?? (() => 1);
    if (opts.track) this.track(opts.track);
    // Subscribe before reading the members, so no change between the two is missed.
    this.#source = view.changes({ signal: this.#stop.signal });
    this.#members = view.members;
    this.#revision = view.revision;
    this.#ring = this.#build(this.#members);
    this.#running = this.#run();
  }

  /** The revision of the member list the ring was built from. */
  get revision(): number {
    return this.#revision;
  }

  /** Member ids on the ring, sorted. */
  get members(): readonly string[] {
    return this.#members.map((m) => m.id);
  }

  /** The current ring (pure data: `ringOwners(ring, item)` gives the same answers as `owners`). */
  get ring(): Ring {
    return this.#ring;
  }

  /**
   * Up to `replicas` member ids owning `item`, primary first; empty when the group is empty.
   * `ignore`: members to skip (the next ones on the ring take their place).
   */
  owners(item: string, replicas = this.replicas, opts: { ignore?: Iterable<string> } = {}): string[] {
    return ringOwners(this.#ring, item, replicas, opts.ignore);
  }

  /** The primary owner, or undefined when the group is empty. */
  owner(item: string): string | undefined {
    return ringOwners(this.#ring, item, 1)[0];
  }

  /** Of `items`, those `memberId` owns (as one of `replicas` owners). */
  ownedBy(memberId: string, items: Iterable<string>, replicas = this.replicas): string[] {
    const out: string[] = [];
    for (const i of items) if (ringOwners(this.#ring, i, replicas).includes(memberId)) out.push(i);
    return out;
  }

  /** Adds items to report moves for (bounded by `limits.partitioner.trackedMax`). */
  track(items: Iterable<string>): void {
    for (const i of items) {
      if (typeof i !== 'string') invalidArgument('items', 'Partitioner.track: items must be strings');
      if (!this.#tracked.has(i) && this.#tracked.size >= partitionerTrackedMax)
        invalidArgument('items', `at most ${partitionerTrackedMax} tracked items (partitionerTrackedMax)`);
      this.#tracked.add(i);
    }
  }

  /** Stops reporting moves of `items`. */
  untrack(items: Iterable<string>): void {
    for (const i of items) this.#tracked.delete(i);
  }

  /**
   * Every membership change after this call, with the tracked items that moved. A consumer more
   * than `limits.partitioner.changesBufferedMax` changes behind gets one merged change (`resync:
   * 'overflow'`) from what it last saw to now. Ends when the partitioner is closed or `signal`
   * fires; throws the view's error if the view stopped.
   */
  changes(opts: CallOptions = {}): AsyncGenerator<PartitionChange, void, undefined> {
    // Subscribed now (not at the first next()), so nothing after this call is missed.
    return this.#feed.subscribe(this.#state(), { signal: opts.signal });
  }

  /** `changes()`: every membership change after this call, with the tracked items that moved. */
  [Symbol.asyncIterator](): AsyncGenerator<PartitionChange, void, undefined> {
    return this.changes();
  }

  /** Stops following the view (the view itself stays open). */
  async close(): Promise<void> {
    this.#stop.abort();
    this.#feed.end();
    await this.#running;
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #state(): State {
    return { ring: this.#ring, members: this.#members, revision: this.#revision };
  }

  #build(members: readonly GroupMemberInfo[]): Ring {
    return buildRing(
      members.map((m) => ({ id: m.id, weight: this.#weight(m) })),
      this.vnodes,
    );
  }

  /** The change from one state to another: joins, leaves and the tracked items that moved. */
  #diff(from: State, to: State, resync: GroupChange['resync']): PartitionChange {
    const moved: MovedItem[] = [];
    for (const item of this.#tracked) {
      const a = ringOwners(from.ring, item, this.replicas);
      const b = ringOwners(to.ring, item, this.replicas);
      if (a.length !== b.length || a.some((x, i) => x !== b[i])) moved.push({ item, from: a, to: b });
    }
    const was = new Set(from.members.map((m) => m.id));
    const now = to.members.map((m) => m.id);
    const nowSet = new Set(now);
    return {
      revision: to.revision,
      joined: now.filter((id) => !was.has(id)),
      left: [...was].filter((id) => !nowSet.has(id)),
      members: now,
      moved,
      ...(resync ? { resync } : {}),
    };
  }

  async #run(): Promise<void> {
    let error: unknown;
    try {
      for await (const c of this.#source) {
        const before = this.#state();
        const after: State = { ring: this.#build(c.members), members: c.members, revision: c.revision };
        this.#ring = after.ring;
        this.#members = after.members;
        this.#revision = after.revision;
        const change = this.#diff(before, after, c.resync);
        // Weight-only updates that move nothing are not reported.
        if (change.joined.length + change.left.length + change.moved.length === 0 && !c.resync) continue;
        this.#feed.publish(change, after);
      }
    } catch (err) {
      if (!this.#stop.signal.aborted) error = err;
    } finally {
      this.#feed.end(error);
    }
  }
}
