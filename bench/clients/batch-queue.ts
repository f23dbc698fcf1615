/**
 * A bounded push→pull queue turning callback events into an async iterator, for the `etcd3`
 * adapter's watches. Past `batchesMax` undelivered batches the iterator fails (like the
 * contract's `watch-overflow`) instead of growing without limit.
 */
import type { WatchBatch } from '../../src/types.js';

export class BatchQueue implements AsyncIterable<WatchBatch> {
  readonly #batchesMax: number;
  readonly #items: WatchBatch[] = [];
  #waiter: (() => void) | undefined;
  #ended = false;
  #error: unknown;

  constructor(batchesMax: number) {
    if (!(batchesMax >= 1)) throw new RangeError('BatchQueue: batchesMax must be >= 1');
    this.#batchesMax = batchesMax;
  }

  push(batch: WatchBatch): void {
    if (this.#ended) return;
    if (this.#items.length >= this.#batchesMax) {
      this.fail(new Error(`watch consumer fell ${this.#batchesMax} batches behind`));
      return;
    }
    this.#items.push(batch);
    this.#wake();
  }

  end(): void {
    this.#ended = true;
    this.#wake();
  }

  fail(err: unknown): void {
    if (this.#ended) return;
    this.#error = err;
    this.end();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    for (;;) {
      const next = this.#items.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.#ended) {
        if (this.#error !== undefined) throw this.#error;
        return;
      }
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
  }
}
