/**
 * Semaphore: at most `permits` holders of `name` at once, FIFO by create revision.
 *
 * Layout: `<name>/permits` holds the permit count (created once; every participant must agree —
 * a different count is a `conflict` error), and `<name>/holders/<lease hex>` are the queue keys
 * under each session's lease. The first `permits` keys by create revision hold a permit.
 */
import { ConclaveError, ErrorCode } from '../src/errors.js';
import { leaseHex, toText } from '../src/keys.js';
import type { Session } from '../src/session.js';
import type { CallOptions } from '../src/types.js';
import { checkInt, checkName } from './internal/check.js';
import { type HeldKey, heldKey } from './internal/hold.js';
import { acquireTurn } from './internal/turn.js';

/** A held semaphore permit: release it (or `await using`) to give it back. */
export type Permit = HeldKey;

/** Options of a `Semaphore`. */
export interface SemaphoreOptions {
  /** Fire a permit's `lost` when the session becomes suspended, not only when lost. Default true. */
  readonly lostOnSuspend?: boolean;
  /** Permits hear revocation requests (`requestRevocation`) on `revocationRequested`. Default false. */
  readonly revocable?: boolean;
}

/** At most `permits` holders of `name` at once, FIFO by create revision (see the module comment). */
export class Semaphore {
  readonly session: Session;
  readonly name: string;
  readonly permits: number;
  readonly #lostOnSuspend: boolean;
  readonly #revocable: boolean;
  #agreed = false;

  /**
   * `lostOnSuspend` (default true): `lost` fires as soon as the session is suspended.
   * `revocable` (default false): permits hear revocation requests (see `MutexOptions`).
   */
  constructor(session: Session, name: string, permits: number, opts: SemaphoreOptions = {}) {
    checkName('Semaphore: name', name);
    checkInt('Semaphore: permits', permits, 1);
    this.session = session;
    this.name = name;
    this.permits = permits;
    this.#lostOnSuspend = opts.lostOnSuspend ?? true;
    this.#revocable = opts.revocable ?? false;
  }

  /** Stores the permit count if absent, and checks it if present. */
  async #agree(signal: AbortSignal | undefined): Promise<void> {
    // The recipe never deletes the count, so one agreement per instance is enough.
    if (this.#agreed) return;
    const key = `${this.name}/permits`;
    const t = await this.session.kv.txn(
      {
        compare: [{ key, target: 'create', result: '=', value: 0 }],
        success: [{ type: 'put', key, value: String(this.permits) }],
        failure: [{ type: 'get', key }],
      },
      signal ? { signal } : {},
    );
    if (t.succeeded) {
      this.#agreed = true;
      return;
    }
    const r = t.responses[0];
    const stored = r?.type === 'get' && r.kvs[0] ? toText(r.kvs[0].value) : undefined;
    if (stored !== String(this.permits)) {
      throw new ConclaveError(
        ErrorCode.Conflict,
        `semaphore ${this.name}: stored permit count is ${stored}, this participant uses ${this.permits}`,
      );
    }
    this.#agreed = true;
  }

  /**
   * Waits for a permit. Aborting or failing removes our queue key. A session holds at most one
   * permit of a name: while it holds or waits for one, a second `acquire()` fails `conflict`.
   */
  async acquire(opts: CallOptions = {}): Promise<Permit> {
    if (this.session.lost.aborted) throw this.session.lost.reason;
    opts.signal?.throwIfAborted();
    await this.#agree(opts.signal);
    const spec = {
      myKey: `${this.name}/holders/${leaseHex(this.session.lease)}`,
      blockers: `${this.name}/holders/`,
      allowed: this.permits - 1,
      what: `semaphore ${this.name}`,
    };
    return acquireTurn(this.session, spec, opts, { again: 'conflict' }, (myRev, ownership) =>
      heldKey(
        this.session,
        spec.myKey,
        myRev,
        ownership,
        { lostOnSuspend: this.#lostOnSuspend, what: spec.what },
        undefined,
        this.#revocable,
      ),
    );
  }
}
