/**
 * Watch-driven waiting shared by the recipes (never polling, never spinning). Every wait starts its
 * watch at a revision the caller has already read (no gap, no duplicate read), and survives
 * compaction of that revision by reading the present state instead (DESIGN.md §3).
 */
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';

/** How often one wait re-reads after its start revision was compacted before giving up. */
export const compactedRetriesMax = 8;

/**
 * Resolves with the revision at which `key` was deleted, watching from `fromRevision` (inclusive).
 * With `createRevision`, a key that is present but has another create revision (deleted and
 * re-created while history was compacted) also counts as deleted. When the start revision was
 * compacted, reads the key: absent (or re-created) → resolves with the read's revision; present →
 * watches on from after the read. Rejects with the reason of `signal`.
 */
export async function waitDelete(
  kv: KV,
  key: Uint8Array,
  fromRevision: number,
  signal: AbortSignal,
  createRevision?: number,
): Promise<number> {
  let start = fromRevision;
  for (let attempt = 0; ; attempt++) {
    signal.throwIfAborted();
    const w = kv.watch(key, { startRevision: start, filters: ['noput'], signal });
    try {
      for await (const batch of w) {
        const del = batch.events.find((e) => e.type === 'delete');
        if (del) return del.kv.modRevision;
      }
      // The iterator ended without a delete: the signal closed it.
      throw abortReason(signal);
    } catch (err) {
      if (ConclaveError.is(err, ErrorCode.Compacted) && !signal.aborted && attempt < compactedRetriesMax) {
        // History is gone: read the present instead, then watch from after it.
        const r = await kv.range(key, { signal });
        const now = r.kvs[0];
        if (!now || (createRevision !== undefined && now.createRevision !== createRevision))
          return r.revision;
        start = r.revision + 1;
        continue;
      }
      throw signal.aborted ? abortReason(signal) : err;
    } finally {
      await w.close();
    }
  }
}

/**
 * Resolves at the first delete under `prefix` at or after `fromRevision`, with its revision. If the
 * start revision was compacted it resolves with 0 ("re-read the present"), so the caller re-checks.
 */
export async function waitAnyDelete(
  kv: KV,
  prefix: string,
  fromRevision: number,
  signal: AbortSignal,
): Promise<number> {
  const w = kv.watch(prefix, { prefix: true, startRevision: fromRevision, filters: ['noput'], signal });
  try {
    for await (const batch of w) {
      const del = batch.events.find((e) => e.type === 'delete');
      if (del) return del.kv.modRevision;
    }
    throw abortReason(signal);
  } catch (err) {
    if (ConclaveError.is(err, ErrorCode.Compacted) && !signal.aborted) return 0;
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
 * Fires `lost` when `key` is deleted or re-created (its create revision is no longer
 * `createRevision`) at or after `fromRevision`. Used for a handle's `lost` signal. Survives
 * compaction by re-reading the key; when ownership can no longer be verified, fires (safe side).
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
  const what = new TextDecoder().decode(key);
  const fire = (message: string, cause?: unknown) => {
    if (!lost.signal.aborted) lost.abort(new ConclaveError(ErrorCode.SessionLost, message, { cause }));
  };
  void (async () => {
    let start = fromRevision;
    for (let attempt = 0; attempt <= compactedRetriesMax; attempt++) {
      try {
        const rev = await waitDelete(kv, key, start, stop.signal, createRevision);
        fire(`ownership lost: ${what} was deleted or re-created at revision ${rev}`);
        return;
      } catch (err) {
        if (stop.signal.aborted) return;
        if (!ConclaveError.is(err, ErrorCode.Compacted)) {
          fire(`ownership of ${what} can no longer be verified`, err);
          return;
        }
        // waitDelete ran out of compaction retries: start over from the present.
        const r = await kv.range(key, { signal: stop.signal }).catch(() => undefined);
        if (stop.signal.aborted) return;
        if (r?.kvs[0]?.createRevision !== createRevision) {
          fire(`ownership of ${what} can no longer be verified`, err);
          return;
        }
        start = r.revision + 1;
      }
    }
    fire(`ownership of ${what} can no longer be verified: history kept being compacted`);
  })();
}
