import { expect, it } from 'vitest';
import { type Job, WorkQueue } from '../../../recipes/work-queue.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { Session } from '../../../src/session.js';
import type { Bytes, Txn, TxnResult, Watch, WatchBatch } from '../../../src/types.js';
import type { RegisterTests } from '../context.js';
import { seeded, sleep, waitFor } from '../util.js';

const keyText = (k: Bytes): string => (typeof k === 'string' ? k : toText(k));

/**
 * A watch whose batches the test hands out: every batch of `real` is buffered, and passed on to
 * the consumer at once while `auto` is on, or one at a time by `release()` when it is off.
 */
class GatedWatch implements Watch {
  auto = true;
  readonly pending: WatchBatch[] = [];
  readonly ready: Promise<number>;
  #waiter: ((r: IteratorResult<WatchBatch>) => void) | undefined;
  #done = false;
  #error: unknown;
  readonly #real: Watch;

  constructor(real: Watch) {
    this.#real = real;
    this.ready = real.ready;
    void (async () => {
      try {
        for await (const b of real) {
          this.pending.push(b);
          if (this.auto) this.release();
        }
      } catch (err) {
        this.#error = err ?? new Error('watch failed');
      }
      this.#done = true;
      this.release();
    })();
  }

  /** Hands the oldest buffered batch (or the end) to a waiting consumer; false if none waits. */
  release(): boolean {
    const w = this.#waiter;
    if (!w) return false;
    if (this.pending.length > 0) {
      this.#waiter = undefined;
      w({ value: this.pending.shift()!, done: false });
      return true;
    }
    if (this.#done && this.#error === undefined) {
      this.#waiter = undefined;
      w({ value: undefined, done: true });
    }
    return false;
  }

