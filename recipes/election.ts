/**
 * Election: leader election with etcd's Go `concurrency.Election` layout, so it queues with
 * `etcdctl elect` and Go clients on the same etcd. Candidates put `name + "/" + leaseHex(lease)`
 * with their value under their session's lease; the leader is the key with the lowest create
 * revision. Its create revision is the leadership's term (epoch) and fencing token.
 */
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Session } from '../src/session.js';
import type { Bytes, CallOptions, Compare, KeyValue } from '../src/types.js';
import { checkName } from './internal/check.js';
import { heldKey } from './internal/hold.js';
import { pause } from './internal/timing.js';
import { acquireTurn, type TurnSpec } from './internal/turn.js';

/** The candidate that leads: its key, its value, and its term. */
export interface Leader {
  readonly key: string;
  readonly value: Uint8Array;
  /** The leader key's create revision: the term of this leadership, growing with each leader. */
  readonly token: number;
}

/** One state of an election as `observe()` reports it. */
export interface Observation {
  /** undefined: there is no leader right now. */
  readonly leader: Leader | undefined;
  /** The store revision at which this was observed. */
  readonly revision: number;
}

/** A won campaign: held until resigned or lost (`lost` fires); `await using` resigns. */
export interface Leadership extends AsyncDisposable {
  readonly key: string;
  readonly token: number;
  readonly lost: AbortSignal;
  /** A Compare that holds only while this leadership lasts (for writes fenced by it). */
  guard(): Compare;
  /** Updates the leader's value, only while still the leader. */
  proclaim(value: Bytes, opts?: CallOptions): Promise<void>;
  /** Gives up leadership (deletes the key). Idempotent; retry after an RPC error. */
  resign(opts?: CallOptions): Promise<void>;
  /** `resign()`: every held thing has `release()`. */
  release(opts?: CallOptions): Promise<void>;
}

/** What `runWhileLeader` passes to its function for one term of leadership. */
export interface LeaderTerm {
  /** Aborted the moment leadership is lost (or the session suspended, with `lostOnSuspend`), or on stop. */
  readonly signal: AbortSignal;
  /** The leadership's fencing token (its key's create revision): larger for every later term. */
  readonly token: number;
  /** The leadership itself, for `guard()` and `proclaim()`. */
  readonly leadership: Leadership;
}

/**
 * When `runWhileLeader` campaigns again after a term ended (its function returned, or leadership
 * was lost): `'always'` at once, `'never'` (it resolves after the first term), or after `delayMs`.
 */
export type Recampaign = 'always' | 'never' | { readonly delayMs: number };

/** Options of `runWhileLeader`. */
export interface RunWhileLeaderOptions extends CallOptions {
  /** The candidate's value while campaigning and leading (default empty). */
  readonly value?: Bytes;
  /** Default `'always'`. */
  readonly recampaign?: Recampaign;
}

const toLeader = (kv: KeyValue): Leader => ({
  key: toText(kv.key),
  value: kv.value,
  token: kv.createRevision,
});

/** Options of an `Election`. */
export interface ElectionOptions {
  /** Count a leadership as lost as soon as the session is suspended, not only when lost. Default true. */
  readonly lostOnSuspend?: boolean;
}

/**
 * Leader election on `name` for one session: `campaign()` waits to lead, `observe()` follows who
 * leads. `Election.observe(kv, name)` follows without a session. See docs/recipes/election.md.
 */
export class Election {
  readonly session: Session;
  readonly name: string;
  readonly #pfx: string;
  readonly #myKey: string;
  readonly #spec: TurnSpec;
  readonly #lostOnSuspend: boolean;

  /** `lostOnSuspend` (default true): a leadership counts as lost as soon as the session is suspended. */
  constructor(session: Session, name: string, opts: ElectionOptions = {}) {
    checkName('Election: name', name);
    this.session = session;
    this.name = name;
    this.#pfx = `${name}/`;
    this.#myKey = `${this.#pfx}${leaseHex(session.lease)}`;
    this.#spec = { myKey: this.#myKey, blockers: this.#pfx, what: `election ${name}` };
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
  }

  /** This session's candidate key: `name/` + lease id in lowercase hex. */
  get key(): string {
    return this.#myKey;
  }

