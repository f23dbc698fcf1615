/**
 * One watch of a session's queue key kept across the key's generations (lock, unlock, lock …), so
 * a Mutex locked again and again opens no new watch per acquisition: a watch create and a cancel
 * per lock cycle cost the client and every etcd member CPU, which is what bounds the lock handoff
 * rate on a busy machine (docs/recipes/mutex.md).
 *
 * A generation of the key is identified by its create revision `myRev`. `watchGeneration` returns
 * a controller that fires (reason: `session-lost` ConclaveError) once the key is deleted at a
 * revision above `myRev` — deleted, expired with its lease, or deleted and re-created — exactly
 * like `watchOwnership` (wait.ts) does with a watch of its own. Aborting the controller yourself
 * detaches the generation. The shared watch covers revisions from the first generation's
 * `myRev + 1` on — it is opened from "now" and the revisions before its registration are covered by
 * one read of the key — and runs while a generation is attached, then lingers `keyWatchLingerMs`
 * for the next one. A delete already
 * delivered is remembered (`lastDelete`), so a generation attached after its own delete arrived
 * still fires at once.
 *
 * On compaction of the watch's history every attached generation is handed to a watch of its own
 * (`watchOwnership`, which re-reads the key), and the shared watch ends; any other watch failure
 * fires every attached generation (ownership can no longer be verified), as `watchOwnership` does.
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { Session } from '../../src/session.js';
import { gapRead, rangeAtLeast, watchOwnership } from './wait.js';

/** How long a kept watch with no generation attached stays open, waiting for the next lock(). */
export const keyWatchLingerMs = 1000;
/** Kept watches per session (one per lock name in use); past it a generation gets its own watch. */
export const keyWatchesPerSessionMax = 64;

const kept = new WeakMap<Session, Map<string, KeyWatch>>();

/** Watches generation `myRev` of `key` (a key under `session`'s lease) for its loss. */
export function watchGeneration(session: Session, key: string, myRev: number): AbortController {
  let watches = kept.get(session);
  if (!watches) {
    watches = new Map();
    kept.set(session, watches);
  }
  let w = watches.get(key);
  if (!w && watches.size < keyWatchesPerSessionMax && !session.lost.aborted) {
    const map = watches;
    const created: KeyWatch = new KeyWatch(session, key, () => {
      if (map.get(key) === created) map.delete(key);
    });
    w = created;
    watches.set(key, w);
  }
  if (w) return w.attach(myRev);
  const own = new AbortController();
  watchOwnership(session.kv, toBytes(key), myRev, myRev + 1, own);
  return own;
}

interface Generation {
  readonly myRev: number;
  readonly ctrl: AbortController;
}

class KeyWatch {
  readonly #kv: KV;
  readonly #session: Session;
  readonly #key: Uint8Array;
  readonly #text: string;
  readonly #onClosed: () => void;
  readonly #stop = new AbortController();
  readonly #generations = new Set<Generation>();
  /** The watch's start revision; 0 until the first generation attaches. */
  #from = 0;
  /** The next revision the watch has not delivered a delete for (where a hand-over resumes). */
  #next = 0;
  /** The newest delete of the key delivered so far (0: none). */
  #lastDelete = 0;
  #idle: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  readonly #onSessionLost = () => this.#close(this.#session.lost.reason);

