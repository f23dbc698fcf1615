/**
 * The life cycle of a live view that follows a `PrefixCache` (`ConfigWatcher`, `ServiceResolver`):
 * `start()` may run once; the caller's signal and `close()` both stop the view; a loop applies
 * the cache's changes in order; a failure of the cache (or of the view's own handling) becomes
 * the view's `error` and closes it. The view supplies what a change does and what stopping
 * does to its own state (end its change feed, clear its timers).
 */
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import type { PrefixCache, PrefixCacheChange } from '../prefix-cache.js';

export interface CacheFollowerHooks {
  /** Called once when the view stops (close, failure or the caller's abort), with its error if any. */
  readonly stopped: (error: unknown) => void;
  /** Awaited by `close()` after the cache closed and the loop ended (e.g. an evaluation in flight). */
  readonly drained?: () => Promise<unknown> | undefined;
  /** The view's own form of an error of its cache (default: the error itself). */
  readonly mapError?: (err: unknown) => unknown;
}

export class CacheFollower {
  readonly #what: string;
  readonly #closedMessage: string;
  readonly #signal: AbortSignal | undefined;
  readonly #stop = new AbortController();
  readonly #hooks: CacheFollowerHooks;
  #cache: PrefixCache | undefined;
  #started = false;
  #running: Promise<void> | undefined;
  #closed: Promise<void> | undefined;
  #error: unknown;
  readonly #onAbort = () => void this.close();

  /** `what` names the view in errors ("ConfigWatcher"); `closedMessage` is the `closed` error's text. */
  constructor(
    what: string,
    closedMessage: string,
    signal: AbortSignal | undefined,
    hooks: CacheFollowerHooks,
  ) {
    this.#what = what;
    this.#closedMessage = closedMessage;
    this.#signal = signal;
    this.#hooks = hooks;
  }

  /** The error that stopped the view, if it failed. */
  get error(): unknown {
    return this.#error;
  }

  /** Aborted once the view stops. */
  get stopSignal(): AbortSignal {
    return this.#stop.signal;
  }

  /**
   * Runs the view's start once: `body` gets a signal that aborts on the caller's abort or
   * `close()`. If it throws, the view is closed and the error rethrown (the caller's abort reason
   * when it aborted).
   */
  async start<R>(body: (signal: AbortSignal) => Promise<R>): Promise<R> {
    if (this.#started || this.#closed)
      throw new ConclaveError(ErrorCode.InvalidArgument, `${this.#what}: start() may be called once`);
    this.#started = true;
    const signal = this.#signal ? AbortSignal.any([this.#signal, this.#stop.signal]) : this.#stop.signal;
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    try {
      signal.throwIfAborted();
      return await body(signal);
    } catch (err) {
      await this.close();
      throw this.#signal?.aborted ? abortReason(this.#signal) : err;
    }
  }

  /** The cache the view follows; closed with the view. */
  adopt(cache: PrefixCache): PrefixCache {
    this.#cache = cache;
    return cache;
  }

  /** The error of the cache, in the view's form. */
  mapError(err: unknown): unknown {
    return this.#hooks.mapError ? this.#hooks.mapError(err) : err;
  }

  /**
   * Applies each of `changes` (an iterator of the adopted cache) in order, until it ends; when it
   * ends because the cache failed, or `apply` throws, the view fails with that error.
   */
  follow(
    changes: AsyncGenerator<PrefixCacheChange, void, undefined>,
    apply: (c: PrefixCacheChange) => void,
  ): void {
    this.#running = (async () => {
      try {
        for await (const c of changes) apply(c);
        const failed = this.#cache?.error;
        if (failed !== undefined && !this.#stop.signal.aborted) this.fail(this.mapError(failed));
      } catch (err) {
        if (!this.#stop.signal.aborted) this.fail(this.mapError(err));
      }
    })();
  }

  /** Stops the view with `err` as its error. */
  fail(err: unknown): void {
    this.#error = err;
    void this.close();
  }

  /** Stops the view: the hooks' `stopped`, then the cache and the loop. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.#stop.abort(new ConclaveError(ErrorCode.Closed, this.#closedMessage));
      this.#hooks.stopped(this.#error);
      await this.#cache?.close();
      await this.#running?.catch(() => undefined);
      await this.#hooks.drained?.()?.catch(() => undefined);
    })();
    return this.#closed;
  }
}
