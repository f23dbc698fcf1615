/**
 * What the naming recipes share: their bounds and the stored endpoint format (etcd's
 * `naming.Update` JSON, see naming.ts).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import { prefixCacheResyncAttemptsMax } from '../prefix-cache.js';
import { backoffMs } from './timing.js';

// ---------------------------------------------------------------------------------------------
// Bounds and defaults

/** Most instances a resolver tracks (default); further ones are ignored and `truncated` is set. */
export const namingInstancesMax = 1000;
/** Changes buffered per resolver iterator; past it they merge into one `resync: 'overflow'` change. */
export const namingChangesBufferedMax = 64;
/** Registrations one `ServiceRegistry` holds at a time. */
export const namingRegistrationsMax = 1000;
/** Consecutive failed attempts (write, or getting a session from the provider) before a registration fails. */
export const namingRegisterAttemptsMax = 30;
/** Longest back-off (ms) between two attempts of a registration or a resolver resync. */
export const namingBackoffMsMax = 2000;
/**
 * Consecutive failed attempts to re-read and re-watch before a resolver fails: the bound of the
 * `PrefixCache` under it (`limits.prefixCache.resyncAttemptsMax`).
 */
export const namingResyncAttemptsMax = prefixCacheResyncAttemptsMax;
/**
 * Most keys under a service a resolver keeps in its local copy (valid instances and others); a
 * service with more fails the resolver with `too-many-requests`. `instancesMax` bounds how many of
 * the valid ones are tracked.
 */
export const namingCacheKeysMax = 10_000;
/** Default interval (ms) between health checks. */
export const healthCheckIntervalMsDefault = 5000;
/** Default bound (ms) on one health check; a check that takes longer fails. */
export const healthCheckTimeoutMsDefault = 2000;
/** Default number of errors within `errorWindowMs` that marks an instance down. */
export const downErrorThresholdDefault = 3;
/** Default window (ms) in which `errorThreshold` errors mark an instance down. */
export const downErrorWindowMsDefault = 10_000;
/** Default time (ms) an instance stays down after being marked. */
export const downMsDefault = 30_000;
/** Largest `errorThreshold` accepted (it bounds the error timestamps kept per instance). */
export const downErrorThresholdMax = 1000;

// ---------------------------------------------------------------------------------------------
// The stored format

/** An endpoint as Go's `endpoints.Endpoint`: an address and optional JSON metadata. */
export interface Endpoint {
  readonly addr: string;
  /** Any JSON-serialisable value (Go reads it as `interface{}`); absent is stored as `null`. */
  readonly metadata?: unknown;
}

/** The stored value: etcd's `naming.Update` JSON with `Op` Add (field order as Go writes it). */
export function encodeEndpoint(endpoint: Endpoint): string {
  return JSON.stringify({ Op: 0, Addr: endpoint.addr, Metadata: endpoint.metadata ?? null });
}

/** Parses a stored `naming.Update`; undefined when it is not one (Go's resolver skips those too). */
export function decodeEndpoint(value: Uint8Array): Endpoint | undefined {
  let v: unknown;
  try {
    v = JSON.parse(toText(value));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const u = v as { Op?: unknown; Addr?: unknown; Metadata?: unknown };
  // Go's endpoint manager treats every put as an Add whatever its Op; a Delete is a deleted key.
  if (typeof u.Addr !== 'string') return undefined;
  return { addr: u.Addr, metadata: u.Metadata ?? null };
}

export { checkName } from './check.js';

export function checkEndpoint(endpoint: Endpoint): Endpoint {
  if (typeof endpoint?.addr !== 'string' || endpoint.addr.length === 0)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'register: addr must be a non-empty string (host:port)',
    );
  if (endpoint.metadata !== undefined && JSON.stringify(endpoint.metadata) === undefined)
    throw new ConclaveError(ErrorCode.InvalidArgument, 'register: metadata must be JSON-serialisable');
  return { addr: endpoint.addr, metadata: endpoint.metadata ?? null };
}

export const retryBackoffMs = (failures: number) => backoffMs(failures - 1, namingBackoffMsMax);