  get waiting(): boolean {
    return this.#waiter !== undefined;
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchBatch> {
    return {
      next: () => {
        if (this.auto && this.pending.length > 0)
          return Promise.resolve({ value: this.pending.shift()!, done: false });
        if (this.#done && this.pending.length === 0)
          return this.#error === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.#error);
        return new Promise((resolve) => {
          this.#waiter = resolve;
        });
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }

  async close(): Promise<void> {
    await this.#real.close();
    this.#done = true;
    this.release();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * `kv` with two seams for reaper races: watches of `gatedPrefix` are `GatedWatch`es (handed to
 * `onWatch`), and while `holdReapWrites` is on, the result of every reaper write (a txn that
 * compares an `inflight/lease/` key's create revision) is held until the test releases it.
 */
function reaperSeams(kv: KV, gatedPrefix: string) {
  const seams = {
    watches: [] as GatedWatch[],
    holdReapWrites: false,
    held: [] as Array<() => void>,
    kv: new Proxy(kv, {
      get(target, prop) {
        if (prop === 'watch')
          return (key: Bytes, opts?: Parameters<KV['watch']>[1]) => {
            const w = target.watch(key, opts);
            if (keyText(key) !== gatedPrefix) return w;
            const g = new GatedWatch(w);
            seams.watches.push(g);
            return g;
          };
        if (prop === 'txn')
          return async (t: Txn, o?: Parameters<KV['txn']>[1]): Promise<TxnResult> => {
            const r = await target.txn(t, o);
            const reapWrite = t.compare.some(
              (c) => c.target === 'create' && keyText(c.key).includes('/inflight/lease/'),
            );
            if (!reapWrite || !seams.holdReapWrites) return r;
            return new Promise((resolve) => seams.held.push(() => resolve(r)));
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    }),
  };
  return seams;
}

/** Conformance tests of WorkQueue; run on every backend. */
export const registerWorkQueueTests: RegisterTests = (ctx) => {
  /** A session and a queue on `kv`; the visibility timeout is the store's minimum TTL unless given. */
  async function open(kv: KV, name: string, opts: { visibilitySeconds?: number; attemptsMax?: number } = {}) {
    const { backend } = ctx();
    const session = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const queue = new WorkQueue(session, name, {
      visibilityTimeoutSeconds: opts.visibilitySeconds ?? backend.minTtlSeconds,
      ...(opts.attemptsMax ? { attemptsMax: opts.attemptsMax } : {}),
    });
    return {
      session,
      queue,
      async [Symbol.asyncDispose]() {
        await queue.close();
        await session.close().catch(() => undefined);
      },
    };
  }
  const timeout = (ms: number) => ({ signal: AbortSignal.timeout(ms) });

  it('work queue — a consumer killed mid-job has its item redelivered after the visibility timeout', async () => {
    const { kv, prefix, newKv, backend } = ctx();
    const name = `${prefix('wq-kill')}jobs`;
    const vis = backend.minTtlSeconds;
    await using a = await open(kv, name);
    await a.queue.add('payload');
    const kvB = await newKv();
    const b = await open(kvB, name);
    const before = performance.now();
    const jobB = await b.queue.claim(timeout(10_000));
    expect(jobB.attempts).toBe(1);
    // Killed: its client goes away without ack, keep-alives or revocation.
    await kvB.close();
    const job = await a.queue.claim(timeout(vis * 1000 + 12_000));
    const elapsedMs = performance.now() - before;
    expect(job.id).toBe(jobB.id);
    expect(job.text).toBe('payload');
    expect(job.attempts).toBe(2);
    expect(job.lastError).toMatch(/expired/);
    // The claim lease was granted after `before`, and no store expires a lease before its TTL.
    expect(elapsedMs).toBeGreaterThanOrEqual(vis * 1000 - 100);
    // B's claim had run out in B's own view: its `lost` fired, or (if this process just stalled
    // and the timer that fires it has not run yet) its deadline has passed.
    expect(jobB.lost.aborted || jobB.remainingMs() === 0).toBe(true);
    expect((await job.ack()).isOk()).toBe(true);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
    await b[Symbol.asyncDispose]();
  }, 30_000);

  it('work queue — ack deletes the item, the stats follow it, and a second ack is Err(settled)', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-ack')}jobs`;
    await using a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    for (const v of ['x', 'y', 'z']) await a.queue.add(v);
    expect(await a.queue.stats()).toMatchObject({ ready: 3, inFlight: 0, delayed: 0, dead: 0 });
    const job = await a.queue.claim(timeout(10_000));
    expect(job.text).toBe('x');
    expect(await a.queue.stats()).toMatchObject({ ready: 2, inFlight: 1 });
    expect(await kv.get(`${name}/inflight/lease/${job.id}`)).toMatchObject({ lease: job.lease });
    expect((await job.ack()).isOk()).toBe(true);
    expect(job.settled).toBe(true);
    expect(job.lost.aborted).toBe(true);
    expect(await a.queue.stats()).toMatchObject({ ready: 2, inFlight: 0, delayed: 0, dead: 0 });
    expect(await kv.get(`${name}/items/${job.id}`)).toBeUndefined();
    expect((await kv.range(`${name}/items/`, { prefix: true, countOnly: true })).count).toBe(2);
    const again = await job.ack();
    expect(again.isErr() && again.error.reason).toBe('settled');
  }, 30_000);

  it('work queue — an ack after the claim expired and the item was redelivered is Err(expired)', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('wq-late-ack')}jobs`;
    await using a = await open(kv, name);
    await using b = await open(await newKv(), name);
    await a.queue.add('slow');
    const slow = await a.queue.claim(timeout(10_000));
    // The claim's lease ends (as if the visibility timeout passed) while the consumer still works.
    await kv.lease.revoke(slow.lease);
    const again = await b.queue.claim(timeout(15_000));
    expect(again.id).toBe(slow.id);
    expect(again.attempts).toBe(2);
    const late = await slow.ack();
    expect(late.isErr()).toBe(true);
    if (late.isErr()) {
      expect(late.error.reason).toBe('expired');
      expect(late.error.message).toMatch(/redelivered/);
    }
    expect(slow.lost.aborted).toBe(true);
    // The redelivered claim is unaffected and settles normally.
    expect((await again.ack()).isOk()).toBe(true);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 30_000);

  it('work queue — a claim that expired while no consumer ran is returned by the next consumer’s start-up sweep', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('wq-sweep')}jobs`;
    await using producer = await open(kv, name);
    const id = await producer.queue.add('orphan');
    const b = await open(await newKv(), name);
    const job = await b.queue.claim(timeout(10_000));
    // The only consumer stops (its reaper with it) and its claim ends while nobody watches.
    await b.queue.close();
    await kv.lease.revoke(job.lease);
    expect(await kv.get(`${name}/inflight/lease/${id}`)).toBeUndefined();
    expect(await producer.queue.stats()).toMatchObject({ ready: 0, inFlight: 1 });
    await using c = await open(await newKv(), name);
    const again = await c.queue.claim(timeout(15_000));
    expect(again.id).toBe(id);
    expect(again.attempts).toBe(2);
    expect((await again.ack()).isOk()).toBe(true);
    await b[Symbol.asyncDispose]();
  }, 30_000);

  it('work queue — a consumer cut off from the store recovers its reaper: a claim that expired during the cut comes back to it', async (t) => {
    const { kv, prefix, newKv, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const name = `${prefix('wq-cut')}jobs`;
    await using producer = await open(kv, name);
    const proxied = await backend.proxied();
    try {
      // A session that outlives the cut (suspended, not lost), so the consumer keeps going.
      const session = await Session.create(proxied.kv, {
        ttlSeconds: Math.max(8, backend.minTtlSeconds + 6),
      });
      const c = new WorkQueue(session, name, { visibilityTimeoutSeconds: backend.minTtlSeconds });
      expect(await c.tryClaim()).toBeUndefined(); // starts its reaper
      const id = await producer.queue.add('during the cut');
      const other = await open(await newKv(), name);
      const job = await other.queue.claim(timeout(10_000));
      await other.queue.close(); // the only other reaper stops
      await proxied.cut();
      await kv.lease.revoke(job.lease);
      await sleep(300);
      await proxied.restore();
      const again = await c.claim(timeout(20_000));
      expect(again.id).toBe(id);
      expect(again.attempts).toBe(2);
      expect((await again.ack()).isOk()).toBe(true);
      await c.close();
      await session.close();
      await other[Symbol.asyncDispose]();
    } finally {
      await proxied.close();
    }
  }, 40_000);

  it('work queue — a claim that expires just as the reaper finishes another is still returned (every microtask interleaving)', async () => {
    const { kv, prefix } = ctx();
    const stuck: number[] = [];
    // The reaper's next watch batch arrives k microtasks after its previous write resolves.
    for (let k = 0; k <= 6; k++) {
      const name = `${prefix(`wq-reap-race-${k}`)}jobs`;
      const seams = reaperSeams(kv, `${name}/inflight/`);
      await using a = await open(seams.kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 20 });
      await a.queue.add('one');
      await a.queue.add('two');
      const one = (await a.queue.tryClaim())!;
      const two = (await a.queue.tryClaim())!;
      await waitFor(
        () => seams.watches.length === 1 && seams.watches[0]!.waiting,
        10_000,
        'the reaper watch',
      );
      const gate = seams.watches[0]!;
      // The first claim expires; its reap is held at its write.
      seams.holdReapWrites = true;
      await kv.lease.revoke(one.lease);
      await waitFor(() => seams.held.length === 1, 10_000, 'the first reap');
      // The second expires; its delete is delivered right after the first reap's write resolves.
      gate.auto = false;
      await kv.lease.revoke(two.lease);
      await waitFor(() => gate.pending.length === 1, 10_000, 'the second expiry');
      seams.holdReapWrites = false;
      seams.held[0]!();
      for (let i = 0; i < k; i++) await Promise.resolve();
      gate.release();
      gate.auto = true;
      gate.release();
      const returned = await waitFor(async () => (await a.queue.stats()).ready === 2, 3000, 'both items back')
        .then(() => true)
        .catch(() => false);
      if (!returned) stuck.push(k);
    }
    expect(stuck).toEqual([]);
  }, 60_000);

  it('work queue — a claim whose txn applied but whose reply was lost gives the item back without spending an attempt', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-lost-reply')}jobs`;
    let lose = true;
    // The first claim txn is applied by the store, but its reply never reaches the consumer.
    const lossy = new Proxy(kv, {
      get(target, prop) {
        if (prop === 'txn')
          return async (t: Txn, o?: Parameters<KV['txn']>[1]): Promise<TxnResult> => {
            const r = await target.txn(t, o);
            const claim = t.success.some(
              (op) => op.type === 'put' && keyText(op.key).includes('/inflight/rec/'),
            );
            if (claim && t.compare.some((c) => keyText(c.key).includes('/ready/')) && lose) {
              lose = false;
              throw new ConclaveError(ErrorCode.Unavailable, 'connection lost before the reply');
            }
            return r;
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using a = await open(lossy, name, { attemptsMax: 1 });
    const id = await a.queue.add('never seen by a handler');
    await expect(a.queue.tryClaim()).rejects.toSatisfy((e: unknown) => ConclaveError.is(e, 'unavailable'));
    await waitFor(
      async () => {
        const s = await a.queue.stats();
        return s.ready + s.dead === 1;
      },
      15_000,
      'the item to leave its unknown claim',
    );
    expect(await a.queue.stats()).toMatchObject({ ready: 1, inFlight: 0, dead: 0 });
    const job = await a.queue.tryClaim();
    expect(job?.id).toBe(id);
    expect(job?.attempts).toBe(1);
    expect((await job!.ack()).isOk()).toBe(true);
  }, 30_000);

  it('work queue — an onError callback that throws does not escape process() as an unhandled rejection', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-onerror')}jobs`;
    await using a = await open(kv, name);
    await a.queue.add('late');
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const reported: unknown[] = [];
      const stop = new AbortController();
      const run = a.queue
        .process(
          async (job) => {
            if (job.attempts > 1) return;
            // The claim is lost under the handler: its ack will be Err(expired) and reported.
            await kv.lease.revoke(job.lease);
            await waitFor(async () => (await a.queue.stats()).ready === 1, 15_000, 'the reap');
          },
          {
            signal: stop.signal,
            onError: (err) => {
              reported.push(err);
              throw new Error('a broken onError');
            },
          },
        )
        .catch((err: unknown) => err);
      await waitFor(
        async () => reported.length >= 1 && (await a.queue.stats()).ready === 0,
        20_000,
        'the report',
      );
      await waitFor(async () => (await a.queue.stats()).inFlight === 0, 10_000, 'the second delivery’s ack');
      await sleep(100);
      stop.abort(new Error('stop'));
      expect(await run).toBeUndefined(); // a requested stop resolves
      expect(unhandled).toEqual([]);
      // Reported once: the callback's own failure is not fed back to it.
      expect(reported).toHaveLength(1);
      expect(ConclaveError.is(reported[0], 'session-lost')).toBe(true);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  }, 40_000);

  it('work queue — a nack with a delay is not redelivered before the delay, and is after it', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-nack')}jobs`;
    await using a = await open(kv, name);
    await a.queue.add('retry-me');
    const job = await a.queue.claim(timeout(10_000));
    const nackedAt = Date.now();
    const r = await job.nack({ delaySeconds: 2, error: 'boom' });
    expect(r.isOk() && r.value).toBe('delayed');
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 1 });
    expect(await a.queue.tryClaim()).toBeUndefined();
    const again = await a.queue.claim(timeout(15_000));
    expect(Date.now() - nackedAt).toBeGreaterThanOrEqual(2000);
    expect(again.id).toBe(job.id);
    expect(again.attempts).toBe(2);
    expect(again.lastError).toBe('boom');
    expect((await again.ack()).isOk()).toBe(true);
  }, 30_000);

  it('work queue — after attemptsMax failed deliveries the item is a dead letter with its last error', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-dead')}jobs`;
    await using a = await open(kv, name, { attemptsMax: 3 });
    const id = await a.queue.add('poison');
    for (let i = 1; i <= 3; i++) {
      const job = await a.queue.claim(timeout(10_000));
      expect(job.attempts).toBe(i);
      const r = await job.nack({ error: `failure ${i}` });
      expect(r.isOk() && r.value).toBe(i < 3 ? 'ready' : 'dead');
    }
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 1 });
    expect(await a.queue.tryClaim()).toBeUndefined();
    expect(await kv.get(`${name}/dead/${id}`)).toBeDefined();
    const dead = await a.queue.deadLetters();
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ id, attempts: 3, lastError: 'failure 3' });
    expect(new TextDecoder().decode(dead[0]!.value)).toBe('poison');
    // A dead letter can be given another round of attempts.
    expect(await a.queue.requeueDead(id)).toBe(true);
    const revived = await a.queue.claim(timeout(10_000));
    expect(revived.attempts).toBe(1);
    expect((await revived.ack()).isOk()).toBe(true);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 30_000);

  it('work queue — a claim that expires on its last allowed attempt goes to dead letters', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-dead-expired')}jobs`;
    await using a = await open(kv, name, { attemptsMax: 1 });
    const id = await a.queue.add('once');
    const job = await a.queue.claim(timeout(10_000));
    await kv.lease.revoke(job.lease);
    await waitFor(async () => (await a.queue.stats()).dead === 1, 15_000, 'the dead letter');
    const [dead] = await a.queue.deadLetters();
    expect(dead).toMatchObject({ id, attempts: 1 });
    expect(dead!.lastError).toMatch(/expired/);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0 });
  }, 30_000);

  it('work queue — an item whose body was deleted behind the queue is dead-lettered, never handed out empty', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-nobody')}jobs`;
    await using a = await open(kv, name);
    const broken = await a.queue.add('gone');
    await a.queue.add('fine');
    await kv.delete(`${name}/items/${broken}`);
    const job = await a.queue.claim(timeout(10_000));
    expect(job.text).toBe('fine');
    await job.ack();
    const [dead] = await a.queue.deadLetters();
    expect(dead?.id).toBe(broken);
    expect(dead?.lastError).toMatch(/missing/);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 1 });
  }, 30_000);

  it('work queue — 4 consumers on separate clients handle every job, none at once by two of them', async () => {
    const { kv, prefix, newKv, backend } = ctx();
    const name = `${prefix('wq-many')}jobs`;
    const jobs = 40;
    const { rand, replay } = seeded('wq-many');
    await using producer = await open(kv, name);
    for (let i = 0; i < jobs; i++) await producer.queue.add(`job-${i}`);
    const consumers = await Promise.all(
      Array.from({ length: 4 }, async () =>
        open(await newKv(), name, { visibilitySeconds: backend.minTtlSeconds + 20 }),
      ),
    );
    const active = new Set<string>();
    const handled = new Map<string, number>();
    const overlaps: string[] = [];
    const stop = new AbortController();
    const runs = consumers.map((c) =>
      c.queue
        .process(
          async (job) => {
            if (active.has(job.id)) overlaps.push(job.id);
            active.add(job.id);
            await sleep(Math.floor(rand() * 10));
            handled.set(job.text, (handled.get(job.text) ?? 0) + 1);
            active.delete(job.id);
          },
          { concurrency: 2, signal: stop.signal },
        )
        .catch((err: unknown) => err),
    );
    await waitFor(
      async () => (await producer.queue.stats()).ready === 0 && active.size === 0 && handled.size === jobs,
      30_000,
      `every job handled (${replay})`,
    );
    stop.abort(new Error('done'));
    for (const r of await Promise.all(runs)) expect(r, replay).toBeUndefined(); // a requested stop resolves
    for (const c of consumers) await c[Symbol.asyncDispose]();
    expect(overlaps, replay).toEqual([]);
    expect(
      [...handled.values()].every((n) => n === 1),
      replay,
    ).toBe(true);
    expect(handled.size, replay).toBe(jobs);
    expect(await producer.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 60_000);

  it('work queue — process never runs more handlers at once than its concurrency, and retries a failed job', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-conc')}jobs`;
    await using a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    for (let i = 0; i < 12; i++) await a.queue.add(i === 5 ? 'fail-once' : `job-${i}`);
    let running = 0;
    let maxRunning = 0;
    const done: Job[] = [];
    const stop = new AbortController();
    const run = a.queue
      .process(
        async (job) => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          try {
            await sleep(100);
            if (job.text === 'fail-once' && job.attempts === 1) throw new Error('first try fails');
            done.push(job);
          } finally {
            running--;
          }
        },
        { concurrency: 3, signal: stop.signal },
      )
      .catch((err: unknown) => err);
    await waitFor(() => done.length === 12, 20_000, 'all 12 jobs');
    stop.abort(new Error('stop'));
    expect(await run).toBeUndefined(); // a requested stop resolves
    expect(maxRunning).toBe(3);
    const retried = done.find((j) => j.text === 'fail-once');
    expect(retried?.attempts).toBe(2);
    expect(retried?.lastError).toBe('first try fails');
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 30_000);

  it('work queue — process sends up to `concurrency` claims at once, and claims in flight plus running handlers never exceed it', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-claims')}jobs`;
    const concurrency = 4;
    let claims = 0;
    let running = 0;
    let maxClaims = 0;
    let maxBusy = 0;
    // The first claim txns are held until `concurrency` of them are waiting (or 5 s passed), so
    // claims that the workers send one after another would show up as fewer in flight.
    let gate: { open: () => void; opened: Promise<void> } | undefined;
    {
      let open = () => {};
      const opened = new Promise<void>((resolve) => {
        open = resolve;
      });
      gate = { open, opened };
    }
    const counting = new Proxy(kv, {
      get(target, prop) {
        if (prop === 'txn')
          return async (t: Txn, o?: Parameters<KV['txn']>[1]): Promise<TxnResult> => {
            const claim =
              t.compare.some((c) => keyText(c.key).includes('/ready/')) &&
              t.success.some((op) => op.type === 'put' && keyText(op.key).includes('/inflight/rec/'));
            if (!claim) return target.txn(t, o);
            claims++;
            maxClaims = Math.max(maxClaims, claims);
            maxBusy = Math.max(maxBusy, claims + running);
            try {
              if (gate) {
                const g = gate;
                if (claims >= concurrency) {
                  gate = undefined;
                  g.open();
                } else {
                  await Promise.race([g.opened, sleep(5000)]);
                  if (gate === g) {
                    gate = undefined;
                    g.open();
                  }
                }
              }
              return await target.txn(t, o);
            } finally {
              claims--;
            }
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using a = await open(counting, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    for (let i = 0; i < 16; i++) await a.queue.add(`job-${i}`);
    const done = new Set<string>();
    const stop = new AbortController();
    const run = a.queue
      .process(
        async (job) => {
          running++;
          maxBusy = Math.max(maxBusy, claims + running);
          try {
            await sleep(20);
            done.add(job.text);
          } finally {
            running--;
          }
        },
        { concurrency, signal: stop.signal },
      )
      .catch((err: unknown) => err);
    await waitFor(() => done.size === 16, 30_000, 'all 16 jobs');
    stop.abort(new Error('stop'));
    expect(await run).toBeUndefined(); // a requested stop resolves
    expect(maxClaims).toBe(concurrency);
    expect(maxBusy).toBeLessThanOrEqual(concurrency);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 45_000);

  it('work queue — 3 consumers each running process at concurrency 8 ack every job exactly once, none in two handlers at once', async () => {
    const { kv, prefix, newKv, backend } = ctx();
    const name = `${prefix('wq-many8')}jobs`;
    const jobs = 150;
    const { rand, replay } = seeded('wq-many8');
    await using producer = await open(kv, name);
    // Half are waiting when the consumers start; the rest arrive while their workers wait.
    for (let i = 0; i < jobs / 2; i++) await producer.queue.add(`job-${i}`);
    const consumers = await Promise.all(
      Array.from({ length: 3 }, async () =>
        open(await newKv(), name, { visibilitySeconds: backend.minTtlSeconds + 20 }),
      ),
    );
    const active = new Set<string>();
    const acked = new Map<string, number>();
    const overlaps: string[] = [];
    const ackErrors: string[] = [];
    const stop = new AbortController();
    const runs = consumers.map((c) =>
      c.queue
        .process(
          async (job) => {
            if (active.has(job.id)) overlaps.push(job.id);
            active.add(job.id);
            await sleep(Math.floor(rand() * 5));
            active.delete(job.id);
            const r = await job.ack();
            if (r.isErr()) ackErrors.push(r.error.message);
            else acked.set(job.text, (acked.get(job.text) ?? 0) + 1);
          },
          { concurrency: 8, signal: stop.signal },
        )
        .catch((err: unknown) => err),
    );
    for (let i = jobs / 2; i < jobs; i++) await producer.queue.add(`job-${i}`);
    await waitFor(() => acked.size === jobs && active.size === 0, 60_000, `every job acked (${replay})`);
    stop.abort(new Error('done'));
    for (const r of await Promise.all(runs)) expect(r, replay).toBeUndefined(); // a requested stop resolves
    for (const c of consumers) await c[Symbol.asyncDispose]();
    expect(overlaps, replay).toEqual([]);
    expect(ackErrors, replay).toEqual([]);
    expect(
      [...acked.values()].every((n) => n === 1),
      replay,
    ).toBe(true);
    expect(acked.size, replay).toBe(jobs);
    expect(await producer.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 90_000);

  it('work queue — a settled job’s lease is reused by the next claim, renewed to a full visibility timeout first', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-lease-reuse')}jobs`;
    const vis = ctx().backend.minTtlSeconds + 10;
    await using a = await open(kv, name, { visibilitySeconds: vis });
    await a.queue.add('first');
    await a.queue.add('second');
    const first = await a.queue.claim(timeout(10_000));
    const ttl = (await kv.lease.timeToLive(first.lease)).grantedTtlSeconds;
    const margin = Math.min(1000, (ttl * 1000) / 6);
    // Long enough that an unrenewed lease would show it in both clocks.
    await sleep(2500);
    expect((await first.ack()).isOk()).toBe(true);
    const second = await a.queue.claim(timeout(10_000));
    expect(second.lease).toBe(first.lease);
    expect(await kv.get(`${name}/inflight/lease/${second.id}`)).toMatchObject({ lease: second.lease });
    // Renewed by the claim: without it, at most ttl − margin − 2500 ms would be left.
    expect(second.remainingMs()).toBeGreaterThan(ttl * 1000 - margin - 1500);
    expect(second.remainingMs()).toBeLessThanOrEqual(ttl * 1000 - margin);
    expect((await kv.lease.timeToLive(second.lease)).ttlSeconds).toBeGreaterThanOrEqual(ttl - 1);
    expect(second.lost.aborted).toBe(false);
    expect((await second.ack()).isOk()).toBe(true);
  }, 30_000);

  it('work queue — a kept lease that ended on the server is skipped: the next claim grants a new one', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-lease-gone')}jobs`;
    await using a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    await a.queue.add('first');
    await a.queue.add('second');
    const first = await a.queue.claim(timeout(10_000));
    expect((await first.ack()).isOk()).toBe(true);
    await kv.lease.revoke(first.lease);
    const second = await a.queue.claim(timeout(10_000));
    expect(second.lease).not.toBe(first.lease);
    expect(await kv.get(`${name}/inflight/lease/${second.id}`)).toMatchObject({ lease: second.lease });
    expect((await second.ack()).isOk()).toBe(true);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 30_000);

  it('work queue — close revokes the leases kept for reuse', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-lease-close')}jobs`;
    const a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    await a.queue.add('one');
    const job = await a.queue.claim(timeout(10_000));
    expect((await job.ack()).isOk()).toBe(true);
    // An empty round also leaves its lease for reuse.
    expect(await a.queue.tryClaim()).toBeUndefined();
    expect((await kv.lease.timeToLive(job.lease)).ttlSeconds).toBeGreaterThan(0);
    await a[Symbol.asyncDispose]();
    expect((await kv.lease.timeToLive(job.lease)).ttlSeconds).toBe(-1);
  }, 30_000);

  it('work queue — an item added while a process worker is between an empty read and its wait is still claimed', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-gap')}jobs`;
    let armed = false;
    let adding: Promise<unknown> | undefined;
    // The worker's next empty read of ready/ returns only after another item was added and its
    // put had time to reach the worker's (already running) watch before the worker waits.
    const gapped = new Proxy(kv, {
      get(target, prop) {
        if (prop === 'range')
          return async (key: Bytes, o?: Parameters<KV['range']>[1]) => {
            const r = await target.range(key, o);
            if (armed && r.kvs.length === 0 && keyText(key) === `${name}/ready/`) {
              armed = false;
              adding = a.queue.add('two');
              await adding;
              await sleep(300);
            }
            return r;
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using a = await open(gapped, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    const handled: string[] = [];
    const stop = new AbortController();
    const run = a.queue
      .process(
        (job) => {
          handled.push(job.text);
          if (job.text === 'one') armed = true;
        },
        { signal: stop.signal },
      )
      .catch((err: unknown) => err);
    await a.queue.add('one');
    await waitFor(() => handled.length === 2, 15_000, 'both items handled');
    expect(adding).toBeDefined();
    stop.abort(new Error('stop'));
    await run;
    expect(handled).toEqual(['one', 'two']);
  }, 30_000);

  it('work queue — process reads from past the items it took, yet takes an urgent item added ahead of them next', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-urgent')}jobs`;
    // Reads of ready keys that start past the front of the queue (at the cursor).
    let cursorReads = 0;
    const counting = new Proxy(kv, {
      get(target, prop) {
        if (prop === 'range')
          return (key: Bytes, o?: Parameters<KV['range']>[1]) => {
            const k = keyText(key);
            if (k.startsWith(`${name}/ready/`) && k !== `${name}/ready/`) cursorReads++;
            return target.range(key, o);
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using a = await open(counting, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 20 });
    for (let i = 0; i < 40; i++) await a.queue.add(`low-${i}`, { priority: 5 });
    const handled: string[] = [];
    let addedAfter = -1;
    const stop = new AbortController();
    const run = a.queue
      .process(
        async (job) => {
          handled.push(job.text);
          await sleep(60);
        },
        { signal: stop.signal },
      )
      .catch((err: unknown) => err);
    // By now the worker reads ready keys from past the items it already took.
    await waitFor(() => handled.length >= 4, 20_000, 'the first jobs');
    await a.queue.add('urgent', { priority: 0 });
    addedAfter = handled.length;
    await waitFor(() => handled.includes('urgent'), 20_000, 'the urgent job');
    stop.abort(new Error('stop'));
    await run;
    // The job running when it was added, perhaps one claimed just before its put was seen, then it.
    expect(handled.indexOf('urgent') - addedAfter).toBeLessThanOrEqual(3);
    // Most claims skipped the deleted keys of the items taken before them.
    expect(cursorReads).toBeGreaterThan(0);
  }, 45_000);

  it('work queue — autoExtend keeps a slow handler’s claim past the visibility timeout', async () => {
    const { kv, prefix, newKv, backend } = ctx();
    const name = `${prefix('wq-extend')}jobs`;
    const vis = backend.minTtlSeconds + 1;
    await using a = await open(kv, name, { visibilitySeconds: vis });
    await using other = await open(await newKv(), name);
    await a.queue.add('slow');
    const stop = new AbortController();
    const handled: Job[] = [];
    const stolen: string[] = [];
    const run = a.queue
      .process(
        async (job, { signal }) => {
          // Work for longer than the timeout while another consumer keeps trying to take the item.
          const until = performance.now() + vis * 1000 + 1500;
          while (performance.now() < until) {
            const j = await other.queue.tryClaim();
            if (j) stolen.push(j.id);
            await sleep(100);
          }
          expect(signal.aborted).toBe(false);
          handled.push(job);
        },
        { autoExtend: true, signal: stop.signal },
      )
      .catch((err: unknown) => err);
    await waitFor(() => handled.length === 1, 20_000, 'the slow job');
    await waitFor(async () => (await a.queue.stats()).inFlight === 0, 5000, 'the ack');
    stop.abort(new Error('stop'));
    await run;
    expect(stolen).toEqual([]);
    expect(handled[0]!.attempts).toBe(1);
    expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 0, delayed: 0, dead: 0 });
  }, 30_000);

  it('work queue — a job left unsettled in an `await using` scope is nacked back to ready at scope exit', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-using')}jobs`;
    await using a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    await a.queue.add('boomerang');
    let id = '';
    {
      await using job = await a.queue.claim(timeout(10_000));
      id = job.id;
      expect(await a.queue.stats()).toMatchObject({ ready: 0, inFlight: 1 });
    }
    expect(await a.queue.stats()).toMatchObject({ ready: 1, inFlight: 0 });
    const again = await a.queue.tryClaim();
    expect(again?.id).toBe(id);
    expect(again?.attempts).toBe(2);
    await again?.ack();
  }, 30_000);

  it('work queue — items are claimed by priority (lower first), FIFO within a priority', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-prio')}jobs`;
    await using a = await open(kv, name, { visibilitySeconds: ctx().backend.minTtlSeconds + 10 });
    const adds: Array<[string, number]> = [
      ['a', 5],
      ['b', 1],
      ['c', 1],
      ['d', 0],
      ['e', 5],
      ['f', 1],
    ];
    for (const [v, priority] of adds) await a.queue.add(v, { priority });
    const order: string[] = [];
    for (let i = 0; i < adds.length; i++) {
      const job = await a.queue.claim(timeout(10_000));
      order.push(job.text);
      expect(job.priority).toBe(adds.find(([v]) => v === job.text)![1]);
      await job.ack();
    }
    expect(order).toEqual(['d', 'b', 'c', 'f', 'a', 'e']);
  }, 30_000);

  it('work queue — a delayed add is claimable only once due, while others pass it', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-delay')}jobs`;
    await using a = await open(kv, name);
    const addedAt = Date.now();
    await a.queue.add('later', { delaySeconds: 2 });
    await a.queue.add('now');
    expect(await a.queue.stats()).toMatchObject({ ready: 1, delayed: 1 });
    const first = await a.queue.claim(timeout(10_000));
    expect(first.text).toBe('now');
    await first.ack();
    expect(await a.queue.tryClaim()).toBeUndefined();
    const second = await a.queue.claim(timeout(15_000));
    expect(second.text).toBe('later');
    expect(Date.now() - addedAt).toBeGreaterThanOrEqual(2000);
    expect(second.attempts).toBe(1);
    await second.ack();
  }, 30_000);

  it('work queue — process stops with session-lost when its session’s lease is revoked', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-session')}jobs`;
    await using a = await open(kv, name);
    let calls = 0;
    const run = a.queue.process(() => {
      calls++;
    });
    await a.queue.add('one');
    await waitFor(async () => calls === 1 && (await a.queue.stats()).ready === 0, 10_000, 'the first job');
    await kv.lease.revoke(a.session.lease);
    await expect(run).rejects.toSatisfy((e: unknown) => ConclaveError.is(e, 'session-lost'));
    await expect(a.queue.claim()).rejects.toSatisfy((e: unknown) => ConclaveError.is(e, 'session-lost'));
  }, 30_000);

  it('work queue — process resolves on a requested stop (signal or close()) once its running handler finished', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-stop')}jobs`;
    await using a = await open(kv, name);
    const stop = new AbortController();
    let finished = false;
    const run = a.queue.process(
      async () => {
        stop.abort(); // stop while a handler runs: process waits for it
        await sleep(200);
        finished = true;
      },
      { signal: stop.signal },
    );
    await a.queue.add('one');
    await expect(run).resolves.toBeUndefined();
    expect(finished).toBe(true);
    expect((await a.queue.stats()).inFlight).toBe(0); // the job was acked, not left claimed

    const byClose = a.queue.process(() => undefined);
    await sleep(100);
    await a.queue.close();
    await expect(byClose).resolves.toBeUndefined();
  }, 30_000);

  it('work queue — an aborted claim rejects with the reason and claims nothing', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('wq-abort')}jobs`;
    await using a = await open(kv, name);
    const ac = new AbortController();
    const reason = new Error('gave up');
    const waiting = a.queue.claim({ signal: ac.signal });
    await sleep(50);
    ac.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    await a.queue.add('still here');
    const job = await a.queue.claim(timeout(10_000));
    expect(job.text).toBe('still here');
    await job.ack();
    await a.queue.close();
    await expect(a.queue.claim()).rejects.toSatisfy((e: unknown) => ConclaveError.is(e, 'closed'));
  }, 30_000);
};
