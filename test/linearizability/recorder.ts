/**
 * Recording client histories for the linearizability checker, and the workload that makes them.
 *
 * Every operation is recorded with its invocation and response time on one monotonic clock
 * (`performance.now()`), its arguments and its result — or its error class:
 * - a `ConclaveError` that is retryable and not a deadline/abort (`unavailable`, `not-leader`,
 *   `too-many-requests`): the request certainly had no effect (Conclave's error contract), so the
 *   operation is left out of the history;
 * - on a write, anything else (`indeterminate`, `deadline-exceeded`, `aborted`, an unclassified
 *   error): the outcome is unknown — recorded with no output, so the checker may apply it at any
 *   point after its call, or never;
 * - on a read, any error: reads have no effect, so it is left out.
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue, Op, OpResponse, Txn } from '../../src/types.js';
import { Prng } from '../sim/prng.js';
import type { Operation } from './checker.js';
import type { Cmp, EtcdInput, EtcdOperation, EtcdOutput, KeyOp, KeyOpOut, KvOut } from './model.js';

const dec = new TextDecoder();

export type ErrorClass = 'no-effect' | 'unknown';

/** How a failed operation counts (see the file comment). */
export function classifyError(err: unknown, isWrite: boolean): ErrorClass {
  if (!isWrite) return 'no-effect';
  if (
    err instanceof ConclaveError &&
    err.retryable &&
    err.code !== ErrorCode.DeadlineExceeded &&
    err.code !== ErrorCode.Aborted
  )
    return 'no-effect';
  return 'unknown';
}

function kvOut(kv: KeyValue | undefined): KvOut | undefined {
  if (!kv) return undefined;
  return {
    value: dec.decode(kv.value),
    create: kv.createRevision,
    mod: kv.modRevision,
    version: kv.version,
    ...(kv.lease !== 0n ? { lease: String(kv.lease) } : {}),
  };
}

const isLeaseNotFound = (err: unknown) =>
  err instanceof ConclaveError && err.code === ErrorCode.LeaseNotFound;

export function isWrite(input: EtcdInput): boolean {
  if (input.type === 'txn') return [...input.success, ...input.failure].some((o) => o.type !== 'get');
  // A keep-alive changes nothing the model tracks (expiry is bounded from the answered ones only).
  return input.type !== 'get' && input.type !== 'keepalive';
}

/**
 * The TTL of the workload's leases: far beyond any run (no lease expires during one; the model
 * does not model expiry).
 */
export const leaseTtlSeconds = 3600;

/** A recorded operation, with the error's code kept for the run's summary. */
export interface Recorded extends EtcdOperation {
  readonly error?: string;
}

/** One operation as the client saw it: when, which kind, and its error code if it failed. */
export interface TraceEntry {
  readonly clientId: number;
  readonly type: EtcdInput['type'];
  readonly call: number;
  readonly return: number;
  readonly error?: string;
}

/** Records operations against one KV, keys namespaced under `prefix`. */
export class Recorder {
  readonly ops: Recorded[] = [];
  /** Operations left out because they certainly had no effect (or were reads that failed). */
  dropped = 0;
  /**
   * Every operation run, failed ones included (with their error code), for timelines of what the
   * clients saw around a fault. As many entries as operations run (the workload's `opsMax`).
   */
  readonly trace: TraceEntry[] = [];
  /** Called with each operation as it is recorded. */
  onRecord: ((op: Recorded) => void) | undefined;
  readonly #prefix: string;
  constructor(prefix: string) {
    this.#prefix = prefix;
  }

