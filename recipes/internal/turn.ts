/**
 * "Wait for my turn": the one acquire path of Mutex, RWMutex, Semaphore and Election (etcd Go `concurrency`'s
 * "lowest create revision wins" scheme): enqueue a key under the session's lease, then wait,
 * watch-driven, until few enough keys created before ours remain, re-checking the whole situation
 * after every wake-up (never inferring ownership from a single delete event — the cause of the
 * "two writers" bug in etcd's experimental RWMutex when a waiter's session expires).
 *
 * Round trips. Go's `waitDeletes` opens a watch on the predecessor, and after its delete issues a
 * linearizable range, then `Lock` issues a linearizable get of its own key: two quorum reads per
 * handoff. Here the re-check after a delete event at revision R is ONE *serializable* read (when
 * our key is under the blockers' prefix; else a pair pinned at R) at the member's current revision
 * C ≥ R: any revision's state is a consistent snapshot, and no key created later can have a create
 * revision below ours, so "no blocker at C" means "none from C on". A member that has not applied R
 * yet (C < R, or `future-revision` for the pinned pair), or a compacted R, makes us fall back to a
 * linearizable read. The waits themselves watch from "now" and cover the revisions before the
 * watch's registration with one read (wait.ts `waitDelete`, and `waitPermit` here): a watch started
 * in the past is served by etcd's unsynced group, caught up only every 100 ms.
 */
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes, toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { Session } from '../../src/session.js';
import type { Bytes, CallOptions, KeyValue } from '../../src/types.js';
import { awaitHandoff, releaseOf } from './handoff.js';
import { keyInUse, useKey } from './live-keys.js';
import { type LossPolicy, sessionLossController } from './session-state.js';
import { backoffMs, pause } from './timing.js';
import { rangeAtLeast, rejectOnAbort, waitDelete, watchOwnership } from './wait.js';

export interface TurnSpec {
  /** Our own queue key. */
  readonly myKey: string;
  /** Prefix whose keys created before ours block us. */
  readonly blockers: string;
  /** How many earlier blockers may remain when it is our turn (0 for locks; permits-1 for a semaphore). */
  readonly allowed?: number;
  /** What we are waiting for, for messages. */
  readonly what: string;
}

/** The queue as seen at one revision. */
export interface QueueView {
  /** The store revision this view describes; watches continue from `revision + 1`. */
  readonly revision: number;
  /** Our key exists with our create revision. */
  readonly mine: boolean;
  /** Blocking keys (created before ours), newest first, at most `allowed + 1` of them. */
  readonly blockers: KeyValue[];
}

export interface Enqueued {
  /** Our key's create revision (its fencing token). */
  readonly myRev: number;
  /** False when the key already existed (this session already holds or waits for it). */
  readonly created: boolean;
  /** With `first: true`: the earliest key under the blockers prefix (the owner for locks), if any. */
  readonly first?: KeyValue;
  /** When `created`: the queue right after our put, so the first wait needs no extra read. */
  readonly view?: QueueView;
}

const limitFor = (spec: TurnSpec) => (spec.allowed ?? 0) + 1;

/**
 * One txn: if our key is absent, put it under the session's lease and read the blockers just
 * created before it and the earliest key; otherwise read our existing key and the earliest key.
 */