  constructor(session: Session, key: string, onClosed: () => void) {
    this.#session = session;
    this.#kv = session.kv;
    this.#key = toBytes(key);
    this.#text = key;
    this.#onClosed = onClosed;
    session.lost.addEventListener('abort', this.#onSessionLost, { once: true });
  }

  attach(myRev: number): AbortController {
    const ctrl = new AbortController();
    if (this.#closed || (this.#from > 0 && this.#from > myRev + 1)) {
      // This watch cannot cover the generation from its creation on: a watch of its own.
      watchOwnership(this.#kv, this.#key, myRev, myRev + 1, ctrl);
      return ctrl;
    }
    if (this.#from === 0) {
      this.#from = myRev + 1;
      this.#next = this.#from;
      // Started after the caller's synchronous work (a waiter opens its predecessor's watch
      // first: that one is latency-critical, see waitTurn).
      queueMicrotask(() => void this.#run());
    }
    clearTimeout(this.#idle);
    this.#idle = undefined;
    if (this.#lastDelete > myRev) {
      // Already deleted after its creation (the delete was delivered before this attach).
      this.#fire(ctrl, this.#lastDelete);
      if (this.#generations.size === 0) this.#scheduleIdle();
      return ctrl;
    }
    const g: Generation = { myRev, ctrl };
    this.#generations.add(g);
    ctrl.signal.addEventListener(
      'abort',
      () => {
        this.#generations.delete(g);
        if (this.#generations.size === 0 && !this.#closed) this.#scheduleIdle();
      },
      { once: true },
    );
    return ctrl;
  }

  #scheduleIdle(): void {
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => {
      if (this.#generations.size === 0) this.#close(undefined);
    }, keyWatchLingerMs);
    this.#idle.unref?.();
  }

  #fire(ctrl: AbortController, rev: number): void {
    if (!ctrl.signal.aborted)
      ctrl.abort(
        new ConclaveError(
          ErrorCode.SessionLost,
          `ownership lost: ${this.#text} was deleted or re-created at revision ${rev}`,
        ),
      );
  }

  #deleted(rev: number): void {
    if (rev > this.#lastDelete) this.#lastDelete = rev;
    if (rev + 1 > this.#next) this.#next = rev + 1;
    for (const g of [...this.#generations]) if (rev > g.myRev) this.#fire(g.ctrl, rev);
  }

  async #run(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    // From "now", not from `#from`: etcd serves a watch started in the past from its unsynced group,
    // caught up only every 100 ms, and a loss in that window would fire `lost` up to 100 ms late.
    // The revisions between `#from` and the registration are covered by one read of the key.
    const w = this.#kv.watch(this.#key, { filters: ['noput'], signal: this.#stop.signal });
    try {
      const registered = await w.ready;
      if (registered >= this.#from) await this.#readGap(registered);
      for await (const batch of w)
        for (const e of batch.events) if (e.type === 'delete') this.#deleted(e.kv.modRevision);
      // The iterator ends only when closed; if it ends otherwise, ownership is no longer watched.
      if (!this.#stop.signal.aborted)
        this.#close(
          new ConclaveError(ErrorCode.SessionLost, `ownership of ${this.#text} can no longer be verified`),
        );
    } catch (err) {
      if (this.#stop.signal.aborted) return;
      if (ConclaveError.is(err, ErrorCode.Compacted)) {
        // History is gone: every generation continues on a watch of its own, which re-reads the key.
        const next = this.#next;
        const handed = [...this.#generations];
        this.#generations.clear();
        this.#close(undefined);
        for (const g of handed)
          if (!g.ctrl.signal.aborted)
            watchOwnership(this.#kv, this.#key, g.myRev, Math.max(next, g.myRev + 1), g.ctrl);
        return;
      }
      this.#close(
        new ConclaveError(ErrorCode.SessionLost, `ownership of ${this.#text} can no longer be verified`, {
          cause: err,
        }),
      );
    } finally {
      await w.close();
    }
  }

  /**
   * The key as of revision `at` or later, for the revisions the watch (registered at `at`) does not
   * cover: absent means every generation so far was deleted by then; present with create revision
   * `c` means every earlier generation was deleted before `c`.
   */
  async #readGap(at: number): Promise<void> {
    const stop = this.#stop.signal;
    const r = await gapRead(() => rangeAtLeast(this.#kv, this.#key, at, { keysOnly: true }, stop), stop);
    const now = r.kvs[0];
    if (!now) this.#deleted(r.revision);
    else if (now.createRevision - 1 >= this.#from) this.#deleted(now.createRevision - 1);
    if (r.revision + 1 > this.#next) this.#next = r.revision + 1;
  }

  /** Ends the kept watch; attached generations fire with `reason` (none are attached on idle). */
  #close(reason: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#idle);
    this.#session.lost.removeEventListener('abort', this.#onSessionLost);
    this.#stop.abort();
    this.#onClosed();
    for (const g of [...this.#generations]) if (!g.ctrl.signal.aborted) g.ctrl.abort(reason);
    this.#generations.clear();
  }
}
