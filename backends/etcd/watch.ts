/**
 * One multiplexed Watch stream per client. Every `kv.watch()` is a watcher on that stream; creates
 * are sent one at a time because etcd assigns watch ids in the order it processes creates and
 * answers each with `created`. When the stream breaks, every live watcher is re-created from its
 * last delivered revision + 1, so nothing is lost and nothing is delivered twice (events below
 * that revision are dropped if a server re-sends them).
 *
 * Memory is bounded in bytes, not only in batches. Each watch buffers at most
 * `watchBufferBytesMax` (and `bufferBatchesMax` batches) for a consumer that is not reading; the
 * client's watches together at most `watchBuffersBytesMax`. Past half of the client's bound the
 * stream is paused (flow control: grpc-js stops reading, HTTP/2's window fills, etcd stops sending
 * on this stream and keeps the backlog on its side) and resumed below a quarter. etcd multiplexes
 * every watch of a client on the stream, so a pause holds them all: when it lasts longer than
 * `watchPausedMsMax`, the watch holding the most bytes overflows, so one consumer that never reads
 * cannot stall the others. Overflowing a watch ends it with `watch-overflow` after the batches
 * already buffered; `details.resumeRevision` is the first revision it did not deliver.
 */
import type * as grpc from '@grpc/grpc-js';
import { ConclaveError, ErrorCode, invalidArgument } from '../../src/errors.js';
import { resolveRange } from '../../src/keys.js';
import { limits } from '../../src/limits.js';
import { type Int64, methods, num, pb } from '../../src/protocol/codec.js';
import type { Bytes, Watch, WatchBatch, WatchEvent, WatchOptions } from '../../src/types.js';
import { checkRevision } from '../../src/validate.js';
import { isStaleTokenReason } from './auth.js';
import { type Connection, method, sleep } from './connection.js';
import { kvFromPb, type PbHeader, type PbKeyValue } from './convert.js';
import { isResponseSizeError, mapGrpcError } from './errors.js';

interface PbWatchResponse {
  header?: PbHeader;
  watchId?: Int64;
  created?: boolean;
  canceled?: boolean;
  compactRevision?: Int64;
  cancelReason?: string;
  events?: Array<{ type?: number; kv?: PbKeyValue; prevKv?: PbKeyValue | null }>;
}

const watchMethod = method<PbWatchResponse>(methods.watch, pb.WatchRequest, pb.WatchResponse);

/** Bytes counted per buffered event beyond its keys and values (objects, arrays, numbers). */
const eventOverheadBytes = 256;

/** What a batch costs in memory, estimated from its byte arrays plus a fixed cost per event. */
function batchBytes(b: WatchBatch): number {
  let n = eventOverheadBytes;
  for (const e of b.events) {
    n += eventOverheadBytes + e.kv.key.length + e.kv.value.length;
    if (e.prevKv) n += eventOverheadBytes + e.prevKv.key.length + e.prevKv.value.length;
  }
  return n;
}

/** The byte bounds of a client's watch buffers (connect options, see EtcdConnectOptions). */
export interface WatchBounds {
  readonly watchBufferBytesMax: number;
  readonly watchBuffersBytesMax: number;
  readonly watchPausedMsMax: number;
}

export class EtcdWatch implements Watch {
  /** The created response's header revision (see `Watch.ready`). */
  readonly ready: Promise<number>;
  readonly #hub: WatchHub;
  readonly create: Record<string, unknown>;
  readonly progressNotify: boolean;
  /** Next revision to deliver; 0 until the server told us "now" (first created response). */
  nextRev: number;
  serverId: number | undefined;
  #resolveReady!: (revision: number) => void;
  #rejectReady!: (e: unknown) => void;
  /** `ready` is settled (no error object needs building when the watch ends). */
  #readySettled = false;
  /** This watch's create was already re-sent once on a stream with a fresh auth token. */
  authRetried = false;
  readonly #buffer: Array<{ batch: WatchBatch; bytes: number }> = [];
  readonly #bufferMax: number;
  /** Bytes this watch holds in #buffer (and has reserved in the hub's total). */
  #bufferBytes = 0;
  #wake: (() => void) | undefined;
  #error: unknown;
  #done = false;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => void this.close();