export async function enqueue(
  session: Session,
  spec: TurnSpec,
  value: Bytes,
  signal: AbortSignal | undefined,
  opts: { first?: boolean } = {},
): Promise<Enqueued> {
  // The earliest key, for the try* calls (`first: true`). A waiting acquire needs only the
  // blockers: every member applies the txn's reads too, so an unused range costs three times.
  const first = opts.first
    ? [
        {
          type: 'get',
          key: spec.blockers,
          options: { prefix: true, sort: { target: 'create', order: 'ascend' }, limit: 1 },
        } as const,
      ]
    : [];
  const t = await session.kv.txn(
    {
      compare: [{ key: spec.myKey, target: 'create', result: '=', value: 0 }],
      success: [
        { type: 'put', key: spec.myKey, value, options: { lease: session.lease } },
        {
          type: 'get',
          key: spec.blockers,
          // Our own key (created at this revision) may be in the range: one extra slot for it.
          options: {
            prefix: true,
            sort: { target: 'create', order: 'descend' },
            keysOnly: true,
            limit: limitFor(spec) + 1,
          },
        },
        ...first,
      ],
      failure: [{ type: 'get', key: spec.myKey, options: { keysOnly: true } }, ...first],
    },
    signal ? { signal } : {},
  );
  const get = (i: number) => {
    const r = t.responses[i];
    return r?.type === 'get' ? r.kvs : [];
  };
  if (t.succeeded) {
    const myRev = t.revision;
    const blockers = get(1)
      .filter((k) => k.createRevision < myRev)
      .slice(0, limitFor(spec));
    const f = get(2)[0];
    return {
      myRev,
      created: true,
      ...(f ? { first: f } : {}),
      view: { revision: myRev, mine: true, blockers },
    };
  }
  const mine = get(0)[0];
  if (!mine)
    throw new ConclaveError(ErrorCode.Conflict, `${spec.what}: ${spec.myKey} vanished while being created`);
  const f = get(1)[0];
  return { myRev: mine.createRevision, created: false, ...(f ? { first: f } : {}) };
}

/** Reads the queue linearizably (`at` 0), or serializably at a revision at or after `at` (the view says which). */
export async function readQueue(
  kv: KV,
  spec: TurnSpec,
  myRev: number,
  at: number,
  signal: AbortSignal,
): Promise<QueueView> {
  const blockersOpts = {
    prefix: true,
    maxCreateRevision: myRev - 1,
    sort: { target: 'create', order: 'descend' },
    keysOnly: true,
    limit: limitFor(spec),
  } as const;
  if (at > 0 && spec.myKey.startsWith(spec.blockers)) {
    // One read: our key is in the blockers' range, and the newest key created up to us, at
    // revision `at` or later (any revision's state is as good for the re-check).
    const r = await rangeAtLeast(
      kv,
      spec.blockers,
      at,
      { ...blockersOpts, maxCreateRevision: myRev, limit: limitFor(spec) + 1 },
      signal,
    );
    const [head, ...rest] = r.kvs;
    const mine = head?.createRevision === myRev && toText(head.key) === spec.myKey;
    return { revision: r.revision, mine, blockers: mine ? rest : r.kvs };
  }
  if (at > 0) {
    // Two reads: pinned at `at`, so that they describe the same revision.
    try {
      const pinned = { revision: at, serializable: true, signal };
      const [b, m] = await Promise.all([
        kv.range(spec.blockers, { ...blockersOpts, ...pinned }),
        kv.range(spec.myKey, { keysOnly: true, ...pinned }),
      ]);
      return { revision: at, mine: m.kvs[0]?.createRevision === myRev, blockers: b.kvs };
    } catch (err) {
      if (!ConclaveError.is(err, ErrorCode.FutureRevision) && !ConclaveError.is(err, ErrorCode.Compacted))
        throw err;
    }
  }
  const t = await kv.txn(
    {
      compare: [],
      success: [
        { type: 'get', key: spec.blockers, options: blockersOpts },
        { type: 'get', key: spec.myKey, options: { keysOnly: true } },
      ],
      failure: [],
    },
    { signal },
  );
  const b = t.responses[0]?.type === 'get' ? t.responses[0].kvs : [];
  const m = t.responses[1]?.type === 'get' ? t.responses[1].kvs[0] : undefined;
  return { revision: t.revision, mine: m?.createRevision === myRev, blockers: b };
}

/** Our turn: the revision at which it was confirmed, and the still-running watch of our own key. */
export interface Turn {
  readonly revision: number;
  /** Fires when our key is deleted or re-created after its creation; abort it to stop the watch. */
  readonly ownership: AbortController;
}

/** Starts watching generation `myRev` of `key` (from just after its creation) for its loss. */
export function watchKeyLoss(kv: KV, key: string, myRev: number): AbortController {
  const ownership = new AbortController();
  watchOwnership(kv, toBytes(key), myRev, myRev + 1, ownership);
  return ownership;
}

