/** Argument checks shared by the recipes' constructors and calls. */
import { ConclaveError, ErrorCode } from '../../src/errors.js';

/**
 * `n` if it is an integer from `min` to `max`; else an `invalid-argument` error that names the
 * argument (`what`, e.g. "WorkQueue.add: priority"), the range and the value given.
 */
export function checkInt(
  what: string,
  n: unknown,
  min: number,
  max: number = Number.MAX_SAFE_INTEGER,
): number {
  if (typeof n === 'number' && Number.isSafeInteger(n) && n >= min && n <= max) return n;
  const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
  throw new ConclaveError(ErrorCode.InvalidArgument, `${what} must be an integer ${range}, got ${String(n)}`);
}

/** Asserts `name` is a non-empty string; else `invalid-argument` naming it (`what`, e.g. "Mutex: name"). */
export function checkName(what: string, name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0)
    throw new ConclaveError(ErrorCode.InvalidArgument, `${what} must be a non-empty string`);
}
