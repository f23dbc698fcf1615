/**
 * Watch-driven waiting shared by the recipes (never polling, never spinning).
 */
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';

/**
 * Resolves once `key` is deleted at or after `fromRevision` (or is already absent at it).
 * Rejects with the reason of `signal`. A compacted start revision is handled by re-reading.
 */
export async function waitDelete(
  kv: KV,
  key: Uint8Array,
  fromRevision: number,
  signal: AbortSignal,
): Promise<void> {
  let start = fromRevision;
  for (let attempt = 0; ; attempt++) {
    signal.throwIfAborted();
    const w = kv.watch(key, { startRevision: start, filters: ['noput'], signal });
    try {
      for await (const batch of w) {
        if (batch.events.some((e) => e.type === 'delete')) return;
      }
      // The iterator ended without a delete: the signal closed it.
      throw abortReason(signal);
    } catch (err) {
      if (ConclaveError.is(err, ErrorCode.Compacted) && attempt < 3) {
        // History is gone: read the present instead, then watch from after it.
        const r = await kv.range(key, { signal });
        if (r.count === 0) return;
        start = r.revision + 1;
        continue;
      }
      throw signal.aborted ? abortReason(signal) : err;
    } finally {
      await w.close();
    }
  }
}

/** Resolves at the first delete under `prefix` at or after `fromRevision` (compaction: resolves, so the caller re-checks). */
export async function waitAnyDelete(
  kv: KV,
  prefix: string,
  fromRevision: number,
  signal: AbortSignal,
): Promise<void> {
  const w = kv.watch(prefix, { prefix: true, startRevision: fromRevision, filters: ['noput'], signal });
  try {
    for await (const batch of w) if (batch.events.length > 0) return;
    throw abortReason(signal);
  } catch (err) {
    if (ConclaveError.is(err, ErrorCode.Compacted)) return;
    throw signal.aborted ? abortReason(signal) : err;
  } finally {
    await w.close();
  }
}

/** A promise that rejects when `signal` aborts (with its reason); `off()` detaches it. */
export function rejectOnAbort(signal: AbortSignal): { promise: Promise<never>; off(): void } {
  let off = () => {};
  const promise = new Promise<never>((_, reject) => {
    if (signal.aborted) {
      reject(abortReason(signal));
      return;
    }
    const on = () => reject(abortReason(signal));
    signal.addEventListener('abort', on, { once: true });
    off = () => signal.removeEventListener('abort', on);
  });
  promise.catch(() => undefined);
  return { promise, off: () => off() };
}

/**
 * Fires the returned controller when `key` is deleted or re-created (its create revision is no
 * longer `createRevision`) after `fromRevision`. Used for a handle's `lost` signal.
 */
export function watchOwnership(
  kv: KV,
  key: Uint8Array,
  createRevision: number,
  fromRevision: number,
  lost: AbortController,
): void {
  const stop = new AbortController();
  lost.signal.addEventListener('abort', () => stop.abort(), { once: true });
  void (async () => {
    try {
      const w = kv.watch(key, { startRevision: fromRevision, signal: stop.signal });
      for await (const batch of w) {
        for (const e of batch.events) {
          if (e.type === 'delete' || e.kv.createRevision !== createRevision) {
            lost.abort(
              new ConclaveError(
                ErrorCode.SessionLost,
                `ownership lost: ${new TextDecoder().decode(key)} was ${e.type === 'delete' ? 'deleted' : 're-created'} at revision ${e.kv.modRevision}`,
              ),
            );
            return;
          }
        }
      }
    } catch (err) {
      if (stop.signal.aborted) return;
      if (ConclaveError.is(err, ErrorCode.Compacted)) {
        // Re-check the present state of the key instead of the lost history.
        const kvNow = await kv.get(key).catch(() => undefined);
        if (kvNow?.createRevision === createRevision) {
          watchOwnership(
            kv,
            key,
            createRevision,
            (await kv.status().catch(() => ({ revision: fromRevision }))).revision + 1,
            lost,
          );
          return;
        }
      }
      // We can no longer tell whether we still own the key: treat it as lost (safe side).
      lost.abort(
        new ConclaveError(ErrorCode.SessionLost, 'ownership can no longer be verified', { cause: err }),
      );
    }
  })();
}
