/**
 * Group membership (Apache Curator's GroupMember, tooz's groups): processes join a named group
 * with some member data bound to their Session, and anyone can keep a live list of the members and
 * a stream of joins, leaves and updates.
 *
 * Layout (the naming rules): member `id` of group `name` is the key `name + "/" + id`, under the
 * member's session lease, whose value is the member's data as given (bytes; no envelope), so
 * `etcdctl get --prefix name/` lists the members and a member leaves when its key is deleted —
 * by `leave()`, or with its lease when its session is lost. Ids are unique per group: joining
 * with an id another session holds is refused with `conflict`. Join order is the keys' create
 * revisions (`member.createRevision`): the oldest member is the one with the lowest.
 *
 * The live list is a PrefixCache of `name/` (prefix-cache.ts): exact at a revision, resynced
 * after compaction or a broken watch, bounded by `membersMax`.
 */
import { ConclaveError, ErrorCode, invalidArgument } from '../src/errors.js';
import { toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Session } from '../src/session.js';
import type { Bytes, CallOptions, KeyValue } from '../src/types.js';
import { sessionLossController } from './internal/session-state.js';
import { PrefixCache, type PrefixCacheChange, type PrefixCacheResync } from './prefix-cache.js';

/** Default most members a group view holds (`membersMax`); a larger group stops the view with `too-many-requests`. */
export const groupMembersMax = 10_000;
/** Default most bytes of member data a group view holds (`dataBytesMax`): 16 MiB. */
export const groupDataBytesMax = 16 * 1024 * 1024;
/** Default changes buffered per change iterator; past it the iterator gets one resync change. */
export const groupChangesBufferedMax = 256;

/** One member as stored. */
export interface GroupMemberInfo {
  readonly id: string;
  /** The member's key: `group + "/" + id`. */
  readonly key: string;
  readonly data: Uint8Array;
  /** The member's session lease. */
  readonly lease: bigint;
  /** When it joined (its key's create revision); lower joined earlier. */
  readonly createRevision: number;
  /** When its data last changed. */
  readonly modRevision: number;
}

/** Members that joined, left or changed their data, taking the group to `revision`. */
export interface GroupChange {
  readonly revision: number;
  readonly joined: readonly GroupMemberInfo[];
  readonly left: readonly GroupMemberInfo[];
  readonly updated: readonly GroupMemberInfo[];
  /** Every member after this change, sorted by id. */
  readonly members: readonly GroupMemberInfo[];
  /** Set when the change comes from a re-read (compaction, broken watch) or a backlog merged (overflow). */
  readonly resync?: PrefixCacheResync;
}

export interface GroupViewOptions extends CallOptions {
  /** Default `limits.group.membersMax`. */
  readonly membersMax?: number;
  /** Default `limits.group.dataBytesMax`. */
  readonly dataBytesMax?: number;
  /** Default `limits.group.changesBufferedMax`. */
  readonly changesBufferedMax?: number;
}

function checkGroupName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0)
    invalidArgument('group name', 'must be a non-empty string');
}

/**
 * A live, read-only view of a group's members (no need to join). `members` is sorted by id and
 * exact at `revision`; `changes()` streams joins, leaves and updates.
 */
export class GroupView implements AsyncDisposable, AsyncIterable<GroupChange> {
  readonly group: string;
  readonly #prefix: string;
  readonly #cache: PrefixCache;
  #sorted: GroupMemberInfo[] | undefined;
  #sortedAt = -1;

