/**
 * The queueing core shared by Mutex, RWMutex, Semaphore and Election: wait, watch-driven, until no
 * key that blocks us remains, re-checking the whole situation after every wake-up (never inferring
 * ownership from a single delete event — the cause of the "two writers" bug in etcd's experimental
 * RWMutex when a waiter's session expires).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import type { Session } from '../../src/session.js';
import { rejectOnAbort, waitAnyDelete, waitDelete, watchOwnership } from './wait.js';

export interface TurnSpec {
  /** Our own queue key. */
  readonly myKey: string;
  /** Our key's create revision. */
  readonly myRev: number;
  /** Prefix whose keys created before ours block us. */
  readonly blockers: string;
  /** How many earlier blockers may remain when it is our turn (1 for locks; permits for a semaphore). */
  readonly allowed?: number;
  /** What we are waiting for, for messages. */
  readonly what: string;
}

/** Waits for our turn; returns the store revision at which it was confirmed. */
export async function waitTurn(kv: KV, spec: TurnSpec, signal: AbortSignal): Promise<number> {
  const allowed = spec.allowed ?? 0;
  while (true) {
    const t = await kv.txn(
      {
        compare: [],
        success: [
          {
            type: 'get',
            key: spec.blockers,
            // etcd's `count` ignores the create-revision filter, so with permits we need the keys
            // themselves (keysOnly, bounded by the number of participants); a lock needs only one.
            options: {
              prefix: true,
              maxCreateRevision: spec.myRev - 1,
              sort: { target: 'create', order: 'descend' },
              keysOnly: true,
              ...(allowed === 0 ? { limit: 1 } : {}),
            },
          },
          { type: 'get', key: spec.myKey, options: { keysOnly: true } },
        ],
        failure: [],
      },
      { signal },
    );
    const before = t.responses[0]?.type === 'get' ? t.responses[0] : undefined;
    const mine = t.responses[1]?.type === 'get' ? t.responses[1].kvs[0] : undefined;
    if (!mine || mine.createRevision !== spec.myRev) {
      throw new ConclaveError(
        ErrorCode.SessionLost,
        `${spec.what}: our queue key ${spec.myKey} disappeared (session expired or key deleted)`,
      );
    }
    const pred = before?.kvs[0];
    if (!before || !pred || before.kvs.length <= allowed) return t.revision;
    // Locks (allowed 0) wait for the newest blocker created before us: every earlier one must go
    // anyway, and one watched key means no herd. With permits, any earlier delete may be the one
    // that lets us in, so watch the blockers' range for deletes. Either way, re-check everything.
    const stop = rejectOnAbort(signal);
    const gone =
      allowed === 0
        ? waitDelete(kv, pred.key, t.revision + 1, signal)
        : waitAnyDelete(kv, spec.blockers, t.revision + 1, signal);
    try {
      await Promise.race([gone, stop.promise]);
    } finally {
      stop.off();
    }
  }
}

/**
 * The `lost` signal of a held key: fires when the session is lost, when the key is deleted or
 * replaced, and (with `onSuspend`) as soon as the session is suspended.
 */
export function ownershipSignal(
  session: Session,
  key: Uint8Array,
  createRevision: number,
  fromRevision: number,
  opts: { onSuspend: boolean; what: string },
): AbortController {
  const lost = new AbortController();
  const onSession = () => lost.abort(session.lost.reason);
  if (session.lost.aborted) onSession();
  else session.lost.addEventListener('abort', onSession, { once: true });
  const offState = opts.onSuspend
    ? session.onStateChange((s) => {
        if (s === 'suspended')
          lost.abort(
            new ConclaveError(ErrorCode.SessionLost, `${opts.what}: session suspended (keep-alives failing)`),
          );
      })
    : () => {};
  lost.signal.addEventListener(
    'abort',
    () => {
      session.lost.removeEventListener('abort', onSession);
      offState();
    },
    { once: true },
  );
  watchOwnership(session.kv, key, createRevision, fromRevision, lost);
  return lost;
}
