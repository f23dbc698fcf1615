/**
 * Revocation requests (Apache Curator's revocable locks, `InterProcessMutex.makeRevocable` and
 * `Revoker.attemptRevoke`): anyone may ask the holder of a lock, read/write lock or permit to
 * release it; the holder sees the request on its handle and decides. Nothing is taken by force.
 *
 * Through the store, so it works across processes: a request is a put of the holder's own key,
 * guarded on its create revision (the holder's token) and keeping the holder's lease
 * (`ignoreLease`), whose value is a small JSON object. Curator writes its "__REVOKE__" marker
 * into the lock node's data the same way. The key's generation (create revision) is unchanged, so
 * the queue order, the fencing token and every ownership check stay as they were; etcd's Go
 * `Mutex` and `etcdctl lock` ignore the value. A revocable handle watches its key for such puts.
 */
import { ConclaveError, ErrorCode, invalidArgument } from '../../src/errors.js';
import { toBytes, toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { CallOptions } from '../../src/types.js';
import { backoffMs, pause } from './timing.js';

/** The most UTF-8 bytes of a request's `by` and `reason` together. */
export const revocationTextBytesMax = 1024;
/** Consecutive failed attempts to (re)open a revocable handle's watch before it stops watching. */
const watchAttemptsMax = 20;
/** Longest back-off (ms) between two attempts to open that watch. */
const revocationBackoffMsMax = 2000;

/** A request to release a held key, as its holder sees it (`revocationRequested.reason`). */
export interface RevocationRequest {
  /** Who asks (free text, e.g. a process or operator name), if given. */
  readonly by?: string;
  /** Why, if given. */
  readonly reason?: string;
  /** The store revision at which the request was written. */
  readonly revision: number;
}

/** Options of `requestRevocation`. */
export interface RevocationOptions extends CallOptions {
  /** Who asks (shown to the holder). */
  readonly by?: string;
  /** Why (shown to the holder). */
  readonly reason?: string;
}

const marker = 'conclaveRevocationRequest';

/**
 * Asks the holder of `holder.key` (generation `holder.token`: the handle's or `tryLock()`'s
 * `LockHeld` key and token) to release it. Resolves true when the request was written, false when
 * that generation of the key is gone (released, lost, or taken by a later holder): nobody to ask.
 * The holder sees it only if its handle was made revocable (`{ revocable: true }`).
 */
export async function requestRevocation(
  kv: KV,
  holder: { readonly key: string; readonly token: number },
  opts: RevocationOptions = {},
): Promise<boolean> {
  if (typeof holder?.key !== 'string' || holder.key.length === 0)
    invalidArgument('holder.key', 'requestRevocation: holder.key must be a non-empty string');
  if (!Number.isSafeInteger(holder.token) || holder.token < 1)
    invalidArgument('holder.token', 'requestRevocation: holder.token must be a positive integer');
  const text = (opts.by ?? '') + (opts.reason ?? '');
  if (toBytes(text).length > revocationTextBytesMax)
    invalidArgument(
      'reason',
      `requestRevocation: by and reason together must be at most ${revocationTextBytesMax} bytes`,
    );
  const value = JSON.stringify({
    [marker]: true,
    ...(opts.by !== undefined ? { by: String(opts.by) } : {}),
    ...(opts.reason !== undefined ? { reason: String(opts.reason) } : {}),
  });
  const t = await kv.txn(
    {
      compare: [{ key: holder.key, target: 'create', result: '=', value: holder.token }],
      success: [{ type: 'put', key: holder.key, value, options: { ignoreLease: true } }],
      failure: [],
    },
    opts.signal ? { signal: opts.signal } : {},
  );
  return t.succeeded;
}

/** The request a value of a held key carries, if it is one. */
function decodeRequest(value: Uint8Array, revision: number): RevocationRequest | undefined {
  if (value.length === 0 || value.length > revocationTextBytesMax * 6 + 256) return undefined;
  try {
    const o = JSON.parse(toText(value)) as Record<string, unknown>;
    if (o?.[marker] !== true) return undefined;
    return {
      ...(typeof o.by === 'string' ? { by: o.by } : {}),
      ...(typeof o.reason === 'string' ? { reason: o.reason } : {}),
      revision,
    };
  } catch {
    return undefined;
  }
}

/**
 * Watches generation `token` of `key` (from its creation, so a request made while its owner was
 * still waiting counts too) and aborts `requested` with the first revocation request, until
 * `stop` fires. A failure to watch is retried with back-off; past the bound it stops watching
 * (the holder then just does not hear of requests: nothing is lost that it held).
 */
export function watchRevocation(
  kv: KV,
  key: string,
  token: number,
  requested: AbortController,
  stop: AbortSignal,
): void {
  void (async () => {
    let from = token;
    for (let failures = 0; failures <= watchAttemptsMax && !stop.aborted && !requested.signal.aborted; ) {
      const w = kv.watch(key, { startRevision: from, filters: ['nodelete'], signal: stop });
      try {
        for await (const batch of w) {
          failures = 0;
          for (const e of batch.events) {
            from = Math.max(from, e.kv.modRevision + 1);
            if (e.kv.createRevision !== token) return; // a later generation: not ours any more
            const r = decodeRequest(e.kv.value, e.kv.modRevision);
            if (r) {
              requested.abort(r);
              return;
            }
          }
        }
        return; // closed by `stop`
      } catch (err) {
        if (stop.aborted) return;
        if (ConclaveError.is(err, ErrorCode.Compacted)) {
          // History gone: the present value says whether a request is pending.
          const now = await kv.range(key, { signal: stop }).catch(() => undefined);
          if (stop.aborted) return;
          if (now) {
            const cur = now.kvs[0];
            if (!cur || cur.createRevision !== token) return;
            const r = decodeRequest(cur.value, cur.modRevision);
            if (r) {
              requested.abort(r);
              return;
            }
            from = now.revision + 1;
          }
        }
        failures++;
        await pause(backoffMs(failures, revocationBackoffMsMax), stop);
      } finally {
        await w.close().catch(() => undefined);
      }
    }
  })();
}
