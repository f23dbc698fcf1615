import { expect, it } from 'vitest';
import { PriorityQueue, Queue, type QueueItem } from '../../../recipes/queue.js';
import { toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import type { RegisterTests } from '../context.js';
import { afterFirstRead, keys } from '../util.js';

/** A KV whose `watch()` calls are reported once the server accepted them (the dequeue is waiting). */
function watchReporting(kv: KV): { kv: KV; watching: () => Promise<void> } {
  let notify: () => void = () => {};
  let next = new Promise<void>((r) => (notify = r));
  const proxy = new Proxy(kv, {
    get(target, prop) {
      if (prop === 'watch') {
        return (...args: Parameters<KV['watch']>) => {
          const w = target.watch(...args);
          void w.ready.then(() => {
            notify();
            next = new Promise<void>((r) => (notify = r));
          });
          return w;
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { kv: proxy, watching: () => next };
}

interface Received {
  readonly consumer: number;
  readonly value: string;
}

/** Asserts every expected value arrived exactly once, and each consumer saw each producer's items in order. */
function expectExactlyOnceInProducerOrder(
  got: Received[][],
  expected: string[],
  orderKey: (v: string) => string,
) {
  const all = got.flat().map((r) => r.value);
  expect(all.length).toBe(expected.length);
  expect(new Set(all).size).toBe(all.length);
  expect([...all].sort()).toEqual([...expected].sort());
  for (const mine of got) {
    const last = new Map<string, number>();
    for (const { value } of mine) {
      const [group, index] = [orderKey(value), Number(value.split('-').at(-1))];
      expect(index, `${value} after ${last.get(group)}`).toBeGreaterThan(last.get(group) ?? -1);
      last.set(group, index);
    }
  }
}

/** Conformance tests of Queue and PriorityQueue; run on every backend. */
export const registerQueueTests: RegisterTests = (ctx) => {
  /** Consumers on their own clients, taking items until `total` arrived while producers run. */
  async function consume(
    consumers: number,
    total: number,
    open: (kv: KV) => { dequeue(o: { signal: AbortSignal }): Promise<QueueItem> },
    produce: () => Promise<void>,
  ): Promise<Received[][]> {
    const stop = new AbortController();
    const got: Received[][] = Array.from({ length: consumers }, () => []);
    let count = 0;
    const kvs = await Promise.all(got.map(() => ctx().newKv()));
    const loops = got.map(async (mine, c) => {
      const q = open(kvs[c]!);
      try {
        for (;;) {
          const item = await q.dequeue({ signal: stop.signal });
          mine.push({ consumer: c, value: item.text() });
          if (++count === total) stop.abort(new Error('all items received'));
        }
      } catch (err) {
        if (err !== stop.signal.reason) throw err;
      }
    });
    await produce();
    await Promise.all(loops);
    return got;
  }

  it('queue — 4 producers × 4 consumers: every item is delivered exactly once, in FIFO order per producer', async () => {
    const { prefix, newKv } = ctx();
    const name = `${prefix('q-nxm')}jobs`;
    const perProducer = 25;
    const expected = [0, 1, 2, 3].flatMap((p) => Array.from({ length: perProducer }, (_, i) => `p${p}-${i}`));
    const producers = await Promise.all([0, 1, 2, 3].map(() => newKv()));
    const got = await consume(
      4,
      expected.length,
      (kv) => new Queue(kv, name),
      async () => {
        await Promise.all(
          producers.map(async (kv, p) => {
            const q = new Queue(kv, name);
            for (let i = 0; i < perProducer; i++) await q.enqueue(`p${p}-${i}`);
          }),
        );
      },
    );
    expectExactlyOnceInProducerOrder(got, expected, (v) => v.split('-')[0]!);
    expect((await new Queue(ctx().kv, name).tryDequeue()).isErr()).toBe(true);
  }, 60_000);

  it('queue — one consumer receives the items in the order they were enqueued', async () => {
    const { kv, prefix } = ctx();
    const q = new Queue(kv, `${prefix('q-fifo')}jobs`);
    const sent = Array.from({ length: 12 }, (_, i) => `item-${i}`);
    for (const v of sent) await q.enqueue(v);
    const out: string[] = [];
    for (let r = await q.tryDequeue(); r.isOk(); r = await q.tryDequeue()) out.push(r.value.text());
    expect(out).toEqual(sent);
  });

  it('queue — a waiting dequeue receives an item that another client enqueues later', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('q-wait')}jobs`;
    const r = watchReporting(kv);
    const waiting = r.watching();
    const pending = new Queue(r.kv, name).dequeue({ signal: AbortSignal.timeout(20_000) });
    await waiting;
    const written = await new Queue(await newKv(), name).enqueue(new Uint8Array([0, 1, 255]));
    const item = await pending;
    expect([...item.value]).toEqual([0, 1, 255]);
    expect(item.key).toBe(written.key);
    expect(item.createRevision).toBe(written.revision);
    expect(item.revision).toBeGreaterThan(written.revision);
    expect((await kv.range(`${name}/`, { prefix: true })).count).toBe(0);
  });

  it('queue — an aborted dequeue rejects with signal.reason and consumes nothing', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('q-abort')}jobs`;
    const q = new Queue(kv, name);

    // Aborted while waiting on an empty queue.
    const r = watchReporting(kv);
    const ac = new AbortController();
    const waiting = r.watching();
    const pending = new Queue(r.kv, name).dequeue({ signal: ac.signal });
    await waiting;
    const reason = new Error('caller gave up');
    ac.abort(reason);
    await expect(pending).rejects.toBe(reason);

    // Aborted before it started, with an item present: the item stays.
    await q.enqueue('kept');
    const before = new AbortController();
    before.abort(reason);
    await expect(q.dequeue({ signal: before.signal })).rejects.toBe(reason);
    const left = await q.tryDequeue();
    expect(left.isOk() && left.value.text()).toBe('kept');
    expect((await q.tryDequeue()).isErr()).toBe(true);
  });

  it('queue — a dequeue whose watch start revision was compacted re-reads and takes the item', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('q-compact')}jobs`;
    let fired = false;
    // After the dequeue's first (empty) read: an item arrives and history past it is compacted,
    // so the watch from after the read fails `compacted`.
    const compacting = afterFirstRead(kv, async () => {
      fired = true;
      await new Queue(kv, name).enqueue('survivor');
      const { revision } = await kv.put(`${name}-other`, 'bump');
      await kv.compact(revision);
    });
    const item = await new Queue(compacting, name).dequeue({ signal: AbortSignal.timeout(20_000) });
    expect(fired).toBe(true);
    expect(item.text()).toBe('survivor');
  });

  it('queue — tryDequeue on an empty queue is Err with the revision it saw empty', async () => {
    const { kv, prefix } = ctx();
    const q = new Queue(kv, `${prefix('q-empty')}jobs`);
    const { revision } = await kv.put(`${prefix('q-empty-marker')}x`, '');
    const r = await q.tryDequeue();
    expect(r.isErr()).toBe(true);
    expect(r.isErr() && r.error.revision).toBeGreaterThanOrEqual(revision);
  });

  it('queue — keys are name/<unix nanos> and items are taken by mod revision, as etcd Go recipe.Queue', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('q-layout')}jobs`;
    const q = new Queue(kv, name);
    const before = BigInt(Date.now()) * 1_000_000n;
    const a = await q.enqueue('a');
    const after = BigInt(Date.now() + 1) * 1_000_000n;
    const raw = (await kv.range(`${name}/`, { prefix: true })).kvs;
    expect(keys(raw)).toEqual([a.key]);
    expect(toText(raw[0]!.value)).toBe('a');
    const nanos = BigInt(a.key.slice(name.length + 1));
    expect(a.key).toMatch(/\/\d+$/);
    expect(nanos >= before && nanos <= after).toBe(true);

    // Items written by a Go client: the key text does not order the queue, the mod revision does.
    await kv.put(`${name}/9`, 'go-first');
    await kv.put(`${name}/1`, 'go-second');
    const out: string[] = [];
    for (let r = await q.tryDequeue(); r.isOk(); r = await q.tryDequeue()) out.push(r.value.text());
    expect(out).toEqual(['a', 'go-first', 'go-second']);
  });

  it('priority queue — lower priority numbers come first, FIFO within one priority', async () => {
    const { kv, prefix } = ctx();
    const q = new PriorityQueue(kv, `${prefix('pq-order')}tasks`);
    const sent: Array<[string, number]> = [
      ['c', 5],
      ['a', 1],
      ['d', 5],
      ['last', 65_535],
      ['b', 1],
      ['first', 0],
      ['e', 5],
    ];
    for (const [v, p] of sent) await q.enqueue(v, p);
    const out: Array<[string, number]> = [];
    for (let r = await q.tryDequeue(); r.isOk(); r = await q.tryDequeue())
      out.push([r.value.text(), r.value.priority]);
    expect(out).toEqual([
      ['first', 0],
      ['a', 1],
      ['b', 1],
      ['c', 5],
      ['d', 5],
      ['e', 5],
      ['last', 65_535],
    ]);
  });

  it('priority queue — a waiting dequeue takes the most urgent of items enqueued in one txn', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('pq-wait')}tasks`;
    const r = watchReporting(kv);
    const waiting = r.watching();
    const pending = new PriorityQueue(r.kv, name).dequeue({ signal: AbortSignal.timeout(20_000) });
    await waiting;
    await kv.txn({
      compare: [],
      success: [
        { type: 'put', key: `${name}/00009/0000000000000000`, value: 'later' },
        { type: 'put', key: `${name}/00002/0000000000000000`, value: 'urgent' },
      ],
      failure: [],
    });
    const item = await pending;
    expect([item.text(), item.priority]).toEqual(['urgent', 2]);
    const rest = await new PriorityQueue(kv, name).tryDequeue();
    expect(rest.isOk() && rest.value.text()).toBe('later');
  });

  it('priority queue — 4 producers × 4 consumers on shared priorities: exactly once, FIFO per producer and priority', async () => {
    const { prefix, newKv } = ctx();
    const name = `${prefix('pq-nxm')}tasks`;
    const perProducer = 15;
    const pr = (i: number) => i % 3;
    const expected = [0, 1, 2, 3].flatMap((p) =>
      Array.from({ length: perProducer }, (_, i) => `p${p}-pr${pr(i)}-${i}`),
    );
    const producers = await Promise.all([0, 1, 2, 3].map(() => newKv()));
    const got = await consume(
      4,
      expected.length,
      (kv) => new PriorityQueue(kv, name),
      async () => {
        await Promise.all(
          producers.map(async (kv, p) => {
            const q = new PriorityQueue(kv, name);
            for (let i = 0; i < perProducer; i++) await q.enqueue(`p${p}-pr${pr(i)}-${i}`, pr(i));
          }),
        );
      },
    );
    expectExactlyOnceInProducerOrder(got, expected, (v) => v.split('-').slice(0, 2).join('-'));
  }, 60_000);

  it('priority queue — concurrent producers of one priority get consecutive, distinct sequence numbers', async () => {
    const { prefix, newKv } = ctx();
    const name = `${prefix('pq-seq')}tasks`;
    const producers = await Promise.all([0, 1, 2, 3].map(() => newKv()));
    const written = await Promise.all(
      producers.map(async (kv, p) => {
        const q = new PriorityQueue(kv, name);
        const mine: string[] = [];
        for (let i = 0; i < 10; i++) mine.push((await q.enqueue(`p${p}-${i}`, 4)).key);
        return mine;
      }),
    );
    const all = written.flat().sort();
    expect(all).toEqual(Array.from({ length: 40 }, (_, i) => `${name}/00004/${String(i).padStart(16, '0')}`));
    for (const mine of written) expect(mine).toEqual([...mine].sort()); // each producer's items in its order
    expect(keys((await ctx().kv.range(`${name}/`, { prefix: true })).kvs)).toEqual(all);
  });

  it('priority queue — keys are name/%05d/%016d beside a __name/%05d base key, as etcd Go recipe.PriorityQueue', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('pq-layout')}tasks`;
    const q = new PriorityQueue(kv, name);
    const a = await q.enqueue('a', 3);
    const b = await q.enqueue('b', 3);
    expect([a.key, b.key]).toEqual([`${name}/00003/0000000000000000`, `${name}/00003/0000000000000001`]);
    const base = await kv.get(`__${name}/00003`);
    expect(base?.value.length).toBe(0);
    expect(base?.modRevision).toBe(b.revision);

    // A Go producer left sequence 41 at priority 7: the next one is 42.
    await kv.txn({
      compare: [],
      success: [
        { type: 'put', key: `__${name}/00007`, value: '' },
        { type: 'put', key: `${name}/00007/0000000000000041`, value: 'go' },
      ],
      failure: [],
    });
    const c = await q.enqueue('c', 7);
    expect(c.key).toBe(`${name}/00007/0000000000000042`);
    const out: string[] = [];
    for (let r = await q.tryDequeue(); r.isOk(); r = await q.tryDequeue()) out.push(r.value.key);
    expect(out).toEqual([a.key, b.key, `${name}/00007/0000000000000041`, c.key]);
  });

  it('priority queue — a priority outside 0..65535 or not an integer is refused with invalid-argument', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('pq-invalid')}tasks`;
    const q = new PriorityQueue(kv, name);
    for (const p of [-1, 65_536, 1.5, Number.NaN, '3' as unknown as number])
      await expect(q.enqueue('x', p)).rejects.toMatchObject({
        name: 'ConclaveError',
        code: 'invalid-argument',
      });
    expect((await kv.range(`${name}/`, { prefix: true })).count).toBe(0);
    expect(() => new Queue(kv, '')).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
  });
};