  private constructor(kv: KV, group: string, opts: GroupViewOptions) {
    this.group = group;
    this.#prefix = `${group}/`;
    const membersMax = opts.membersMax ?? groupMembersMax;
    const dataMax = opts.dataBytesMax ?? groupDataBytesMax;
    this.#cache = new PrefixCache(kv, this.#prefix, {
      keysMax: membersMax,
      // Keys count too: bound them by the same member count (a key is the group name + an id).
      bytesMax: dataMax + membersMax * (toBytes(this.#prefix).length + 256),
      changesBufferedMax: opts.changesBufferedMax ?? groupChangesBufferedMax,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  /** Reads the members and starts following the group. */
  static async start(kv: KV, group: string, opts: GroupViewOptions = {}): Promise<GroupView> {
    checkGroupName(group);
    const v = new GroupView(kv, group, opts);
    await v.#cache.start();
    return v;
  }

  /** The store revision the member list is exact at. */
  get revision(): number {
    return this.#cache.revision;
  }

  /** The error that stopped the view, if it failed. */
  get error(): unknown {
    return this.#cache.error;
  }

  /** Every member, sorted by id. */
  get members(): readonly GroupMemberInfo[] {
    if (this.#sorted === undefined || this.#sortedAt !== this.#cache.revision) {
      this.#sorted = this.#cache.list().map((kv) => this.#member(kv));
      this.#sortedAt = this.#cache.revision;
    }
    return this.#sorted;
  }

  /** One member by id. */
  member(id: string): GroupMemberInfo | undefined {
    const kv = this.#cache.get(`${this.#prefix}${id}`);
    return kv ? this.#member(kv) : undefined;
  }

  /** Resolves once the view reflects the store at `revision` (e.g. a join's) or later. */
  ready(revision?: number, opts: CallOptions = {}): Promise<void> {
    return this.#cache.ready(revision, opts);
  }

  /**
   * Changes applied after this call, in order. A consumer more than `changesBufferedMax` behind
   * gets one change (`resync: 'overflow'`) from what it last saw to now. Ends after `close()`.
   */
  changes(opts: CallOptions = {}): AsyncGenerator<GroupChange, void, undefined> {
    // Subscribe now (not at the first next()), so nothing applied after this call is missed; keep
    // the members as this iterator last reported them, to turn a reset into joins and leaves.
    const seen = new Map<string, GroupMemberInfo>(this.members.map((m) => [m.id, m]));
    const source = this.#cache.changes(opts);
    const self = this;
    return (async function* () {
      for await (const c of source) yield self.#change(c, seen);
    })();
  }

  /** `changes()`: every change after this call. */
  [Symbol.asyncIterator](): AsyncGenerator<GroupChange, void, undefined> {
    return this.changes();
  }

  /** Stops the view: iterators deliver what they buffered, then end. Idempotent. */
  close(): Promise<void> {
    return this.#cache.close();
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #member(kv: KeyValue): GroupMemberInfo {
    const key = toText(kv.key);
    return {
      id: key.slice(this.#prefix.length),
      key,
      data: kv.value,
      lease: kv.lease,
      createRevision: kv.createRevision,
      modRevision: kv.modRevision,
    };
  }

  #change(c: PrefixCacheChange, seen: Map<string, GroupMemberInfo>): GroupChange {
    const joined: GroupMemberInfo[] = [];
    const left: GroupMemberInfo[] = [];
    const updated: GroupMemberInfo[] = [];
    if (c.reset) {
      const next = new Map(c.events.map((e) => [toText(e.key).slice(this.#prefix.length), e] as const));
      for (const [id, m] of seen) if (!next.has(id)) left.push(m);
      for (const e of c.events) {
        if (e.type !== 'put') continue;
        const m = this.#member(e.kv);
        const before = seen.get(m.id);
        if (!before || before.createRevision !== m.createRevision) {
          if (before) left.push(before);
          joined.push(m);
        } else if (before.modRevision !== m.modRevision) updated.push(m);
      }
      seen.clear();
      for (const e of c.events)
        if (e.type === 'put') seen.set(toText(e.key).slice(this.#prefix.length), this.#member(e.kv));
    } else {
      for (const e of c.events) {
        const id = toText(e.key).slice(this.#prefix.length);
        if (e.type === 'delete') {
          const before = seen.get(id) ?? this.#member(e.prevKv);
          seen.delete(id);
          left.push(before);
          continue;
        }
        const m = this.#member(e.kv);
        const before = seen.get(id);
        seen.set(id, m);
        // A key re-created (new generation) is a leave and a join: another session took the id.
        if (!before || before.createRevision !== m.createRevision) {
          if (before) left.push(before);
          joined.push(m);
        } else updated.push(m);
      }
    }
    const members = [...seen.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return c.resync
      ? { revision: c.revision, joined, left, updated, members, resync: c.resync }
      : { revision: c.revision, joined, left, updated, members };
  }
}

export interface JoinOptions extends GroupViewOptions {
  /** This member's id: unique in the group; the key is `group + "/" + id`. */
  readonly id: string;
  /** Member data stored as the key's value (default empty). */
  readonly data?: Bytes;
}

/**
 * This process's membership of a group, and its live view of the others. `lost` fires when the
 * membership ends without `leave()`: the session is lost, or the member key was deleted or taken
 * over. `leave()` (= `close()`, `Symbol.asyncDispose`) deletes the key and stops the view.
 */
export class GroupMember implements AsyncDisposable {
  readonly session: Session;
  readonly group: string;
  readonly id: string;
  /** The member key's create revision (a join token, monotonic per id). */
  readonly createRevision: number;
  readonly view: GroupView;
  readonly lost: AbortSignal;
  readonly #key: string;
  readonly #lost: AbortController;
  #left: Promise<void> | undefined;

  private constructor(session: Session, group: string, id: string, rev: number, view: GroupView) {
    this.session = session;
    this.group = group;
    this.id = id;
    this.createRevision = rev;
    this.view = view;
    this.#key = `${group}/${id}`;
    this.#lost = sessionLossController(session, {
      lostOnSuspend: false,
      what: `group ${group} member ${id}`,
    });
    this.lost = this.#lost.signal;
    void this.#watchOwnKey();
  }

  /**
   * Joins `group` as `opts.id` with `opts.data`, bound to `session`'s lease, and starts the live
   * view. Resolves once the view includes this member. Refused with `conflict` if another session
   * holds the id; a second join of the same session and id adopts the existing key.
   */
  static async join(session: Session, group: string, opts: JoinOptions): Promise<GroupMember> {
    checkGroupName(group);
    if (typeof opts?.id !== 'string' || opts.id.length === 0)
      invalidArgument('id', 'group join: the member id must be a non-empty string');
    if (session.lost.aborted) throw session.lost.reason;
    const key = `${group}/${opts.id}`;
    const data = opts.data ?? '';
    const t = await session.kv.txn(
      {
        compare: [{ key, target: 'create', result: '=', value: 0 }],
        success: [{ type: 'put', key, value: data, options: { lease: session.lease } }],
        failure: [{ type: 'get', key }],
      },
      opts.signal ? { signal: opts.signal } : {},
    );
    let rev = t.revision;
    let written = t.revision;
    const created = t.succeeded;
    if (!t.succeeded) {
      const r = t.responses[0];
      const held = r?.type === 'get' ? r.kvs[0] : undefined;
      if (!held || held.lease !== session.lease)
        throw new ConclaveError(
          ErrorCode.Conflict,
          `group ${group}: member id ${opts.id} is held by another session (lease ${held?.lease.toString(16)}); pick a unique id`,
          { details: { group, id: opts.id } },
        );
      // Our own session already holds it: adopt the key, with the data given now.
      rev = held.createRevision;
      const adopted = await session.kv.txn({
        compare: [{ key, target: 'create', result: '=', value: rev }],
        success: [{ type: 'put', key, value: data, options: { lease: session.lease } }],
        failure: [],
      });
      if (!adopted.succeeded)
        throw new ConclaveError(
          ErrorCode.Conflict,
          `group ${group}: member id ${opts.id} changed hands while joining; join again`,
          { details: { group, id: opts.id } },
        );
      written = adopted.revision;
    }
    let view: GroupView;
    try {
      // The signal governs this call only, not the view's life (leave() ends that).
      const { signal: _signal, ...viewOpts } = opts;
      view = await GroupView.start(session.kv, group, viewOpts);
      await view.ready(written, opts.signal ? { signal: opts.signal } : {});
    } catch (err) {
      // Only a key this call created is removed: an adopted one belongs to the earlier join.
      if (created) await deleteIfOurs(session.kv, key, rev);
      throw err;
    }
    return new GroupMember(session, group, opts.id, rev, view);
  }

  /** Every member (this one included), sorted by id. */
  get members(): readonly GroupMemberInfo[] {
    return this.view.members;
  }

  /** Changes of the group (see `GroupView.changes`). */
  changes(opts: CallOptions = {}): AsyncGenerator<GroupChange, void, undefined> {
    return this.view.changes(opts);
  }

  /** Replaces this member's data; refused with `conflict` once the membership is lost. */
  async update(data: Bytes, opts: CallOptions = {}): Promise<number> {
    if (this.lost.aborted) throw this.lost.reason;
    const t = await this.session.kv.txn(
      {
        compare: [{ key: this.#key, target: 'create', result: '=', value: this.createRevision }],
        success: [{ type: 'put', key: this.#key, value: data, options: { lease: this.session.lease } }],
        failure: [],
      },
      opts,
    );
    if (!t.succeeded)
      throw new ConclaveError(
        ErrorCode.Conflict,
        `group ${this.group}: member ${this.id} is no longer in the group`,
      );
    return t.revision;
  }

  /** Leaves: deletes this member's key (only this generation) and stops the view. Idempotent. */
  leave(): Promise<void> {
    this.#left ??= (async () => {
      if (!this.lost.aborted)
        this.#lost.abort(new ConclaveError(ErrorCode.Closed, `group ${this.group} member ${this.id} left`));
      try {
        await this.session.kv.txn({
          compare: [{ key: this.#key, target: 'create', result: '=', value: this.createRevision }],
          success: [{ type: 'delete', key: this.#key }],
          failure: [],
        });
      } finally {
        await this.view.close();
      }
    })().catch((err) => {
      this.#left = undefined;
      throw err;
    });
    return this.#left;
  }

  /** `leave()`. */
  close(): Promise<void> {
    return this.leave();
  }

  /** `leave()`: every held thing has `release()`. */
  release(): Promise<void> {
    return this.leave();
  }

  /** `leave()`, for `await using` (errors ignored: the key goes with the session's lease at the latest). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.leave().catch(() => undefined);
  }

  /** Fires `lost` when our key leaves the view (deleted, or re-created by another session). */
  async #watchOwnKey(): Promise<void> {
    const gone = () => {
      const m = this.view.member(this.id);
      return !m || m.createRevision !== this.createRevision;
    };
    try {
      for await (const c of this.view.changes({ signal: this.lost })) {
        void c;
        if (gone()) {
          this.#lost.abort(
            new ConclaveError(
              ErrorCode.SessionLost,
              `group ${this.group}: member ${this.id}'s key was deleted or taken over; it is no longer a member`,
            ),
          );
          return;
        }
      }
    } catch {
      // The view stopped (its error is on view.error) or `lost` fired: nothing more to watch.
    }
  }
}

/** Joins a group (see `GroupMember.join`). */
export function joinGroup(session: Session, group: string, opts: JoinOptions): Promise<GroupMember> {
  return GroupMember.join(session, group, opts);
}

/** Starts a read-only view of a group (see `GroupView`). */
export function watchGroup(kv: KV, group: string, opts: GroupViewOptions = {}): Promise<GroupView> {
  return GroupView.start(kv, group, opts);
}

async function deleteIfOurs(kv: KV, key: string, rev: number): Promise<void> {
  await kv
    .txn({
      compare: [{ key, target: 'create', result: '=', value: rev }],
      success: [{ type: 'delete', key }],
      failure: [],
    })
    .catch(() => undefined);
}
