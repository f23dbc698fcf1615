/**
 * A bounded fan-out of changes to async iterators: the one change stream behind PrefixCache,
 * ConfigWatcher, ServiceResolver and Partitioner.
 *
 * Contract: `subscribe()` registers at once (not at the iterator's first `next()`), so nothing
 * published after the call is missed. Each iterator buffers at most `bufferedMax` changes; one
 * that falls further behind drops its backlog and, at its next read, gets the `catchUp` of what it
 * last saw instead (a reset, a latest state, a merged difference: the owner decides). So a slow
 * consumer costs bounded memory and still ends up exact. `end()` ends every iterator after what
 * it buffered (throwing `error` if one is given); aborting a subscriber's `signal` ends that
 * iterator only, normally (a stop the consumer asked for is not an error).
 */

/** One buffered change and the state a consumer has seen once it read it. */
export interface Fed<C, S> {
  readonly change: C;
  readonly after: S;
}

class Subscriber<C, S> {
  items: Fed<C, S>[] = [];
  /** The state as this consumer last saw it (before `items[0]`). */
  seen: S;
  /** Set when the backlog overflowed: the next read is a catch-up from `seen`. */
  behind = false;
  wake: (() => void) | undefined;
  ended = false;
  error: unknown;

  constructor(
    seen: S,
    readonly tag: string | undefined,
  ) {
    this.seen = seen;
  }

  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.#notify();
  }

  #notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  push(fed: Fed<C, S>, max: number): void {
    if (this.ended || this.behind) return;
    if (this.items.length >= max) {
      this.items = [];
      this.behind = true;
    } else this.items.push(fed);
    this.#notify();
  }
}

export class ChangeFeed<C, S = undefined> {
  readonly #subscribers = new Set<Subscriber<C, S>>();
  #ended = false;
  #error: unknown;

  /**
   * `bufferedMax`: changes buffered per iterator (the owner's named bound). `catchUp(seen)`: what
   * an iterator that fell behind reads instead of its dropped backlog — the changes from `seen`
   * (the state after the last change it read) to the owner's current state, with that state.
   */
  constructor(
    readonly bufferedMax: number,
    readonly catchUp: (seen: S) => readonly Fed<C, S>[],
  ) {}

  /** Iterators open now. */
  get size(): number {
    return this.#subscribers.size;
  }

  /**
   * A new iterator of every change published after this call; `seen` is the state it starts
   * from. `first`: changes it reads before those. `tag`: lets `publish` address it alone.
   */
  subscribe(
    seen: S,
    opts: { signal?: AbortSignal | undefined; first?: readonly Fed<C, S>[]; tag?: string } = {},
  ): AsyncGenerator<C, void, undefined> {
    const { signal } = opts;
    const s = new Subscriber<C, S>(seen, opts.tag);
    s.items.push(...(opts.first ?? []));
    if (this.#ended) s.end(this.#error);
    else if (signal?.aborted) s.end();
    else this.#subscribers.add(s);
    return this.#drain(s, signal);
  }

  /** Offers `change` (taking consumers to state `after`) to every iterator, or those tagged `tag`. */
  publish(change: C, after: S, tag?: string): void {
    const fed = { change, after };
    for (const s of this.#subscribers) if (tag === undefined || s.tag === tag) s.push(fed, this.bufferedMax);
  }

  /** Whether an open iterator is tagged `tag`. */
  has(tag: string): boolean {
    for (const s of this.#subscribers) if (s.tag === tag) return true;
    return false;
  }

  /** Ends every iterator (after what it buffered) and every later one; with `error`, they throw it. */
  end(error?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    for (const s of this.#subscribers) s.end(error);
  }

  async *#drain(s: Subscriber<C, S>, signal: AbortSignal | undefined): AsyncGenerator<C, void, undefined> {
    const onAbort = () => s.end();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      while (true) {
        if (s.behind) {
          s.behind = false;
          // Computed at the read, not at the overflow: one catch-up covers everything missed.
          s.items = [...this.catchUp(s.seen), ...s.items];
        }
        const next = s.items.shift();
        if (next) {
          s.seen = next.after;
          yield next.change;
          continue;
        }
        if (s.ended) {
          if (s.error !== undefined) throw s.error;
          return;
        }
        await new Promise<void>((r) => (s.wake = r));
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.#subscribers.delete(s);
    }
  }
}