/**
 * Waits for our turn. Fails with `session-lost` as soon as our own key disappears (its lease
 * expired or was revoked, or someone deleted it): the watch of our key runs for the whole wait and
 * is handed on to the holder's `lost`, so acquiring opens no watch of its own. `signal` should
 * include `session.lost`. `ownKey`, when given, is a controller that already fires when generation
 * `myRev` of our key is deleted after its creation (the caller watches it, e.g. with a watch kept
 * across lock cycles); otherwise a watch is opened here.
 */
export async function waitTurn(
  kv: KV,
  spec: TurnSpec,
  myRev: number,
  signal: AbortSignal,
  initial?: QueueView,
  ownKey?: AbortController,
): Promise<Turn> {
  const ownership = ownKey ?? new AbortController();
  // Start the wait (which, given `initial`, opens the predecessor's watch synchronously) BEFORE
  // the own-key watch: one client's watch creates are answered one at a time, and etcd delivers
  // the events of a watch whose start revision is already in the past only from its next
  // unsynced-watcher pass (every 100 ms). The predecessor's delete is the latency-critical event,
  // so its watch goes first, as close to our txn's revision as possible. The own-key watch starts
  // from our key's creation whenever it is created, so it misses nothing either way.
  const waiting = waitBlockers(kv, spec, myRev, signal, ownership.signal, initial);
  if (!ownKey) watchOwnership(kv, toBytes(spec.myKey), myRev, myRev + 1, ownership);
  try {
    return { revision: await waiting, ownership };
  } catch (err) {
    ownership.abort();
    throw err;
  }
}

async function waitBlockers(
  kv: KV,
  spec: TurnSpec,
  myRev: number,
  signal: AbortSignal,
  mine: AbortSignal,
  initial: QueueView | undefined,
): Promise<number> {
  const allowed = spec.allowed ?? 0;
  const keyLost = rejectOnAbort(mine);
  const ours = (view: QueueView): QueueView => {
    if (!view.mine || mine.aborted) {
      throw new ConclaveError(
        ErrorCode.SessionLost,
        `${spec.what}: our queue key ${spec.myKey} disappeared (session expired or key deleted)`,
        { cause: mine.reason },
      );
    }
    return view;
  };
  try {
    let view = ours(initial ?? (await readQueue(kv, spec, myRev, 0, signal)));
    if (allowed > 0) return await waitPermit(kv, spec, myRev, signal, view, ours, keyLost.promise);
    if (!view.blockers[0]) return view.revision;
    // A releaser on this client may prove our turn itself (handoff.ts): its delete txn read our
    // key as the earliest one left. Then neither the delete event nor a re-check is needed.
    let grantedAt = 0;
    let grant!: (rev: number) => void;
    const granted = new Promise<number>((resolve) => {
      grant = resolve;
    });
    const handoff = spec.myKey.startsWith(spec.blockers)
      ? awaitHandoff(kv, spec.blockers, spec.myKey, myRev, (rev) => {
          grantedAt = rev;
          grant(rev);
        })
      : undefined;
    try {
      // Terminates: blockers have create revisions below ours, so their set only shrinks, and
      // every wake-up is the delete of one of them (or a proven handoff).
      while (true) {
        const pred = view.blockers[0];
        if (!pred) return view.revision;
        handoff?.watching(toText(pred.key), pred.createRevision);
        // Locks wait for the newest blocker created before us: every earlier one must go anyway,
        // and one watched key means no herd. Then re-check everything.
        const stop = new AbortController();
        const s = AbortSignal.any([signal, stop.signal]);
        let at: number;
        try {
          at = await Promise.race([
            waitDelete(kv, pred.key, view.revision + 1, s, pred.createRevision),
            keyLost.promise,
            granted,
          ]);
        } finally {
          stop.abort();
        }
        // Woken by the delete event of a release on this client: its offer comes with the
        // release txn's reply (the event and the reply travel on different streams).
        if (grantedAt === 0 && handoff) {
          const local = releaseOf(kv, spec.blockers, toText(pred.key), pred.createRevision);
          if (local) {
            const aborted = rejectOnAbort(signal);
            try {
              await Promise.race([local, keyLost.promise, aborted.promise]);
            } finally {
              aborted.off();
            }
          }
        }
        if (grantedAt > 0) return grantedAt;
        view = ours(await readQueue(kv, spec, myRev, at, signal));
      }
    } finally {
      handoff?.done();
    }
  } finally {
    keyLost.off();
  }
}

