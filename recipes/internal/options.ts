/**
 * Options that were renamed. The recipes name every bound `<what>Max` (`retriesMax`,
 * `instancesMax`, `attemptsMax`, `eventsMax`); an option that used another name keeps it as a
 * deprecated alias for one release (listed in CHANGELOG.md), read through `renamedOption`.
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';

/**
 * The value of a renamed option: the new name's, else the deprecated old name's. Both given with
 * different values is refused (`invalid-argument`) rather than one of them silently winning.
 */
export function renamedOption<T>(
  what: string,
  current: { readonly name: string; readonly value: T | undefined },
  deprecated: { readonly name: string; readonly value: T | undefined },
): T | undefined {
  if (current.value === undefined) return deprecated.value;
  if (deprecated.value !== undefined && deprecated.value !== current.value)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `${what}: ${current.name} (${String(current.value)}) and its deprecated name ${deprecated.name} (${String(deprecated.value)}) disagree; give only ${current.name}`,
    );
  return current.value;
}
