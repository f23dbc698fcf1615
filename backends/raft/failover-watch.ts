/**
 * An embedded client's watch that survives the member serving it. Watches are served by one
 * member from its applied state (as etcd serves them from the member a client is connected to);
 * when that member stops, its watches end with `closed`. Like etcd's client, which reopens a broken
 * watch stream on another endpoint from the last delivered revision + 1, this wrapper moves the
 * watch to another live member, resuming from the revision after the last batch it delivered:
 * nothing is lost or repeated. A revision the new member has already compacted surfaces as the
 * usual `compacted` error; a new member that has not yet applied that revision simply delivers
 * it when it does (a watch may start at a future revision).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { Bytes, Watch, WatchBatch, WatchOptions } from '../../src/types.js';
import type { RaftNode } from './node/node.js';
import type { HubWatch } from './store/watch-hub.js';

const doneResult: IteratorReturnResult<undefined> = { done: true, value: undefined };

export interface WatchSource {
  /** A live member to serve the watch, waiting (bounded) for one; rejects `unavailable`. */
  liveMember(signal: AbortSignal): Promise<RaftNode>;
  /** The current leader, if any (synchronous: for the first subscription). */
  leader(): RaftNode | undefined;
  /** Some live member; throws `unavailable` when none is. */
  anyMember(): RaftNode;
}

export class FailoverWatch implements Watch {
  /** The first serving member's `ready`, taken from it on first use or before the watch moves. */
  #ready: Promise<number> | undefined;
  /** Member failovers this watch went through (for tests and diagnostics). */
  failovers = 0;
  /** The id of the member serving the watch now (for tests and diagnostics). */
  servedBy: number;
  readonly #src: WatchSource;
  readonly #key: Bytes;
  readonly #o: WatchOptions;
  /** Set by close(); `#stop` exists only while a move waits for a live member (a watch's state is kept small). */
  #closed = false;
  #stop: AbortController | undefined;
  readonly #onAbort: (() => void) | undefined;
  #inner: HubWatch;
  /** The first revision not yet delivered: where a moved watch resumes. */
  #nextRev: number;
  readonly #onClose: (w: FailoverWatch) => void;

  constructor(src: WatchSource, key: Bytes, o: WatchOptions, onClose: (w: FailoverWatch) => void) {
    this.#src = src;
    this.#key = key;
    this.#o = o;
    this.#onClose = onClose;
    // Served by the leader when there is one: the client's writes are applied there first (a
    // write resolves once the leader applied it), so a watch created after a write — or after a
    // compaction — sees it, as an etcd client sees its own writes on the member it talks to.
    const member = src.leader() ?? src.anyMember();
    // The hub starts a watch without a start revision at the member's next revision: record it,
    // so a failover before the first batch still resumes exactly there.
    this.#nextRev = o.startRevision ?? member.store.revision + 1;
    this.servedBy = member.id;
    this.#inner = this.#subscribe(member);
    if (o.signal?.aborted) queueMicrotask(() => void this.close());
    else if (o.signal) {
      this.#onAbort = () => void this.close();
      o.signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /** The first serving member's registration (see `Watch.ready`); a move later does not change it. */
  get ready(): Promise<number> {
    this.#ready ??= this.#inner.ready;
    return this.#ready;
  }

  #subscribe(member: RaftNode): HubWatch {
    const { signal: _own, ...rest } = this.#o;
    return member.store.hub.watch(this.#key, { ...rest, startRevision: this.#nextRev });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop?.abort(new ConclaveError(ErrorCode.Closed, 'the watch was closed'));
    if (this.#onAbort) this.#o.signal?.removeEventListener('abort', this.#onAbort);
    this.#onClose(this);
    await this.#inner.close();
  }

  /**
   * The iterator reads the serving member's watch directly (`take`), not through a second async
   * generator: a batch already buffered costs one resolved promise, where two generators cost
   * several promises and microtask turns per batch, paid by every watcher of a busy prefix.
   */
  [Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    return {
      next: () => this.#next(),
      // A consumer that leaves its loop early (break, throw) closes the watch.
      return: async () => {
        await this.close();
        return doneResult;
      },
    };
  }

  /** The serving member's next buffered batch, if any; the watch resumes after it on a move. */
  #take(inner = this.#inner): IteratorYieldResult<WatchBatch> | undefined {
    const b = inner.take();
    if (!b) return undefined;
    this.#nextRev = b.revision + 1;
    return { value: b, done: false };
  }

  #next(): Promise<IteratorResult<WatchBatch>> {
    const r = this.#take();
    if (r) return Promise.resolve(r);
    // Live and idle (the usual wait): one promise, settled by the member's watch as it buffers.
    const inner = this.#inner;
    if (!inner.done)
      return new Promise((resolve, reject) =>
        inner.onArrival(() => {
          const r = this.#take(inner);
          if (r) resolve(r);
          else this.#next().then(resolve, reject);
        }),
      );
    return this.#wait();
  }

  /** Nothing buffered: waits for a batch, ends, or moves the watch when its member stopped. */
  async #wait(): Promise<IteratorResult<WatchBatch>> {
    try {
      while (true) {
        const inner = this.#inner;
        const r = this.#take();
        if (r) return r;
        if (!inner.done) {
          await inner.arrival();
          continue;
        }
        const err = inner.error;
        if (err === undefined) {
          await this.close();
          return doneResult; // closed by us
        }
        // Only the serving member's shutdown moves the watch; anything else (compacted,
        // overflow, too many watchers) is the watch's real outcome.
        if (this.#closed || !ConclaveError.is(err) || err.code !== ErrorCode.Closed) throw err;
        let member = this.#src.leader();
        if (!member) {
          this.#stop = new AbortController();
          try {
            member = await this.#src.liveMember(this.#stop.signal);
          } finally {
            this.#stop = undefined;
          }
        }
        if (this.#closed) return doneResult;
        this.#ready ??= this.#inner.ready;
        this.failovers++;
        this.servedBy = member.id;
        this.#inner = this.#subscribe(member);
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