/**
 * With permits (a semaphore), any earlier delete may be the one that lets us in, so ONE watch of
 * the blockers' range (deletes only) serves the whole wait, and every delete after the last view is
 * re-checked at its revision. The watch starts from "now" (live at once on etcd: see
 * `waitDelete`); the revisions between the last view and its registration are covered by one
 * re-check at the registered revision. Re-creating a watch per wake-up would either leave each new
 * watch in etcd's 100 ms catch-up group or, started from "now", wake us without a delete: a spin.
 */
async function waitPermit(
  kv: KV,
  spec: TurnSpec,
  myRev: number,
  signal: AbortSignal,
  first: QueueView,
  ours: (v: QueueView) => QueueView,
  keyLost: Promise<never>,
): Promise<number> {
  const allowed = spec.allowed ?? 0;
  let view = first;
  if (view.blockers.length <= allowed) return view.revision;
  const stop = new AbortController();
  const w = kv.watch(spec.blockers, {
    prefix: true,
    filters: ['noput'],
    signal: AbortSignal.any([signal, stop.signal]),
  });
  try {
    const registered = await Promise.race([w.ready, keyLost]);
    if (registered > view.revision) {
      view = ours(await readQueue(kv, spec, myRev, registered, signal));
      if (view.blockers.length <= allowed) return view.revision;
    }
    const batches = w[Symbol.asyncIterator]();
    while (true) {
      const next = await Promise.race([batches.next(), keyLost]);
      if (next.done) throw abortReason(signal);
      const del = next.value.events.find((e) => e.type === 'delete' && e.kv.modRevision > view.revision);
      if (!del) continue;
      const at = next.value.events[next.value.events.length - 1]!.kv.modRevision;
      view = ours(await readQueue(kv, spec, myRev, at, signal));
      if (view.blockers.length <= allowed) return view.revision;
    }
  } catch (err) {
    throw signal.aborted ? abortReason(signal) : err;
  } finally {
    stop.abort();
    await w.close();
  }
}

/**
 * The `lost` signal of a holder: fires when `ownership` fires (our key deleted or replaced), when
 * the session is lost, and (with `lostOnSuspend`) as soon as the session is suspended (see
 * session-state.ts). Aborting the result stops the ownership watch.
 */
export function holderLoss(
  session: Session,
  ownership: AbortController,
  policy: LossPolicy,
): AbortController {
  const lost = sessionLossController(session, policy);
  const onOwnership = () =>
    lost.abort(
      ownership.signal.reason ?? new ConclaveError(ErrorCode.SessionLost, `${policy.what}: ownership lost`),
    );
  if (ownership.signal.aborted) onOwnership();
  else ownership.signal.addEventListener('abort', onOwnership, { once: true });
  lost.signal.addEventListener(
    'abort',
    () => {
      ownership.signal.removeEventListener('abort', onOwnership);
      ownership.abort();
    },
    { once: true },
  );
  return lost;
}

/**
 * What a second acquire by a session that already holds or waits for the name does: `conflict`
 * (locks and permits: two async tasks of one process share a session, so sharing one key would
 * let both believe they hold it, and releasing either would release both), or a function run on
 * the existing key before waiting (an election's re-campaign: keep the place, write the new value),
 * or `share`: wait on the existing key and leave it alone on failure (etcd's Go `Mutex`, which an
 * etcd-compatible server's Lock service must reproduce).
 */
export type Again = 'conflict' | 'share' | ((myRev: number, signal: AbortSignal) => Promise<void>);