  #op(op: KeyOp): Op {
    const key = this.#prefix + op.key;
    if (op.type === 'put') return { type: 'put', key, value: op.value };
    return { type: op.type, key };
  }

  #opOut(r: OpResponse): KeyOpOut {
    if (r.type === 'get') return { type: 'get', kv: kvOut(r.kvs[0]) };
    if (r.type === 'delete') return { type: 'delete', deleted: r.deleted };
    if (r.type === 'put') return { type: 'put' };
    throw new Error('nested txn responses are not recorded');
  }

  async #invoke(kv: KV, input: EtcdInput, signal: AbortSignal | undefined): Promise<EtcdOutput> {
    const p = this.#prefix;
    switch (input.type) {
      case 'get': {
        const r = await kv.range(p + input.key, { signal });
        return { type: 'get', revision: r.revision, kv: kvOut(r.kvs[0]) };
      }
      case 'put': {
        try {
          const r = await kv.put(p + input.key, input.value, {
            signal,
            ...(input.lease !== undefined ? { lease: BigInt(input.lease) } : {}),
          });
          return { type: 'put', revision: r.revision };
        } catch (err) {
          // "requested lease not found": refused, a definite answer the model explains.
          if (input.lease !== undefined && isLeaseNotFound(err))
            return { type: 'put', revision: 0, leaseMissing: true };
          throw err;
        }
      }
      case 'grant':
        await kv.lease.grant(leaseTtlSeconds, { signal, id: BigInt(input.lease) });
        return { type: 'grant', revision: 0 };
      case 'keepalive': {
        try {
          const r = await kv.lease.keepAliveOnce(BigInt(input.lease), { signal });
          // etcd answers a keep-alive of a lease that is gone with TTL 0.
          return r.ttlSeconds > 0
            ? { type: 'keepalive', revision: 0, found: true, ttlMs: r.ttlSeconds * 1000 }
            : { type: 'keepalive', revision: 0, found: false };
        } catch (err) {
          if (isLeaseNotFound(err)) return { type: 'keepalive', revision: 0, found: false };
          throw err;
        }
      }
      case 'expire':
        throw new Error('expire is not a client request (addLeaseExpiries adds it to a history)');
      case 'revoke':
        try {
          const r = await kv.lease.revoke(BigInt(input.lease), { signal });
          return { type: 'revoke', revision: r.revision, found: true };
        } catch (err) {
          if (isLeaseNotFound(err)) return { type: 'revoke', revision: 0, found: false };
          throw err;
        }
      case 'delete': {
        const r = await kv.delete(p + input.key, { signal });
        return { type: 'delete', revision: r.revision, deleted: r.deleted };
      }
      case 'txn': {
        const t: Txn = {
          compare: input.compare.map((c) => {
            const key = p + c.key;
            if (c.target === 'value')
              return { key, target: 'value', result: c.result, value: String(c.value) };
            return { key, target: c.target, result: c.result, value: Number(c.value) };
          }),
          success: input.success.map((o) => this.#op(o)),
          failure: input.failure.map((o) => this.#op(o)),
        };
        const r = await kv.txn(t, { signal });
        return {
          type: 'txn',
          revision: r.revision,
          succeeded: r.succeeded,
          results: r.responses.map((x) => this.#opOut(x)),
        };
      }
    }
  }

  /** Runs one operation and records it. Returns its output, or undefined when it failed. */
  async run(
    kv: KV,
    clientId: number,
    input: EtcdInput,
    opts: { timeoutMs?: number } = {},
  ): Promise<EtcdOutput | undefined> {
    const signal = opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined;
    const call = performance.now();
    try {
      const output = await this.#invoke(kv, input, signal);
      const ret = performance.now();
      const op: Recorded = { clientId, input, call, output, return: ret };
      this.ops.push(op);
      this.onRecord?.(op);
      this.trace.push({ clientId, type: input.type, call, return: ret });
      return output;
    } catch (err) {
      const ret = performance.now();
      const code = err instanceof ConclaveError ? err.code : String((err as Error)?.name);
      this.trace.push({ clientId, type: input.type, call, return: ret, error: code });
      if (classifyError(err, isWrite(input)) === 'no-effect') this.dropped++;
      else this.ops.push({ clientId, input, call, output: undefined, return: ret, error: code });
      return undefined;
    }
  }
}

export interface WorkloadOptions {
  seed: number;
  /** Concurrent clients (default 8). */
  clients?: number;
  /** Keys (default 10), named k0..k(n-1). */
  keys?: number;
  /** Stop after this many operations in total (default 2,000). */
  opsMax?: number;
  /** Stop after this long (default 10 s). */
  durationMs?: number;
  /** Per-operation deadline (default 2 s): past it a write's outcome is unknown. */
  opTimeoutMs?: number;
  /** Stop early once this answers true (checked before each operation). */
  stop?: () => boolean;
  /** Lease operations too (see `WorkloadGen`); ids are unique to this run. */
  leases?: boolean;
  /** Called with each operation recorded (known or unknown outcome), as it returns. */
  onOperation?: (op: Recorded) => void;
}

/**
 * Chooses the next request of one client: get 40 %, put 25 %, CAS txn on the mod revision the
 * client last saw 25 % (else a get of the key), delete 10 %. Every put writes a value unique in the
 * run (`c<client>-<n>`), so a read identifies the write it saw.
 *
 * With leases (`leaseBase` given), first: a client without a lease grants one (4 %: a fresh id,
 * `leaseBase + client × 100,000 + n`), a client with one revokes it (2 %); while it holds one,
 * half of its puts attach the key to it. A grant whose outcome is unknown still counts as held, so
 * puts naming a lease that never came to be are recorded too (refused: "lease not found").
 */
export class WorkloadGen {
  readonly #prng: Prng;
  readonly #keys: number;
  readonly #client: number;
  #n = 0;
  /** The mod revision this client last saw per key (0: absent). */
  readonly lastMod = new Map<string, number>();
  readonly #leaseBase: bigint | undefined;
  /** The lease this client believes it holds. */
  #lease: string | undefined;
  constructor(prng: Prng, client: number, keys: number, leaseBase?: bigint) {
    this.#prng = prng;
    this.#client = client;
    this.#keys = keys;
    this.#leaseBase = leaseBase;
  }

  next(): EtcdInput {
    if (this.#leaseBase !== undefined) {
      const l = this.#prng.next();
      if (this.#lease === undefined && l < 0.04) {
        this.#lease = String(this.#leaseBase + BigInt(this.#client * 100_000 + this.#n++));
        return { type: 'grant', lease: this.#lease };
      }
      if (this.#lease !== undefined && l < 0.02) {
        const lease = this.#lease;
        this.#lease = undefined;
        return { type: 'revoke', lease };
      }
    }
    const key = `k${this.#prng.int(this.#keys)}`;
    const r = this.#prng.next();
    const value = `c${this.#client}-${this.#n++}`;
    if (r < 0.4) return { type: 'get', key };
    if (r < 0.65) {
      if (this.#lease !== undefined && this.#prng.chance(0.5))
        return { type: 'put', key, value, lease: this.#lease };
      return { type: 'put', key, value };
    }
    if (r < 0.9) {
      const cmp: Cmp = { key, target: 'mod', result: '=', value: this.lastMod.get(key) ?? 0 };
      return {
        type: 'txn',
        compare: [cmp],
        success: [{ type: 'put', key, value }],
        failure: [{ type: 'get', key }],
      };
    }
    return { type: 'delete', key };
  }

  /** Learns mod revisions from a response. */
  observe(input: EtcdInput, output: EtcdOutput | undefined): void {
    if (!output) return;
    if (output.type === 'get' && input.type === 'get') this.lastMod.set(input.key, output.kv?.mod ?? 0);
    else if (output.type === 'put' && input.type === 'put') {
      if (!output.leaseMissing) this.lastMod.set(input.key, output.revision);
    } else if (output.type === 'delete' && input.type === 'delete') this.lastMod.set(input.key, 0);
    else if (output.type === 'txn' && input.type === 'txn') {
      const key = input.compare[0]?.key;
      if (!key) return;
      if (output.succeeded) this.lastMod.set(key, output.revision);
      else {
        const g = output.results[0];
        if (g?.type === 'get') this.lastMod.set(key, g.kv?.mod ?? 0);
      }
    }
  }
}

export interface WorkloadResult {
  readonly history: Recorded[];
  /** Every operation run, failed ones included (`Recorder.trace`). */
  readonly trace: TraceEntry[];
  /** The store revision before the first operation (the model's initial revision). */
  readonly initialRevision: number;
  readonly dropped: number;
  readonly unknown: number;
  readonly elapsedMs: number;
}

/** How long `runWorkload` tries to read the store revision it starts from. */
export const initialRevisionTimeoutMs = 30_000;

/**
 * The store revision, from the first client that answers, trying each in turn (bounded): a
 * nemesis may already have cut off or paused the member the first client is pinned to.
 */
async function storeRevision(kvs: readonly KV[]): Promise<number> {
  const until = performance.now() + initialRevisionTimeoutMs;
  for (let i = 0; ; i++) {
    try {
      return (await kvs[i % kvs.length]!.status({ signal: AbortSignal.timeout(2000) })).revision;
    } catch (err) {
      if (performance.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Runs the workload: `clients` concurrent loops over `kvs` (client i uses kvs[i % kvs.length]),
 * bounded by `opsMax` operations and `durationMs`, keys under a fresh `prefix`. The store must not
 * be written by anyone else meanwhile (the exact model tracks the store revision).
 */
export async function runWorkload(
  kvs: readonly KV[],
  prefix: string,
  opts: WorkloadOptions,
): Promise<WorkloadResult> {
  const clients = opts.clients ?? 8;
  const keys = opts.keys ?? 10;
  const opsMax = opts.opsMax ?? 2000;
  const durationMs = opts.durationMs ?? 10_000;
  const opTimeoutMs = opts.opTimeoutMs ?? 2000;
  const root = new Prng(opts.seed);
  const rec = new Recorder(prefix);
  if (opts.onOperation) rec.onRecord = opts.onOperation;
  // Unique to this run (lease ids are store-wide, not under the prefix): ms clock × 10^6.
  const leaseBase = opts.leases ? BigInt(Date.now() % 1_000_000_000) * 1_000_000n + 1n : undefined;
  const initialRevision = await storeRevision(kvs);
  const start = performance.now();
  let issued = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const gen = new WorkloadGen(root.fork(), c, keys, leaseBase);
      const kv = kvs[c % kvs.length]!;
      while (issued < opsMax && performance.now() - start < durationMs && !opts.stop?.()) {
        issued++;
        const input = gen.next();
        const out = await rec.run(kv, c, input, { timeoutMs: opTimeoutMs });
        gen.observe(input, out);
        // A failed call (e.g. no leader during a restart) backs off a little instead of spinning.
        if (!out) await new Promise((r) => setTimeout(r, 20));
      }
    }),
  );
  return {
    history: rec.ops,
    trace: rec.trace,
    initialRevision,
    dropped: rec.dropped,
    unknown: rec.ops.filter((o) => o.output === undefined).length,
    elapsedMs: performance.now() - start,
  };
}

/** Test helper: an operation with given times (for hand-written histories). */
export function op(
  clientId: number,
  call: number,
  ret: number,
  input: EtcdInput,
  output: EtcdOutput | undefined,
): Operation<EtcdInput, EtcdOutput> {
  return { clientId, call, return: ret, input, output };
}
