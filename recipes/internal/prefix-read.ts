/**
 * Reading every key under a prefix at one revision, in pages: the read behind PrefixCache (and so
 * ConfigWatcher, ServiceResolver, GroupView) and `setConfig`.
 *
 * The first page fixes the revision; later pages are pinned to it (etcd's `revision` range
 * option), so the result is the prefix exactly as it was then, however many pages it takes. If
 * that revision is compacted between pages, the read starts over (`prefixReadAttemptsMax` times).
 * Pages bound each response's size (a gRPC client refuses large messages) and a prefix past
 * `keysMax` keys or `bytesMax` bytes fails early, before it is all in memory.
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { concatBytes, prefixEnd } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue } from '../../src/types.js';

/** Keys read per page (every page after the first pinned at the first one's revision). */
export const prefixReadPageKeysMax = 1000;
/** Whole re-reads of a paginated read whose pinned revision was compacted mid-way. */
export const prefixReadAttemptsMax = 3;

/** The prefix as it was at one revision. */
export interface PrefixSnapshot {
  readonly revision: number;
  /** In key order. */
  readonly kvs: KeyValue[];
  /** Bytes of keys plus values. */
  readonly bytes: number;
}

export interface PrefixReadBounds {
  readonly keysMax: number;
  readonly bytesMax: number;
  /** The error for a prefix past a bound (`have`: the keys or bytes found so far). */
  readonly tooBig: (limit: 'keysMax' | 'bytesMax', have: number) => Error;
  readonly signal?: AbortSignal;
}

/** Bytes a cached entry holds: its key plus its value. */
export const entryBytes = (kv: KeyValue): number => kv.key.length + kv.value.length;

/** Every key under `prefix` at one revision (see the module comment). */
export async function readPrefix(
  kv: KV,
  prefix: Uint8Array,
  bounds: PrefixReadBounds,
): Promise<PrefixSnapshot> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await readPages(kv, prefix, bounds);
    } catch (err) {
      if (!ConclaveError.is(err, ErrorCode.Compacted) || attempt >= prefixReadAttemptsMax) throw err;
    }
  }
}

async function readPages(kv: KV, prefix: Uint8Array, bounds: PrefixReadBounds): Promise<PrefixSnapshot> {
  const { keysMax, bytesMax, tooBig, signal } = bounds;
  const end = prefixEnd(prefix);
  const first = await kv.range(prefix, { end, limit: prefixReadPageKeysMax, signal });
  if (first.count > keysMax) throw tooBig('keysMax', first.count);
  const kvs = [...first.kvs];
  let bytes = 0;
  for (const e of first.kvs) bytes += entryBytes(e);
  if (bytes > bytesMax) throw tooBig('bytesMax', bytes);
  let more = first.more;
  // Terminates: each page advances past its last key, and the count is bounded above.
  for (let page = 1; more && page <= Math.ceil(keysMax / prefixReadPageKeysMax); page++) {
    const after = concatBytes(kvs[kvs.length - 1]!.key, new Uint8Array([0]));
    const r = await kv.range(after, { end, revision: first.revision, limit: prefixReadPageKeysMax, signal });
    kvs.push(...r.kvs);
    for (const e of r.kvs) bytes += entryBytes(e);
    if (bytes > bytesMax) throw tooBig('bytesMax', bytes);
    more = r.more;
  }
  if (more || kvs.length > keysMax) throw tooBig('keysMax', kvs.length + (more ? 1 : 0));
  return { revision: first.revision, kvs, bytes };
}