/** The `conflict` a second acquire of one session fails with. */
export function heldBySession(spec: TurnSpec): ConclaveError {
  return new ConclaveError(
    ErrorCode.Conflict,
    `${spec.what}: this session already holds or waits for it (key ${spec.myKey}); release that handle first, or acquire it from another Session`,
    { details: { key: spec.myKey } },
  );
}

/**
 * Enqueues our key and waits for our turn; `hold` makes the handle from our key's create revision
 * and the ownership watch. Aborting `opts.signal` (or losing the session) ends the wait; any
 * failure removes the key it put (not one that another handle of this session holds), and rejects
 * with the session's loss or the signal's reason before anything else. `ownKey` supplies a kept
 * watch of our own key (see `waitTurn`).
 */
export async function acquireTurn<H>(
  session: Session,
  spec: TurnSpec,
  opts: CallOptions,
  how: { value?: Bytes; again: Again; ownKey?: (myRev: number) => AbortController },
  hold: (myRev: number, ownership: AbortController) => H,
): Promise<H> {
  if (session.lost.aborted) throw session.lost.reason;
  opts.signal?.throwIfAborted();
  const signal = opts.signal ? AbortSignal.any([opts.signal, session.lost]) : session.lost;
  await cleanedUp(session, spec.myKey, signal);
  let myRev = 0;
  let ours = true;
  const unuse = useKey(session, spec.myKey);
  try {
    const e = await enqueue(session, spec, how.value ?? '', signal);
    myRev = e.myRev;
    // Our key already there but used by nothing else of this session: a failed acquire of ours put
    // it (its outcome unknown) and could not remove it. It is ours: wait on it as if just put.
    const orphan = !e.created && how.again === 'conflict' && !keyInUse(session, spec.myKey, 1);
    if (!e.created && !orphan) {
      if (how.again === 'conflict' || how.again === 'share') {
        ours = false;
        if (how.again === 'conflict') throw heldBySession(spec);
      } else await how.again(myRev, signal);
    }
    const turn = await waitTurn(session.kv, spec, myRev, signal, e.view, how.ownKey?.(myRev));
    const handle = hold(myRev, turn.ownership);
    unuse();
    return handle;
  } catch (err) {
    unuse();
    // Leave no key behind: an aborted or failed acquire must not block the next owner. (As Go's
    // Campaign, a failed re-campaign removes its key too.) A key of unknown generation (the put's
    // outcome unknown) only when nothing else of this session uses it.
    if (ours && (myRev > 0 || !keyInUse(session, spec.myKey)))
      if (!(await deleteGeneration(session.kv, spec.myKey, myRev))) cleanUpLater(session, spec.myKey, myRev);
    if (session.lost.aborted) throw session.lost.reason;
    if (opts.signal?.aborted) throw abortReason(opts.signal);
    throw err;
  }
}

/**
 * One attempt, no wait: enqueues our key and reads the earliest key under the blockers. Our turn
 * when none was created before ours (`allowed` is 0 for the try* calls); otherwise the key we put
 * is removed again and the blocker returned. A session that already holds or waits for the name
 * fails `conflict`, as `acquireTurn`.
 */
