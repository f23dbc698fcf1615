import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes, toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { type PrefixSnapshot, readPrefix } from './prefix-read.js';

/** Most keys a config prefix may hold; past it the read (or the watcher) fails `request-too-large`. */
export const configKeysMax = 10_000;
/** Decodes one stored value (`key` is relative to the prefix). Throwing rejects the config. */
export type ConfigDecoder = (value: Uint8Array, key: string) => unknown;
export const jsonDecode: ConfigDecoder = (value) => JSON.parse(toText(value));
export function checkPrefix(what: string, prefix: unknown): asserts prefix is string {
  if (typeof prefix !== 'string' || prefix.length === 0)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${what}: prefix must be a non-empty string`);
}

/** Reads every key under `prefix` at one revision (pages pinned to the first one's revision). */
export function readSnapshot(kv: KV, prefix: string, signal?: AbortSignal): Promise<PrefixSnapshot> {
  return readPrefix(kv, toBytes(prefix), {
    keysMax: configKeysMax,
    bytesMax: Number.MAX_SAFE_INTEGER,
    tooBig: (_limit, have) => tooManyKeys(prefix, have),
    ...(signal ? { signal } : {}),
  });
}

export function tooManyKeys(prefix: string, n: number): ConclaveError {
  return new ConclaveError(
    ErrorCode.RequestTooLarge,
    `config ${prefix}: the prefix holds ${n} keys, more than configKeysMax (${configKeysMax})`,
    { details: { prefix, keys: n } },
  );
}
