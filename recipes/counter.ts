/**
 * Counter: an integer stored at one key as decimal text (so `etcdctl get` shows it and any client
 * can write it), updated atomically by compare-and-swap on the key's mod revision.
 *
 * etcd's Go `recipes` package has no plain counter; this follows the pattern its STM and
 * `EphemeralKV` recipes use: read the key, write the new value in a txn guarded by
 * `mod_revision == the revision read` (0 when the key is absent), and on failure take the current
 * value from the txn's failure branch and try again, at most `retriesMax` more times.
 */
import { Err, Ok, type Result } from 'ts-results-es';
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { CallOptions, KeyValue } from '../src/types.js';
import { checkName } from './internal/check.js';
import { checkRetriesMax, conflictBackoff } from './internal/retry.js';

/** Default re-tries of an `add` that lost a race with another writer (at most this + 1 txns). */
export const counterRetriesMax = 64;

/** The counter as read: its value and the key's mod revision (0 when the key does not exist). */
export interface CounterValue {
  readonly value: number;
  readonly revision: number;
}

/** Why `compareAndSet` did not write: the counter's current value and mod revision. */
export interface CounterConflict {
  readonly current: number;
  readonly revision: number;
}

/** Options of a `Counter`. */
export interface CounterOptions {
  /** Re-tries of `add` after a lost race (default `limits.counter.retriesMaxDefault`). */
  retriesMax?: number;
}

const decimal = /^\s*[-+]?\d+\s*$/;

/**
 * An integer at one key, updated by compare-and-swap (see the module comment); any client can read
 * or write the decimal text.
 */
export class Counter {
  readonly kv: KV;
  readonly name: string;
  readonly #retriesMax: number;

  /** `name` is the key itself; an absent key reads as 0. */
  constructor(kv: KV, name: string, opts: CounterOptions = {}) {
    checkName('Counter: name', name);
    const retriesMax = opts.retriesMax ?? counterRetriesMax;
    checkRetriesMax('Counter', retriesMax);
    this.kv = kv;
    this.name = name;
    this.#retriesMax = retriesMax;
  }

  /** The current value (0 with revision 0 when the key is absent). Throws `corrupt` on non-integer content. */
  async get(opts: CallOptions = {}): Promise<CounterValue> {
    return this.#decode(await this.kv.get(this.name, { signal: opts.signal }));
  }

  /**
   * Adds `delta` atomically and resolves with the new value. Retries when another writer got in
   * between; rejects `retries-exhausted` after `retriesMax` lost races, `invalid-argument` when the
   * result would leave the safe integer range.
   */
  async add(delta: number, opts: CallOptions = {}): Promise<number> {
    if (!Number.isSafeInteger(delta))
      throw new ConclaveError(ErrorCode.InvalidArgument, 'Counter.add: delta must be a safe integer');
    const signal = opts.signal;
    signal?.throwIfAborted();
    let cur = await this.get({ signal });
    for (let attempt = 1; attempt <= this.#retriesMax + 1; attempt++) {
      await conflictBackoff(attempt, signal);
      const next = cur.value + delta;
      if (!Number.isSafeInteger(next)) {
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          `counter ${this.name}: ${cur.value} + ${delta} leaves the safe integer range; reset the counter or use smaller deltas`,
          { details: { argument: 'delta' } },
        );
      }
      const t = await this.kv.txn(
        {
          compare: [{ key: this.name, target: 'mod', result: '=', value: cur.revision }],
          success: [{ type: 'put', key: this.name, value: String(next) }],
          failure: [{ type: 'get', key: this.name }],
        },
        { signal },
      );
      if (t.succeeded) return next;
      const r = t.responses[0];
      cur = this.#decode(r?.type === 'get' ? r.kvs[0] : await this.kv.get(this.name, { signal }));
    }
    throw new ConclaveError(
      ErrorCode.RetriesExhausted,
      `counter ${this.name}: lost the race to concurrent writers ${this.#retriesMax + 1} times in a row (retriesMax ${this.#retriesMax}); raise retriesMax or reduce contention`,
      { details: { attempts: this.#retriesMax + 1, retriesMax: this.#retriesMax } },
    );
  }

  /** Adds 1; returns the new value. */
  increment(opts: CallOptions = {}): Promise<number> {
    return this.add(1, opts);
  }

  /** Subtracts 1; returns the new value. */
  decrement(opts: CallOptions = {}): Promise<number> {
    return this.add(-1, opts);
  }

  /**
   * Writes `value` only if the key's mod revision is still `expectedRevision` (0: the key must be
   * absent). `Ok({ revision })`: the new mod revision. `Err({ current, revision })`: someone wrote
   * first; nothing was written.
   */
  async compareAndSet(
    expectedRevision: number,
    value: number,
    opts: CallOptions = {},
  ): Promise<Result<{ revision: number }, CounterConflict>> {
    if (!Number.isSafeInteger(expectedRevision) || expectedRevision < 0)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'Counter.compareAndSet: expectedRevision must be a non-negative integer',
      );
    if (!Number.isSafeInteger(value))
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'Counter.compareAndSet: value must be a safe integer',
      );
    const t = await this.kv.txn(
      {
        compare: [{ key: this.name, target: 'mod', result: '=', value: expectedRevision }],
        success: [{ type: 'put', key: this.name, value: String(value) }],
        failure: [{ type: 'get', key: this.name }],
      },
      { signal: opts.signal },
    );
    if (t.succeeded) return Ok({ revision: t.revision });
    const r = t.responses[0];
    const cur = this.#decode(r?.type === 'get' ? r.kvs[0] : undefined);
    return Err({ current: cur.value, revision: cur.revision });
  }

  #decode(kv: KeyValue | undefined): CounterValue {
    if (!kv) return { value: 0, revision: 0 };
    const text = toText(kv.value);
    const value = decimal.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(value)) {
      throw new ConclaveError(
        ErrorCode.Corrupt,
        `counter ${this.name}: the stored value ${JSON.stringify(text.slice(0, 40))} is not a decimal safe integer; write an integer to the key or delete it`,
        { details: { key: this.name } },
      );
    }
    return { value, revision: kv.modRevision };
  }
}