export async function tryTurn(
  session: Session,
  spec: TurnSpec,
  signal: AbortSignal | undefined,
  again: 'conflict' | 'share' = 'conflict',
): Promise<{ myRev: number; blocker?: KeyValue }> {
  if (session.lost.aborted) throw session.lost.reason;
  await cleanedUp(session, spec.myKey, signal ? AbortSignal.any([signal, session.lost]) : session.lost);
  // Counted while in flight, so that two concurrent try* calls of one session never both take a key
  // over (the caller makes its handle, which counts itself, in the same turn as this returns).
  const unuse = useKey(session, spec.myKey);
  try {
    let e: Enqueued;
    try {
      e = await enqueue(session, spec, '', signal, { first: true });
    } catch (err) {
      // The put may have happened: remove whatever is there when nothing else of this session uses
      // the key, now or once the store answers again.
      if (!keyInUse(session, spec.myKey, 1) && !(await deleteGeneration(session.kv, spec.myKey, 0)))
        cleanUpLater(session, spec.myKey, 0, 1);
      throw err;
    }
    // An existing key that nothing else of this session uses was left by a failed acquire: ours
    // (as in `acquireTurn`).
    const mine = e.created || (again === 'conflict' && !keyInUse(session, spec.myKey, 1));
    if (!mine && again === 'conflict') throw heldBySession(spec);
    const blocker = e.first && e.first.createRevision < e.myRev ? e.first : undefined;
    if (!blocker) return { myRev: e.myRev };
    if (mine && !(await deleteGeneration(session.kv, spec.myKey, e.myRev)))
      cleanUpLater(session, spec.myKey, e.myRev);
    return { myRev: e.myRev, blocker };
  } finally {
    unuse();
  }
}

/**
 * Clean-ups of queue keys that a failed acquire may have left behind: its put's outcome was unknown
 * (typically while the store elects a new leader) and the delete that followed failed as well. No
 * handle refers to such a key, yet it would make every later acquire of the same session fail
 * `conflict` until the session's lease ends. So the delete is retried in the background, and a new
 * acquire of that key by that session first waits for it (this ordering is what makes deleting
 * "whatever is there" safe: nothing of this session can have put the key since). Per session, at
 * most `cleanupsPerSessionMax` keys at once (past it, the lease is the clean-up, as before).
 */
const cleanups = new WeakMap<Session, Map<string, Promise<void>>>();
/** Keys of one session being cleaned up in the background at once. */
export const cleanupsPerSessionMax = 1024;
/** Attempts of one background clean-up (backing off up to `cleanupBackoffCapMs`) before the lease is left to do it. */
export const cleanupAttemptsMax = 40;
/** Longest pause between two attempts of a background clean-up. */
export const cleanupBackoffCapMs = 1000;

/** `besides`: uses of `key` by the caller itself, still counted when it schedules the clean-up. */
function cleanUpLater(session: Session, key: string, myRev: number, besides = 0): void {
  if (myRev === 0 && keyInUse(session, key, besides)) return;
  let byKey = cleanups.get(session);
  if (!byKey) cleanups.set(session, (byKey = new Map()));
  if (byKey.has(key) || byKey.size >= cleanupsPerSessionMax || session.lost.aborted) return;
  const run = (async () => {
    for (let n = 0; n < cleanupAttemptsMax && !session.lost.aborted; n++) {
      await pause(backoffMs(n, cleanupBackoffCapMs), session.lost);
      // A generation-blind delete only while nothing of this session uses the key (an acquire
      // that began before this clean-up was scheduled may hold it by now).
      if (session.lost.aborted || (myRev === 0 && keyInUse(session, key))) return;
      if (await deleteGeneration(session.kv, key, myRev)) return;
    }
  })().finally(() => byKey.delete(key));
  byKey.set(key, run);
}

/** Waits (abortably) for a background clean-up of `key` by this session, if one is running. */
async function cleanedUp(session: Session, key: string, signal: AbortSignal): Promise<void> {
  const pending = cleanups.get(session)?.get(key);
  if (!pending) return;
  const aborted = rejectOnAbort(signal);
  try {
    await Promise.race([pending, aborted.promise]);
  } finally {
    aborted.off();
  }
}

/**
 * Deletes `key` if it is still generation `myRev` (its create revision), or whatever is there when
 * `myRev` is 0 (unknown: the put may or may not have happened). Best effort — the session's lease
 * removes the key at the latest. True when the store answered (the key is not generation `myRev`
 * any more, or was not there); false when the call failed and the key may remain.
 */
export async function deleteGeneration(kv: KV, key: string, myRev: number): Promise<boolean> {
  return kv
    .txn({
      compare: myRev > 0 ? [{ key, target: 'create', result: '=', value: myRev }] : [],
      success: [{ type: 'delete', key }],
      failure: [],
    })
    .then(
      () => true,
      () => false,
    );
}
