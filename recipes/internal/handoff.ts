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
 * A releaser adds the read only while waiters of the same prefix are registered on its client, so
 * a lone holder's unlock costs exactly what it did.
 *
 * Bound: one registration per waiting acquire (its session's key), removed when the wait ends; the
 * registry holds nothing from outside input.
 */

import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue, Op } from '../../src/types.js';

type Grant = (revision: number) => void;

interface Registered {
  readonly myRev: number;
  readonly grant: Grant;
}

/** kv → blockers prefix → our key → the waiting generation. */
const waiting = new WeakMap<KV, Map<string, Map<string, Registered>>>();

/**
 * kv → "prefix + key + create revision" of a release with a handoff read in flight → settles once
 * its offer was made. etcd sends the delete's watch event before the txn's reply, so a waiter woken
 * by the event of a local release waits for that offer instead of reading the queue again.
 */
const releasing = new WeakMap<KV, Map<string, Promise<void>>>();
const releaseId = (prefix: string, key: string, rev: number) => `${rev}:${prefix}\0${key}`;

/**
 * Runs `release` (a delete txn carrying `handoffRead`, which makes its offer before settling) as
 * a known local release of generation `rev` of `key`, for `releaseOf`.
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

/**
 * Registers generation `myRev` of `myKey` (under `prefix`) as waiting on `kv`. `grant` is called at
 * most once, with the revision from which the key owns the turn. Call the returned function when
 * the wait ends, granted or not.
 */
export function awaitHandoff(kv: KV, prefix: string, myKey: string, myRev: number, grant: Grant): () => void {
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
  const entry: Registered = { myRev, grant };
  keys.set(myKey, entry);
  const map = keys;
  return () => {
    if (map.get(myKey) !== entry) return;
    map.delete(myKey);
    if (map.size === 0 && byPrefix.get(prefix) === map) byPrefix.delete(prefix);
  };
}

/**
 * The read a releaser appends to its delete txn, or none when no waiter of `prefix` is registered
 * on `kv` (then the txn stays a plain guarded delete).
 */
export function handoffRead(kv: KV, prefix: string): Op | undefined {
  if (!waiting.get(kv)?.get(prefix)?.size) return undefined;
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
  const keys = waiting.get(kv)?.get(prefix);
  if (!keys) return;
  const key = toText(first.key);
  const w = keys.get(key);
  if (!w || w.myRev !== first.createRevision) return;
  keys.delete(key);
  w.grant(revision);
}
