/**
 * Which queue keys of a session this process is using: acquires in flight and handles not yet
 * released or lost. A key of the session that is in neither is one a failed acquire left behind
 * (its put's outcome unknown), and only such a key may be deleted without knowing its generation.
 * Counts per session and key, dropped with the session (WeakMap) and at zero.
 */
import type { Session } from '../../src/session.js';

const live = new WeakMap<Session, Map<string, number>>();

/** Marks `key` in use by one more acquire or handle of `session`; call the returned function once when it ends. */
export function useKey(session: Session, key: string): () => void {
  let byKey = live.get(session);
  if (!byKey) live.set(session, (byKey = new Map()));
  byKey.set(key, (byKey.get(key) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (byKey.get(key) ?? 1) - 1;
    if (n > 0) byKey.set(key, n);
    else byKey.delete(key);
  };
}

/** Whether more than `besides` acquires or handles of `session` are using `key` (`besides`: the caller's own). */
export function keyInUse(session: Session, key: string, besides = 0): boolean {
  return (live.get(session)?.get(key) ?? 0) > besides;
}