  get #kv(): KV {
    return this.session.kv;
  }

  /** Waits until elected. A cancelled or failed campaign leaves no key behind. */
  campaign(value: Bytes, opts: CallOptions = {}): Promise<Leadership> {
    // Re-campaign by the same session (as Go): keep our place in the queue, take the new value.
    const again = async (myRev: number, signal: AbortSignal) => {
      const t = await this.#kv.txn(
        {
          compare: [{ key: this.#spec.myKey, target: 'create', result: '=', value: myRev }],
          success: [{ type: 'put', key: this.#spec.myKey, value, options: { lease: this.session.lease } }],
          failure: [],
        },
        { signal },
      );
      if (!t.succeeded)
        throw new ConclaveError(
          ErrorCode.SessionLost,
          `election ${this.name}: our key vanished during campaign`,
        );
    };
    return acquireTurn(this.session, this.#spec, opts, { value, again }, (myRev, ownership) =>
      this.#leadership(myRev, ownership),
    );
  }

  /**
   * Runs `fn` while this session leads (Curator's `LeaderSelector`): campaigns, calls `fn` with a
   * signal that aborts the moment leadership is lost (or the session suspended, with
   * `lostOnSuspend`) and the term's fencing token, resigns when `fn` settles, and campaigns again
   * as `recampaign` says. `fn` must stop when its signal aborts; the next campaign waits for it to
   * settle.
   *
   * Stopping: aborting `opts.signal` aborts the running term's signal, waits for `fn`, resigns and
   * resolves — a requested stop is not an error. It rejects on a failure: `fn` threw while still
   * leading (its error, after resigning), or the session was lost (`session-lost`, or
   * `lease-not-found` when the next campaign finds the lease revoked before the session noticed:
   * make a new Session to run again). A throw from `fn` after its signal aborted ends that term only.
   */
  async runWhileLeader(fn: (term: LeaderTerm) => unknown, opts: RunWhileLeaderOptions = {}): Promise<void> {
    const policy = opts.recampaign ?? 'always';
    if (
      policy !== 'always' &&
      policy !== 'never' &&
      !(typeof policy === 'object' && Number.isSafeInteger(policy.delayMs) && policy.delayMs >= 0)
    )
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `runWhileLeader: recampaign must be 'always', 'never' or { delayMs: integer >= 0 }`,
      );
    if (typeof fn !== 'function')
      throw new ConclaveError(ErrorCode.InvalidArgument, 'runWhileLeader: fn must be a function');
    const stop = opts.signal;
    // Bounded by the caller: one term per iteration, until `stop` fires, the session is lost, or
    // `recampaign: 'never'` ends it after one term.
    for (;;) {
      if (stop?.aborted) return;
      let leadership: Leadership;
      try {
        leadership = await this.campaign(opts.value ?? '', stop ? { signal: stop } : {});
      } catch (err) {
        if (stop?.aborted && !this.session.lost.aborted) return;
        throw err;
      }
      const signal = stop ? AbortSignal.any([leadership.lost, stop]) : leadership.lost;
      let failed = false;
      let failure: unknown;
      try {
        await fn({ signal, token: leadership.token, leadership });
      } catch (err) {
        if (!signal.aborted) {
          failed = true;
          failure = err;
        }
      }
      // Best effort: a key we could not delete goes with the session's lease at the latest.
      await leadership.resign().catch(() => undefined);
      if (failed) throw failure;
      if (stop?.aborted || policy === 'never') return;
      if (this.session.lost.aborted) throw this.session.lost.reason;
      if (typeof policy === 'object' && policy.delayMs > 0)
        await pause(policy.delayMs, stop ? AbortSignal.any([stop, this.session.lost]) : this.session.lost);
    }
  }

  #leadership(myRev: number, ownership: AbortController): Leadership {
    const kv = this.#kv;
    const h = heldKey(
      this.session,
      this.#myKey,
      myRev,
      ownership,
      { lostOnSuspend: this.#lostOnSuspend, what: `election ${this.name}` },
      this.#spec.blockers,
    );
    const { key, guard, lost } = h;
    return {
      key,
      token: myRev,
      lost,
      guard,
      async proclaim(value: Bytes, opts: CallOptions = {}) {
        if (lost.aborted)
          throw new ConclaveError(ErrorCode.SessionLost, 'proclaim: leadership was lost', {
            cause: lost.reason,
          });
        const t = await kv.txn(
          {
            compare: [guard()],
            success: [{ type: 'put', key, value, options: { ignoreLease: true } }],
            failure: [],
          },
          opts,
        );
        if (!t.succeeded) throw new ConclaveError(ErrorCode.SessionLost, 'proclaim: no longer the leader');
      },
      resign: h.release,
      release: h.release,
      [Symbol.asyncDispose]: h[Symbol.asyncDispose],
    };
  }

  /** The current leader, or undefined when there is none. */
  leader(opts: CallOptions = {}): Promise<Leader | undefined> {
    return currentLeader(this.#kv, this.#pfx, opts);
  }

  /**
   * Every change of leader (including "no leader") and every write of the leader's key
   * (`proclaim`), starting with the current state. Each observation carries the leader's term
   * (`token`, its key's create revision). Survives compaction and a consumer that fell too far
   * behind by re-reading the present (a resync: the re-read state is emitted if it differs from
   * the last one emitted, so intermediate states may be skipped, never reordered).
   *
   * Stopping: aborting `signal` (or `return()`/`break`) ends the iteration normally — a stop you
   * asked for is not an error; the iterator throws only on a failure (the store's error).
   */
  observe(opts: CallOptions = {}): AsyncGenerator<Observation> {
    return observeElection(this.#kv, this.#pfx, opts);
  }

  /** The current leader of election `name` on `kv`, without a session. */
  static leader(kv: KV, name: string, opts: CallOptions = {}): Promise<Leader | undefined> {
    checkName('Election: name', name);
    return currentLeader(kv, `${name}/`, opts);
  }

  /**
   * Observes election `name` on `kv` without a session (no lease, no candidacy): the same stream
   * as `election.observe()`. For processes that only need to know who leads.
   */
  static observe(kv: KV, name: string, opts: CallOptions = {}): AsyncGenerator<Observation> {
    checkName('Election: name', name);
    return observeElection(kv, `${name}/`, opts);
  }
}

async function currentLeader(kv: KV, pfx: string, opts: CallOptions): Promise<Leader | undefined> {
  const r = await kv.range(pfx, {
    prefix: true,
    sort: { target: 'create', order: 'ascend' },
    limit: 1,
    signal: opts.signal,
  });
  return r.kvs[0] ? toLeader(r.kvs[0]) : undefined;
}

/** The observation stream of the election whose candidates live under `pfx` (see `observe`). */
async function* observeElection(kv: KV, pfx: string, opts: CallOptions): AsyncGenerator<Observation> {
  const signal = opts.signal;
  let last: string | undefined;
  const next = (l: KeyValue | undefined, revision: number): Observation | undefined => {
    const id = l ? `${l.createRevision}@${l.modRevision}` : 'none';
    if (id === last) return undefined;
    last = id;
    return { leader: l ? toLeader(l) : undefined, revision };
  };
  // Bounded by the caller: it runs until the signal is aborted or the consumer stops iterating.
  while (true) {
    if (signal?.aborted) return; // a requested stop ends the stream normally
    // Watch first (from "now"), then read: a watch started at a past revision is served by
    // etcd's unsynced group, caught up only every 100 ms, which would delay every change of
    // leader seen here. The linearizable read after the watch's registration is at or after the
    // registered revision, so the events up to the read's revision are already in it: skipped.
    const w = kv.watch(pfx, { prefix: true, ...(signal ? { signal } : {}) });
    try {
      await w.ready;
      // Candidates by key; the leader is the one with the lowest create revision.
      const r = await kv.range(pfx, { prefix: true, signal });
      const live = new Map<string, KeyValue>(r.kvs.map((k) => [toText(k.key), k]));
      const leader = () =>
        [...live.values()].reduce<KeyValue | undefined>(
          (a, b) => (!a || b.createRevision < a.createRevision ? b : a),
          undefined,
        );
      const o = next(leader(), r.revision);
      if (o) yield o;
      for await (const batch of w) {
        let changed = false;
        for (const e of batch.events) {
          if (e.kv.modRevision <= r.revision) continue;
          changed = true;
          if (e.type === 'delete') live.delete(toText(e.kv.key));
          else live.set(toText(e.kv.key), e.kv);
        }
        if (!changed) continue;
        const ob = next(leader(), batch.revision);
        if (ob) yield ob;
      }
      return; // the watch ended: closed by the caller's signal
    } catch (err) {
      if (signal?.aborted) return;
      if (ConclaveError.is(err, ErrorCode.Compacted) || ConclaveError.is(err, ErrorCode.WatchOverflow))
        continue; // resync from the present
      throw err;
    } finally {
      await w.close();
    }
  }
}
