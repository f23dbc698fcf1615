/**
 * In-process handoff for "lowest create revision owns" queues (Mutex, Election).
 *
 * A waiter normally learns it owns the lock in two steps: the delete event of its predecessor,
 * then one re-check read (queue.ts). When the releasing holder and the next waiter share one KV
 * client (one process, one connection), the releaser can prove the handoff itself: its delete txn
 * also reads the earliest key left under the prefix, at the delete's revision R. If that key is a
 * registered waiter's own key with the waiter's create revision, then at R the waiter's key exists
 * and no key created before it does; keys created later all have larger create revisions, so the
 * waiter owns from R on. The releaser hands it R directly: no event wait, no re-check read.
 *
 * The proof comes from a linearizable txn, so the handoff is as safe as the normal path. It is
 * only a shortcut: the waiter keeps its predecessor watch until granted, and a waiter never
 * registered (another client, another process, Go or etcdctl) is woken by the usual delete event.
 * A releaser adds the read only while a waiter registered on its client watches the releasing key
 * as its predecessor, so an unlock with nobody local directly behind it costs exactly what it did.
 * (On etcd the read scans and sorts the prefix on every member, as the enqueue txn's read already
 * does: a cost proportional to the queue's length, paid once per handoff.)
 *
 * Bound: one registration per waiting acquire (its session's key), removed when the wait ends or
 * the turn is granted, and a prefix's map is dropped with its last registration; one tracked
 * release per releasing handle. Nothing stays behind per lock name.
 */

import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue, Op } from '../../src/types.js';

type Grant = (revision: number) => void;

interface Registered {
  readonly myRev: number;
  readonly grant: Grant;
  /** `generationId` of the predecessor currently watched ('' before the first). */
  pred: string;
}

const generationId = (key: string, rev: number) => `${rev}:${key}`;

/** kv → blockers prefix → our key → the waiting generation. */
const waiting = new WeakMap<KV, Map<string, Map<string, Registered>>>();

/**
 * kv → prefix → `generationId` of a release with a handoff read in flight → settles once the
 * release is over (its offer made, or its txn failed). A waiter woken by the delete event of such a
 * release waits for it instead of reading the queue: the event and the txn's reply travel on
 * different streams, and the offer comes when the reply arrives.
 */
const releasing = new WeakMap<KV, Map<string, Promise<void>>>();
const releaseId = (prefix: string, key: string, rev: number) => `${prefix}\0${generationId(key, rev)}`;

/** A registered waiter: say which predecessor it watches; `done()` when the wait ends. */
export interface HandoffWait {
  watching(predKey: string, predRev: number): void;
  done(): void;
}

/**
 * Registers generation `myRev` of `myKey` (under `prefix`) as waiting on `kv`. `grant` is called at
 * most once, with the revision from which the key owns the turn.
 */
export function awaitHandoff(
  kv: KV,
  prefix: string,
  myKey: string,
  myRev: number,
  grant: Grant,
): HandoffWait {
  let byPrefix = waiting.get(kv);
  if (!byPrefix) {
    byPrefix = new Map();
    waiting.set(kv, byPrefix);
  }
  let keys = byPrefix.get(prefix);
  if (!keys) {
    keys = new Map();
    byPrefix.set(prefix, keys);
  }
  const entry: Registered = { myRev, grant, pred: '' };
  // A second wait of the same session and name (a re-entrant key) replaces the first here; the
  // first then simply takes the normal path.
  keys.set(myKey, entry);
  const map = keys;
  const prefixes = byPrefix;
  return {
    watching: (predKey, predRev) => {
      entry.pred = generationId(predKey, predRev);
    },
    done: () => {
      if (map.get(myKey) !== entry) return;
      map.delete(myKey);
      if (map.size === 0 && prefixes.get(prefix) === map) prefixes.delete(prefix);
    },
  };
}

/**
 * The read a releaser of generation `rev` of `key` appends to its delete txn, or none when no
 * waiter registered on `kv` watches that generation as its predecessor (then the txn stays a plain
 * guarded delete).
 */
export function handoffRead(kv: KV, prefix: string, key: string, rev: number): Op | undefined {
  const keys = waiting.get(kv)?.get(prefix);
  if (!keys) return undefined;
  const id = generationId(key, rev);
  let behind = false;
  for (const w of keys.values()) {
    if (w.pred === id) {
      behind = true;
      break;
    }
  }
  if (!behind) return undefined;
  return {
    type: 'get',
    key: prefix,
    options: { prefix: true, sort: { target: 'create', order: 'ascend' }, limit: 1, keysOnly: true },
  };
}

/**
 * After a releaser's delete at `revision`: `first` is the earliest key left under `prefix` at that
 * revision (read in the same txn). Grants the turn if it is a registered waiter's generation.
 */
export function offerHandoff(kv: KV, prefix: string, first: KeyValue | undefined, revision: number): void {
  if (!first) return;
  const byPrefix = waiting.get(kv);
  const keys = byPrefix?.get(prefix);
  if (!byPrefix || !keys) return;
  const key = toText(first.key);
  const w = keys.get(key);
  if (!w || w.myRev !== first.createRevision) return;
  keys.delete(key);
  if (keys.size === 0) byPrefix.delete(prefix);
  w.grant(revision);
}

/**
 * Runs `release` (a delete txn carrying `handoffRead`; it makes its offer before settling) as the
 * known local release of generation `rev` of `key`, for `releaseOf`.
 */
export async function trackRelease(
  kv: KV,
  prefix: string,
  key: string,
  rev: number,
  release: () => Promise<void>,
): Promise<void> {
  let map = releasing.get(kv);
  if (!map) {
    map = new Map();
    releasing.set(kv, map);
  }
  const id = releaseId(prefix, key, rev);
  const p = release();
  // Two handles of one generation (a re-entrant key) releasing at once: the first one is tracked.
  if (map.has(id)) return p;
  const settled = p.then(
    () => undefined,
    () => undefined,
  );
  map.set(id, settled);
  try {
    await p;
  } finally {
    if (map.get(id) === settled) map.delete(id);
  }
}

/** The in-flight local release of generation `rev` of `key` under `prefix`, if there is one. */
export function releaseOf(kv: KV, prefix: string, key: string, rev: number): Promise<void> | undefined {
  return releasing.get(kv)?.get(releaseId(prefix, key, rev));
}

/** Registered waiters and tracked releases on `kv` (for tests: both are 0 when nothing waits). */
export function handoffState(kv: KV): { prefixes: number; waiters: number; releases: number } {
  const byPrefix = waiting.get(kv);
  let waiters = 0;
  for (const m of byPrefix?.values() ?? []) waiters += m.size;
  return { prefixes: byPrefix?.size ?? 0, waiters, releases: releasing.get(kv)?.size ?? 0 };
}
