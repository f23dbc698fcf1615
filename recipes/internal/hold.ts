/** Building a held-key handle (lock, read lock, permit) with lost, guard, release. */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { Session } from '../../src/session.js';
import type { CallOptions, Compare } from '../../src/types.js';
import { ownershipSignal } from './queue.js';

export interface HeldKey extends AsyncDisposable {
  readonly key: string;
  /** The key's create revision: a fencing token. */
  readonly token: number;
  readonly lost: AbortSignal;
  guard(): Compare;
  /** Deletes the key. Idempotent; retry after an RPC error. */
  release(opts?: CallOptions): Promise<void>;
}

export function heldKey(
  session: Session,
  key: string,
  myRev: number,
  revision: number,
  opts: { onSuspend: boolean; what: string },
): HeldKey {
  const lost = ownershipSignal(session, toBytes(key), myRev, revision + 1, opts);
  const guard = (): Compare => ({ key, target: 'create', result: '=', value: myRev });
  let released: Promise<void> | undefined;
  const release = (o: CallOptions = {}): Promise<void> => {
    // Delete only our own generation of the key (a later holder may reuse the same key name).
    released ??= session.kv
      .txn({ compare: [guard()], success: [{ type: 'delete', key }], failure: [] }, o)
      .then(() => {
        if (!lost.signal.aborted) lost.abort(new ConclaveError(ErrorCode.Closed, `${opts.what} released`));
      })
      .catch((err) => {
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
