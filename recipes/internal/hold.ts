/** Building a held-key handle (lock, read lock, permit) with lost, guard, release. */

import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { Session } from '../../src/session.js';
import type { CallOptions, Compare } from '../../src/types.js';
import { handoffRead, offerHandoff, trackRelease } from './handoff.js';
import { useKey } from './live-keys.js';
import { watchRevocation } from './revocation.js';
import type { LossPolicy } from './session-state.js';
import { holderLoss } from './turn.js';

/**
 * A key held in a recipe's queue (a lock, a read or write lock, a semaphore permit): it is yours
 * while `lost` has not fired; `release()` gives it up.
 */
export interface HeldKey extends AsyncDisposable {
  /** The held key. */
  readonly key: string;
  /** The key's create revision: a fencing token. */
  readonly token: number;
  /**
   * Fires (with a `session-lost` or `closed` error as reason) when the key is, or may be, no longer
   * yours: the session was lost (or suspended, with `lostOnSuspend`), the key was deleted, or it was
   * released.
   */
  readonly lost: AbortSignal;
  /**
   * A txn compare that holds only while this key is yours: put it in the `compare` of a write
   * that must not happen after you lost the key (fencing on the store itself).
   */
  guard(): Compare;
  /**
   * Fires when someone asked this holder to release (`requestRevocation`), with the request
   * (`RevocationRequest`: `by`, `reason`, `revision`) as its reason. Only for handles of a recipe
   * made with `{ revocable: true }`; it never fires otherwise. Nothing is taken: you decide
   * whether and when to release.
   */
  readonly revocationRequested: AbortSignal;
  /** Deletes the key. Idempotent; retry after an RPC error. */
  release(opts?: CallOptions): Promise<void>;
}

/**
 * A handle for `key` (generation `myRev`), held while `ownership` (see `watchKeyLoss`) has not
 * fired and the session is not lost (or, with `lostOnSuspend`, suspended). Takes over `ownership`:
 * releasing or losing the handle stops its watch. `handoffPrefix`: the queue prefix of a "lowest
 * create revision owns" recipe, whose next owner on this client is handed the turn by the release
 * (handoff.ts).
 */
export function heldKey(
  session: Session,
  key: string,
  myRev: number,
  ownership: AbortController,
  policy: LossPolicy,
  handoffPrefix?: string,
  revocable = false,
): HeldKey {
  const lost = holderLoss(session, ownership, policy);
  // In use until released or lost (turn.ts deletes a key of unknown generation only when unused).
  const unuse = useKey(session, key);
  if (lost.signal.aborted) unuse();
  else lost.signal.addEventListener('abort', unuse, { once: true });
  // A revocable handle watches its key for requests until it is released or lost.
  const requested = new AbortController();
  if (revocable) watchRevocation(session.kv, key, myRev, requested, lost.signal);
  const guard = (): Compare => ({ key, target: 'create', result: '=', value: myRev });
  let released: Promise<void> | undefined;
  const release = (o: CallOptions = {}): Promise<void> => {
    released ??= (async () => {
      const kv = session.kv;
      // Delete only our own generation of the key (a later holder may reuse the same key name).
      const del = { type: 'delete', key } as const;
      const releasedError = () => new ConclaveError(ErrorCode.Closed, `${policy.what} released`);
      // With a waiter on this client right behind us, the delete also reads who is first now.
      const next = handoffPrefix === undefined ? undefined : handoffRead(kv, handoffPrefix, key, myRev);
      if (!next) {
        await kv.txn({ compare: [guard()], success: [del], failure: [] }, o);
        if (!lost.signal.aborted) lost.abort(releasedError());
        return;
      }
      const prefix = handoffPrefix!;
      await trackRelease(kv, prefix, key, myRev, async () => {
        const t = await kv.txn({ compare: [guard()], success: [del, next], failure: [] }, o);
        // Our `lost` fires before the next holder is handed the lock.
        if (!lost.signal.aborted) lost.abort(releasedError());
        const r = t.responses[1];
        if (t.succeeded) offerHandoff(kv, prefix, r?.type === 'get' ? r.kvs[0] : undefined, t.revision);
      });
    })().catch((err) => {
      released = undefined;
      throw err;
    });
    return released;
  };
  return {
    key,
    token: myRev,
    lost: lost.signal,
    guard,
    revocationRequested: requested.signal,
    release,
    [Symbol.asyncDispose]: () => release().catch(() => undefined),
  };
}

/** Puts `key` under the session's lease if absent; returns its create revision (existing or new). */
export async function putIfAbsent(
  session: Session,
  key: string,
  value: string,
  signal: AbortSignal | undefined,
): Promise<{ myRev: number; revision: number }> {
  const t = await session.kv.txn(
    {
      compare: [{ key, target: 'create', result: '=', value: 0 }],
      success: [{ type: 'put', key, value, options: { lease: session.lease } }],
      failure: [{ type: 'get', key, options: { keysOnly: true } }],
    },
    signal ? { signal } : {},
  );
  if (t.succeeded) return { myRev: t.revision, revision: t.revision };
  const r = t.responses[0];
  const kv = r?.type === 'get' ? r.kvs[0] : undefined;
  if (!kv) throw new ConclaveError(ErrorCode.Conflict, `${key} vanished while being created`);
  return { myRev: kv.createRevision, revision: t.revision };
}
