/**
 * The seam between the one conformance suite and the backends that run it.
 * A backend supplies a `ConformanceBackend`; test files in this folder (and `recipes/`) export
 * `register…(ctx)` functions that declare vitest tests using only the context.
 */
import type { KV } from '../../src/kv.js';

export interface ConnectionCut {
  /** A client whose traffic passes through a TCP proxy that the test can cut and restore. */
  readonly kv: KV;
  /** Drop every connection through the proxy and refuse new ones. */
  cut(): Promise<void>;
  /** Accept connections again. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

export interface BackendSupports {
  /** `proxied()` is available: connections can be cut and restored. */
  readonly cutConnection?: boolean;
  /** `etcdctl` can talk to `endpoints` (interop tests). */
  readonly etcdctl?: boolean;
  /** `killLeader()` is available (raft backends). */
  readonly killLeader?: boolean;
  /** Lease expiry can be fast-forwarded with `advanceTime(ms)` (virtual clock). */
  readonly virtualTime?: boolean;
  /** `holdRevocations()` is available: a lease revocation can be held proposed but not applied. */
  readonly holdRevocations?: boolean;
}

/** Lease revocations held in flight (decided and proposed, not applied) until `release()`. */
export interface RevocationHold {
  /** Revocations held so far. */
  held(): number;
  /** Lets them apply; later ones are no longer held. */
  release(): void;
}

export interface ConformanceBackend {
  readonly name: string;
  readonly supports: BackendSupports;
  /** Start the shared store (once per file). */
  setup(): Promise<void>;
  teardown(): Promise<void>;
  /** A new client of the shared store; the suite closes it. */
  factory(): Promise<KV>;
  /** Client endpoints (host:port) for interop tools, when `supports.etcdctl`. */
  endpoints?(): string[];
  proxied?(): Promise<ConnectionCut>;
  killLeader?(): Promise<void>;
  advanceTime?(ms: number): Promise<void>;
  /** Holds every lease revocation proposed from now on in flight until released. */
  holdRevocations?(): RevocationHold;
  /** The smallest lease TTL in seconds the store accepts (derived from its election timeout). */
  readonly minTtlSeconds: number;
}

export interface ConformanceContext {
  readonly backend: ConformanceBackend;
  /** A shared client, open for the whole file. */
  readonly kv: KV;
  /** A fresh key prefix, unique per call: every test works under its own. */
  prefix(label: string): string;
  /** An extra client (closed by the suite at the end). */
  newKv(): Promise<KV>;
}

/** Test files export functions of this shape; `ctx()` is valid inside tests and hooks. */
export type RegisterTests = (ctx: () => ConformanceContext) => void;