  constructor(hub: WatchHub, key: Bytes, opts: WatchOptions) {
    this.#hub = hub;
    const r = resolveRange(key, opts);
    this.nextRev = opts.startRevision === undefined ? 0 : checkRevision('startRevision', opts.startRevision);
    this.#bufferMax = opts.bufferBatchesMax ?? limits.watchBufferBatchesMax;
    if (!Number.isInteger(this.#bufferMax) || this.#bufferMax < 1)
      invalidArgument('bufferBatchesMax', 'must be a positive integer');
    const filters: number[] = [];
    for (const f of opts.filters ?? []) {
      if (f === 'noput') filters.push(0);
      else if (f === 'nodelete') filters.push(1);
      else invalidArgument('filters', `unknown filter ${String(f)} (noput or nodelete)`);
    }
    this.progressNotify = !!opts.progressNotify;
    this.create = {
      key: r.key,
      rangeEnd: r.end.length > 0 ? r.end : undefined,
      prevKv: !!opts.prevKv,
      filters,
      progressNotify: this.progressNotify,
    };
    this.ready = new Promise((res, rej) => {
      this.#resolveReady = res;
      this.#rejectReady = rej;
    });
    this.ready.catch(() => undefined);
    this.#signal = opts.signal;
    if (opts.signal?.aborted) queueMicrotask(() => void this.close());
    else opts.signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  get done(): boolean {
    return this.#done;
  }

  createRequest(): object {
    return { createRequest: { ...this.create, startRevision: this.nextRev } };
  }

  markCreated(headerRevision: number): void {
    if (this.nextRev === 0) this.nextRev = headerRevision + 1;
    // After a re-create (stream broken) the first resolution stands.
    this.#resolveReady(headerRevision);
    this.#readySettled = true;
  }

  deliver(res: PbWatchResponse): void {
    if (this.#done) return;
    const events: WatchEvent[] = [];
    for (const e of res.events ?? []) {
      const kv = kvFromPb(e.kv ?? {});
      if (kv.modRevision < this.nextRev) continue; // already delivered before a resume
      const ev: WatchEvent = e.prevKv
        ? { type: e.type === 1 ? 'delete' : 'put', kv, prevKv: kvFromPb(e.prevKv) }
        : { type: e.type === 1 ? 'delete' : 'put', kv };
      events.push(ev);
    }
    const revision = num(res.header?.revision);
    if (events.length > 0) {
      // The first revision this batch would deliver: where a resume must start if it is dropped.
      const first = events[0]!.kv.modRevision;
      this.nextRev = events[events.length - 1]!.kv.modRevision + 1;
      this.#push({ events, revision }, first);
    } else if ((res.events ?? []).length === 0) {
      // A progress notification: everything up to `revision` has been delivered.
      if (revision + 1 > this.nextRev) this.nextRev = revision + 1;
      if (this.progressNotify) this.#push({ events: [], revision, progress: true }, this.nextRev);
    }
  }

  /** Bytes buffered for the consumer. */
  get bufferedBytes(): number {
    return this.#bufferBytes;
  }

  /** `firstUndelivered`: the revision a resume must start from if this batch is dropped. */
  #push(b: WatchBatch, firstUndelivered: number): void {
    const bytes = batchBytes(b);
    const bounds = this.#hub.bounds;
    // An empty buffer always takes one batch (else a batch larger than the bound could never be
    // delivered); the client-wide bound is checked by the hub.
    let why: string | undefined;
    if (this.#buffer.length >= this.#bufferMax) why = `${this.#bufferMax} batches (bufferBatchesMax)`;
    else if (this.#buffer.length > 0 && this.#bufferBytes + bytes > bounds.watchBufferBytesMax)
      why = `${bounds.watchBufferBytesMax} bytes (watchBufferBytesMax)`;
    else if (this.#buffer.length > 0 && !this.#hub.fits(bytes))
      why = `the client's ${bounds.watchBuffersBytesMax} bytes for all watches (watchBuffersBytesMax)`;
    if (why !== undefined) {
      this.overflow(why, firstUndelivered);
      return;
    }
    this.#buffer.push({ batch: b, bytes });
    this.#bufferBytes += bytes;
    this.#hub.reserve(bytes);
    this.#wake?.();
  }

  /**
   * Ends the watch with `watch-overflow` (the batches already buffered are still delivered first).
   * `resumeRevision` is the first revision not delivered: a watch from it yields exactly the rest.
   */
  overflow(why: string, resumeRevision: number): void {
    this.fail(
      new ConclaveError(
        ErrorCode.WatchOverflow,
        `watch: the consumer fell behind by more than ${why}; the batches already buffered are delivered, then this error. Resume with a new watch from revision ${resumeRevision} (startRevision) to get exactly the events not delivered`,
        { details: { resumeRevision } },
      ),
    );
  }

  /** Gives the buffered bytes back to the client's total (the buffer itself may still drain). */
  #releaseAll(): void {
    if (this.#bufferBytes > 0) this.#hub.release(this.#bufferBytes);
    this.#bufferBytes = 0;
  }

  /** Ends the watch with an error (the iterator throws it after draining nothing further). */
  fail(err: unknown): void {
    if (this.#done) return;
    this.#error = err;
    // What is still buffered drains to the consumer but no longer counts against the client's
    // bound: the watch is off the stream and the memory goes with the watch object.
    this.#releaseAll();
    this.#finish();
    this.#rejectReady(err);
    this.#readySettled = true;
  }

  #finish(): void {
    this.#done = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#hub.remove(this);
    this.#wake?.();
  }

  async close(): Promise<void> {
    if (this.#done) return;
    this.#error = undefined;
    this.#buffer.length = 0;
    this.#releaseAll();
    this.#finish();
    // An error object captures a stack: build it only when someone can still observe it.
    if (!this.#readySettled) {
      this.#readySettled = true;
      this.#rejectReady(new ConclaveError(ErrorCode.Closed, 'watch closed before it was created'));
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    try {
      while (true) {
        const b = this.#buffer.shift();
        if (b) {
          if (!this.#done) {
            this.#bufferBytes -= b.bytes;
            this.#hub.release(b.bytes);
          }
          yield b.batch;
          continue;
        }
        if (this.#done) {
          if (this.#error !== undefined) throw this.#error;
          return;
        }
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
      }
    } finally {
      if (!this.#done) await this.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export class WatchHub {
  readonly #conn: Connection;
  #stream: grpc.ClientDuplexStream<object, PbWatchResponse> | undefined;
  #streamIndex = 0;
  readonly #byId = new Map<number, EtcdWatch>();
  readonly #toCreate: EtcdWatch[] = [];
  #creating: EtcdWatch | undefined;
  /** The deadline of the create in flight (callTimeoutMs). */
  #createTimer: ReturnType<typeof setTimeout> | undefined;
  #reconnecting = false;
  /** A re-authentication for a refused create is in flight: creates wait for its token. */
  #renewing = false;
  /** The auth token the current stream was opened with (etcd checks it on every create). */
  #streamToken: string | undefined;
  #closed = false;
  readonly bounds: WatchBounds;
  /** Bytes buffered by all this client's watches. */
  #bufferedBytes = 0;
  #paused = false;
  #pausedTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Connection, bounds: WatchBounds) {
    this.#conn = conn;
    this.bounds = bounds;
  }

  /** Whether `bytes` more fit in the client's bound for all watch buffers. */
  fits(bytes: number): boolean {
    return this.#bufferedBytes + bytes <= this.bounds.watchBuffersBytesMax;
  }

  reserve(bytes: number): void {
    this.#bufferedBytes += bytes;
    if (!this.#paused && this.#bufferedBytes >= this.bounds.watchBuffersBytesMax / 2) {
      this.#paused = true;
      this.#stream?.pause();
      this.#armPausedTimer();
    }
  }

  release(bytes: number): void {
    this.#bufferedBytes = Math.max(0, this.#bufferedBytes - bytes);
    if (this.#paused && this.#bufferedBytes <= this.bounds.watchBuffersBytesMax / 4) this.#unpause();
  }

  /** Bytes buffered by all watches (for tests and metrics). */
  get bufferedBytes(): number {
    return this.#bufferedBytes;
  }

  get paused(): boolean {
    return this.#paused;
  }

  #unpause(): void {
    this.#paused = false;
    if (this.#pausedTimer !== undefined) clearTimeout(this.#pausedTimer);
    this.#pausedTimer = undefined;
    this.#stream?.resume();
  }

  /** A pause longer than watchPausedMsMax overflows the watch holding the most bytes (see top). */
  #armPausedTimer(): void {
    if (this.#pausedTimer !== undefined) clearTimeout(this.#pausedTimer);
    this.#pausedTimer = setTimeout(() => {
      this.#pausedTimer = undefined;
      if (!this.#paused || this.#closed) return;
      let largest: EtcdWatch | undefined;
      for (const w of this.#byId.values()) {
        if (!largest || w.bufferedBytes > largest.bufferedBytes) largest = w;
      }
      if (largest && largest.bufferedBytes > 0) {
        largest.overflow(
          `what the client could hold while its watch stream was paused for ${this.bounds.watchPausedMsMax} ms (watchPausedMsMax)`,
          largest.nextRev,
        );
      }
      if (this.#paused) this.#armPausedTimer();
    }, this.bounds.watchPausedMsMax);
  }

  add(w: EtcdWatch): void {
    if (this.#closed) {
      w.fail(new ConclaveError(ErrorCode.Closed, 'the etcd client is closed'));
      return;
    }
    if (this.#byId.size + this.#toCreate.length >= limits.watchesPerStreamMax) {
      w.fail(
        new ConclaveError(
          ErrorCode.TooManyRequests,
          `watch: more than ${limits.watchesPerStreamMax} watches on one client`,
        ),
      );
      return;
    }
    this.#toCreate.push(w);
    this.#pump();
  }

  remove(w: EtcdWatch): void {
    const i = this.#toCreate.indexOf(w);
    if (i >= 0) this.#toCreate.splice(i, 1);
    if (w.serverId !== undefined && this.#byId.get(w.serverId) === w) {
      this.#byId.delete(w.serverId);
      this.#stream?.write({ cancelRequest: { watchId: w.serverId } });
    }
  }

  #ensureStream(): grpc.ClientDuplexStream<object, PbWatchResponse> {
    if (this.#stream) return this.#stream;
    this.#streamIndex = this.#conn.currentIndex;
    this.#streamToken = this.#conn.token;
    const s = this.#conn
      .client(this.#streamIndex)
      .makeBidiStreamRequest(
        watchMethod.path,
        watchMethod.serialize,
        this.#conn.deserializer(watchMethod),
        this.#conn.streamMetadata(),
      );
    s.on('data', (res: PbWatchResponse) => this.#onResponse(res));
    if (this.#paused) s.pause();
    s.on('error', (err) => this.#onBroken(s, err));
    s.on('end', () => this.#onBroken(s, undefined));
    this.#stream = s;
    return s;
  }

  #pump(): void {
    if (this.#creating || this.#reconnecting || this.#renewing || this.#closed) return;
    let w = this.#toCreate.shift();
    while (w?.done) w = this.#toCreate.shift();
    if (!w) return;
    this.#creating = w;
    try {
      const s = this.#ensureStream();
      s.write(w.createRequest());
      this.#createTimer = setTimeout(() => this.#onCreateTimeout(w, s), this.#conn.callTimeoutMs);
    } catch (err) {
      this.#creating = undefined;
      w.fail(err);
    }
  }

  #clearCreateTimer(): void {
    if (this.#createTimer !== undefined) clearTimeout(this.#createTimer);
    this.#createTimer = undefined;
  }

  /**
   * The server did not confirm a create within callTimeoutMs. Creates are answered in order on one
   * stream, so a stream that swallowed one would hold every later create behind it: the watch
   * fails `deadline-exceeded` (retryable: the stream it may exist on is dropped with it) and the
   * stream is replaced; the live watchers and the queued creates go on on a new stream.
   */
  #onCreateTimeout(w: EtcdWatch, s: grpc.ClientDuplexStream<object, PbWatchResponse>): void {
    this.#createTimer = undefined;
    if (this.#creating !== w || this.#stream !== s) return;
    this.#creating = undefined;
    w.fail(
      new ConclaveError(
        ErrorCode.DeadlineExceeded,
        `watch: etcd did not confirm the watch within ${this.#conn.callTimeoutMs} ms (callTimeoutMs); the watch stream was re-opened, watch again`,
        { retryable: true },
      ),
    );
    this.#replaceStream();
    this.#pump();
  }

  #onResponse(res: PbWatchResponse): void {
    const id = num(res.watchId);
    if (res.created) {
      const w = this.#creating;
      this.#creating = undefined;
      this.#clearCreateTimer();
      if (res.canceled) {
        // A refused create names no watcher of ours: etcd 3.4.23 sends watch id -1, and earlier
        // releases echoed the request's id (0), which must not reach the live watcher with id 0.
        if (w) this.#onRefused(w, res);
        this.#pump();
        return;
      }
      if (w) {
        if (w.done) this.#stream?.write({ cancelRequest: { watchId: id } });
        else {
          w.serverId = id;
          this.#byId.set(id, w);
          w.markCreated(num(res.header?.revision));
        }
      }
      this.#pump();
      if (!res.canceled && (res.events ?? []).length === 0) return;
    }
    const w = this.#byId.get(id);
    if (!w) return;
    if (res.canceled) {
      this.#byId.delete(id);
      w.serverId = undefined;
      w.deliver({ ...res, canceled: false });
      w.fail(this.#cancelError(res));
      return;
    }
    w.deliver(res);
  }

  /**
   * etcd refused a create. An auth refusal for a stale token (etcd 3.4.23 says "invalid auth
   * token", "revision of auth store is old" or "user name is empty"; older 3.4 releases said
   * "permission denied" for all of them, etcd issue #12385) is retried once: on a stale-token
   * reason, or on "permission denied" from a stream whose token was replaced since it was opened,
   * the hub fetches a fresh token (shared with unary calls) and re-opens the stream with it; the
   * live watchers move to the new stream from their next revision (nothing lost or repeated).
   */
  #onRefused(w: EtcdWatch, res: PbWatchResponse): void {
    const reason = res.cancelReason ?? '';
    const stale = this.#streamToken;
    const retry =
      this.#conn.hasAuth &&
      !w.authRetried &&
      !w.done &&
      (isStaleTokenReason(reason) || (/permission denied/.test(reason) && this.#conn.token !== stale));
    if (!retry) {
      w.fail(this.#cancelError(res));
      return;
    }
    w.authRetried = true;
    this.#toCreate.unshift(w);
    void this.#renewToken(w, stale);
  }

  async #renewToken(w: EtcdWatch, stale: string | undefined): Promise<void> {
    this.#renewing = true;
    try {
      await this.#conn.refreshToken(stale);
      if (!this.#closed && this.#conn.token !== this.#streamToken) this.#replaceStream();
    } catch (err) {
      // No fresh token (bad credentials now, or etcd unreachable): the refused create fails
      // (fail() takes it out of the queue).
      w.fail(err);
    } finally {
      this.#renewing = false;
      this.#pump();
    }
  }

  /** Closes the stream on purpose (no failover) and queues its live watchers for re-creation. */
  #replaceStream(): void {
    const s = this.#stream;
    if (!s) return;
    this.#stream = undefined;
    s.removeAllListeners('data');
    s.on('error', () => undefined);
    s.cancel();
    const live = [...this.#byId.values()];
    this.#byId.clear();
    for (const w of live) w.serverId = undefined;
    this.#toCreate.unshift(...live.filter((w) => !w.done));
  }

  #cancelError(res: PbWatchResponse): ConclaveError {
    const compactRevision = num(res.compactRevision);
    if (compactRevision > 0) {
      return new ConclaveError(
        ErrorCode.Compacted,
        `watch: the start revision was compacted; the oldest available revision is ${compactRevision}`,
        { compactRevision },
      );
    }
    const reason = res.cancelReason || 'no reason given';
    if (/permission denied/.test(reason)) {
      return new ConclaveError(
        ErrorCode.PermissionDenied,
        `watch: etcd refused it (${reason}); the user needs read permission on the watched range`,
      );
    }
    if (isStaleTokenReason(reason)) {
      return new ConclaveError(ErrorCode.Unauthenticated, `watch: etcd refused the auth token (${reason})`);
    }
    return new ConclaveError(ErrorCode.Unavailable, `watch canceled by the server: ${reason}`);
  }

  #onBroken(s: grpc.ClientDuplexStream<object, PbWatchResponse>, err: unknown): void {
    if (this.#stream !== s) return;
    this.#stream = undefined;
    s.removeAllListeners('data');
    s.on('error', () => undefined);
    if (this.#closed) return;
    // Re-create every live watcher, in the order they were created, from its next revision.
    const live = [...this.#byId.values()];
    if (this.#creating) live.push(this.#creating);
    this.#creating = undefined;
    this.#clearCreateTimer();
    this.#byId.clear();
    for (const w of live) w.serverId = undefined;
    if (isResponseSizeError(err)) {
      // A response the client refused for its size (decode-guard.ts): re-creating the watches
      // would fetch it again. We cannot tell whose it was, so every watch on the stream ends.
      const e = mapGrpcError(err, 'watch', false);
      for (const w of live) w.fail(e);
      void this.#reconnect(err);
      return;
    }
    this.#toCreate.unshift(...live.filter((w) => !w.done));
    this.#conn.failover(this.#streamIndex);
    void this.#reconnect(err);
  }

  async #reconnect(cause: unknown): Promise<void> {
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    try {
      for (let attempt = 0; !this.#closed; attempt++) {
        if (this.#toCreate.length === 0) return;
        if (attempt >= limits.watchReconnectAttemptsMax) {
          const e = new ConclaveError(
            ErrorCode.Unavailable,
            `watch: could not re-open the watch stream after ${attempt} attempts`,
            { cause },
          );
          for (const w of this.#toCreate.splice(0)) w.fail(e);
          return;
        }
        await sleep(Math.min(2000, 50 * 2 ** Math.min(attempt, 6)));
        if (this.#closed) return;
        if (await this.#probe()) return;
      }
    } finally {
      this.#reconnecting = false;
      this.#pump();
    }
  }

  /** Waits until the current endpoint's channel is ready (or fails over); true when usable. */
  #probe(): Promise<boolean> {
    return new Promise((resolve) => {
      const index = this.#conn.currentIndex;
      let client: grpc.Client;
      try {
        client = this.#conn.client(index);
      } catch {
        resolve(false);
        return;
      }
      client.waitForReady(Date.now() + 1000, (err) => {
        if (err) this.#conn.failover(index);
        resolve(!err);
      });
    });
  }

  close(): void {
    this.#closed = true;
    this.#clearCreateTimer();
    if (this.#pausedTimer !== undefined) clearTimeout(this.#pausedTimer);
    const e = new ConclaveError(ErrorCode.Closed, 'the etcd client was closed');
    for (const w of [...this.#byId.values(), ...this.#toCreate]) w.fail(e);
    this.#creating?.fail(e);
    this.#stream?.cancel();
    this.#stream = undefined;
  }
}
