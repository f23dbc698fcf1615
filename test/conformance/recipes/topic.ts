import { expect, it } from 'vitest';
import { Topic } from '../../../recipes/topic.js';
import type { Subscription } from '../../../recipes/topic-subscription.js';
import { isTopicTrimmed, type TopicEvent } from '../../../recipes/topic-types.js';
import type { ConclaveError } from '../../../src/errors.js';
import { toBytes, toText } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import type { RegisterTests } from '../context.js';

/** Generous: the machine is shared, and the etcd suite runs through real gRPC. */
const waitMs = 20_000;

/** The next `n` events of an iterator, failing after `timeoutMs`. */
async function take(it: AsyncIterator<TopicEvent>, n: number, timeoutMs = waitMs): Promise<TopicEvent[]> {
  const out: TopicEvent[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<'timeout'>(
      (r) => (timer = setTimeout(() => r('timeout'), deadline - Date.now())),
    );
    const r = await Promise.race([it.next(), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') throw new Error(`timed out with ${out.length} of ${n} events`);
    if (r.done) throw new Error(`the subscription ended after ${out.length} of ${n} events`);
    out.push(r.value);
  }
  return out;
}

/** Whether the iterator yields nothing more within `ms` (used only after the expected events). */
async function quiet(it: AsyncIterator<TopicEvent>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    it.next().then(() => false),
    new Promise<true>((res) => (timer = setTimeout(() => res(true), ms))),
  ]);
  clearTimeout(timer);
  return r;
}

const texts = (evs: TopicEvent[]): string[] => evs.map((e) => toText(e.value));
const seqs = (evs: TopicEvent[]): number[] => evs.map((e) => e.seq);
const range = (from: number, to: number): number[] =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function publishAll(topic: Topic, values: string[]): Promise<void> {
  for (const v of values) await topic.publish(v);
}

/** Conformance tests of Topic; run on every backend. */
export const registerTopicTests: RegisterTests = (ctx) => {
  it('topic — every subscriber sees every event once, in publish order, with concurrent publishers', async () => {
    const { prefix, newKv } = ctx();
    const name = `${prefix('topic-fanout')}t`;
    const publishers = 3;
    const perPublisher = 12;
    const total = publishers * perPublisher;
    const subs: Subscription[] = [];
    for (let i = 0; i < 3; i++) subs.push(await new Topic(await newKv(), name).subscribe());
    const received = subs.map((s) => take(s[Symbol.asyncIterator](), total));
    const published = await Promise.all(
      Array.from({ length: publishers }, async (_, p) => {
        const topic = new Topic(await newKv(), name);
        const out: { seq: number; revision: number; value: string }[] = [];
        for (let j = 0; j < perPublisher; j++) {
          const value = `p${p}-${j}`;
          out.push({ ...(await topic.publish(value)), value });
        }
        return out;
      }),
    );
    const got = await Promise.all(received);
    for (const s of subs) await s.close();

    // Global publish order: the order in which the store committed the publishes.
    const byCommit = published.flat().sort((a, b) => a.revision - b.revision);
    expect(byCommit.map((p) => p.seq)).toEqual(range(1, total));
    for (const evs of got) {
      expect(seqs(evs)).toEqual(range(1, total));
      expect(texts(evs)).toEqual(byCommit.map((p) => p.value));
      expect(evs.map((e) => e.revision)).toEqual(byCommit.map((p) => p.revision));
      // Each publisher's own order is preserved.
      for (let p = 0; p < publishers; p++) {
        const mine = texts(evs).filter((v) => v.startsWith(`p${p}-`));
        expect(mine).toEqual(Array.from({ length: perPublisher }, (_, j) => `p${p}-${j}`));
      }
    }
  });

  it('topic — a durable subscriber restarted mid-stream resumes without gaps or repeats', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('topic-durable')}t`;
    const topic = new Topic(kv, name);
    await publishAll(topic, ['a', 'b', 'c', 'd', 'e', 'f']);

    const first = await new Topic(await newKv(), name).subscribe({ subscriber: 'billing', from: 'oldest' });
    expect(await topic.cursor('billing')).toBe(0); // stored at subscribe, before any ack
    const it1 = first[Symbol.asyncIterator]();
    const seen: TopicEvent[] = [];
    for (const ev of await take(it1, 4)) {
      seen.push(ev);
      await first.ack(ev.seq);
    }
    // Publishing goes on while the subscriber is down.
    const more = publishAll(topic, ['g', 'h', 'i']);
    await first.close();
    expect(await it1.next()).toEqual({ done: true, value: undefined });
    await more;
    expect(await topic.cursor('billing')).toBe(4);

    const second = await new Topic(await newKv(), name).subscribe({ subscriber: 'billing', from: 'oldest' });
    expect(second.startSeq).toBe(5);
    const it2 = second[Symbol.asyncIterator]();
    seen.push(...(await take(it2, 5)));
    await topic.publish('j');
    seen.push(...(await take(it2, 1)));
    expect(texts(seen)).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']);
    expect(seqs(seen)).toEqual(range(1, 10));
    await second.ack();
    await second.close();
    expect(await topic.cursor('billing')).toBe(10);
  });

  it('topic — autoAck acknowledges finished events; the event in hand at a break is delivered again', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-autoack')}t`;
    const topic = new Topic(kv, name);
    await publishAll(topic, ['a', 'b', 'c', 'd', 'e']);
    const got: string[] = [];
    {
      await using sub = await topic.subscribe({ subscriber: 's', from: 'oldest', autoAck: true });
      for await (const ev of sub) {
        got.push(toText(ev.value));
        if (ev.seq === 3) break; // 'c' is in hand: not acknowledged (at-least-once)
      }
    }
    expect(await topic.cursor('s')).toBe(2);
    {
      await using sub = await topic.subscribe({ subscriber: 's', autoAck: true });
      for await (const ev of sub) {
        got.push(toText(ev.value));
        if (ev.seq === 5) {
          await sub.ack(ev.seq); // an explicit ack before leaving makes the last one final
          break;
        }
      }
    }
    expect(got).toEqual(['a', 'b', 'c', 'c', 'd', 'e']);
    expect(await topic.cursor('s')).toBe(5);
  });

  it('topic — a durable subscriber resumes after the history it consumed was compacted', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-compact')}t`;
    const topic = new Topic(kv, name);
    await publishAll(topic, ['1', '2', '3', '4', '5', '6']);
    const sub = await topic.subscribe({ subscriber: 'audit', from: 'oldest' });
    const it1 = sub[Symbol.asyncIterator]();
    for (const ev of await take(it1, 4)) await sub.ack(ev.seq);
    await sub.close();
    await publishAll(topic, ['7', '8']);
    // Compact all history, including every revision the subscriber consumed or will consume.
    const { revision } = await kv.status();
    await kv.compact(revision, { physical: true });
    await expect(kv.range(`${name}/events/`, { revision: revision - 1 })).rejects.toMatchObject({
      code: 'compacted',
    });

    await using again = await topic.subscribe({ subscriber: 'audit' });
    const it2 = again[Symbol.asyncIterator]();
    expect(texts(await take(it2, 4))).toEqual(['5', '6', '7', '8']);
    // Live delivery continues after the compaction too.
    await topic.publish('9');
    expect(texts(await take(it2, 1))).toEqual(['9']);
  });

  it('topic — a subscription whose watch start was compacted re-reads by key and misses nothing', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('topic-watch-compact')}t`;
    const topic = new Topic(kv, name);
    await topic.publish('a');
    // A client on which, right after the subscription's first page read, two more events are
    // published and all history is compacted: the watch it then opens starts below compaction.
    const base = await newKv();
    let fired = false;
    const racing = new Proxy(base, {
      get(target, prop) {
        if (prop === 'txn') {
          return async (...args: Parameters<KV['txn']>) => {
            const r = await target.txn(...args);
            const first = args[0].success[0];
            if (!fired && first?.type === 'get' && toText(toBytes(first.key)).includes('/events/')) {
              fired = true;
              await publishAll(topic, ['b', 'c']);
              const { revision } = await kv.status();
              await kv.compact(revision, { physical: true });
            }
            return r;
          };
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await using sub = await new Topic(racing, name).subscribe({ from: 'oldest' });
    const it1 = sub[Symbol.asyncIterator]();
    expect(texts(await take(it1, 3))).toEqual(['a', 'b', 'c']);
    expect(fired).toBe(true);
    await topic.publish('d');
    expect(texts(await take(it1, 1))).toEqual(['d']);
    expect(await quiet(it1, 200)).toBe(true);
  });

  it('topic — retention by count trims, and a lagging subscriber is told the oldest retained seq', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-count')}t`;
    const topic = new Topic(kv, name, { retention: { eventsMax: 5 } });
    // A durable subscriber that reads two events, then goes away.
    const offline = await topic.subscribe({ subscriber: 'slow', from: 'oldest' });
    const early = await topic.publish('e1');
    await topic.publish('e2');
    const it0 = offline[Symbol.asyncIterator]();
    for (const ev of await take(it0, 2)) await offline.ack(ev.seq);
    await offline.close();
    // A live subscriber whose consumer stalls in the middle of reading pages (one event per page).
    const live = await topic.subscribe({ from: 'oldest', pageEventsMax: 1 });
    const it1 = live[Symbol.asyncIterator]();
    expect(seqs(await take(it1, 1))).toEqual([1]);
    // A subscription that is open but never read yet, positioned at 3.
    const idle = await topic.subscribe({ from: 3 });
    await publishAll(
      topic,
      range(3, 20).map((i) => `e${i}`),
    );
    expect(await topic.info()).toMatchObject({ oldestSeq: 16, lastSeq: 20 });
    const stored = await kv.range(`${name}/events/`, { end: `${name}/events/:` });
    expect(stored.count).toBe(5);

    // The stalled consumer's next read finds its position trimmed and learns where to resume.
    const err = await take(it1, 1).catch((e: unknown) => e);
    expect(isTopicTrimmed(err)).toBe(true);
    expect((err as ConclaveError).details).toMatchObject({ oldestSeq: 16, requestedSeq: 2 });
    expect((err as ConclaveError).message).toMatch(/oldest retained event is seq 16/);
    expect((err as ConclaveError).retryable).toBe(false);
    await live.close();
    const idleErr = await take(idle[Symbol.asyncIterator](), 1).catch((e: unknown) => e);
    expect(isTopicTrimmed(idleErr) && idleErr.details).toMatchObject({ oldestSeq: 16, requestedSeq: 3 });
    await idle.close();

    // Re-subscribing from the cursor, a trimmed seq or a trimmed revision fails the same way.
    for (const opts of [{ subscriber: 'slow' }, { from: 10 }, { from: { revision: early.revision } }]) {
      const e = await topic.subscribe(opts).catch((x: unknown) => x);
      expect(isTopicTrimmed(e) && e.details.oldestSeq).toBe(16);
    }
    const cursorErr = await topic.subscribe({ subscriber: 'slow' }).catch((x: unknown) => x);
    expect((cursorErr as ConclaveError).details).toMatchObject({ requestedSeq: 3, subscriber: 'slow' });
    expect((cursorErr as ConclaveError).message).toMatch(/setCursor\("slow", 15\)/);
    // The subscriber accepts the loss and resumes where it is told to.
    await topic.setCursor('slow', 15);
    await using resumed = await topic.subscribe({ subscriber: 'slow' });
    expect(texts(await take(resumed[Symbol.asyncIterator](), 5))).toEqual([
      'e16',
      'e17',
      'e18',
      'e19',
      'e20',
    ]);
  });

  it("topic — retention by age removes events older than ageMsMax by the publishers' clock", async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-age')}t`;
    let nowMs = 1_000_000;
    const topic = new Topic(kv, name, { retention: { ageMsMax: 500 }, now: () => nowMs });
    await publishAll(topic, ['old1', 'old2', 'old3']);
    nowMs += 400;
    await topic.publish('mid');
    expect(await topic.info()).toMatchObject({ oldestSeq: 1, lastSeq: 4 });
    nowMs += 200; // the first three are now 600 ms old, 'mid' 200 ms
    await topic.publish('new');
    expect(await topic.info()).toMatchObject({ oldestSeq: 4, lastSeq: 5 });

    await using sub = await topic.subscribe({ from: 'oldest' });
    const events = await take(sub[Symbol.asyncIterator](), 2);
    expect(texts(events)).toEqual(['mid', 'new']);
    expect(events.map((e) => e.publishedAtMs)).toEqual([1_000_400, 1_000_600]);

    // With no publisher, trim() applies the bound.
    nowMs += 1000;
    expect(await topic.trim()).toBe(2);
    expect(await topic.info()).toMatchObject({ oldestSeq: 6, lastSeq: 5 });
    const e = await topic.subscribe({ from: 5 }).catch((x: unknown) => x);
    expect(isTopicTrimmed(e) && e.details.oldestSeq).toBe(6);
  });

  it('topic — subscribing from a revision starts at the first event published at or after it', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-rev')}t`;
    const topic = new Topic(kv, name);
    const published = [];
    for (const v of ['a', 'b', 'c', 'd', 'e', 'f', 'g']) published.push(await topic.publish(v));
    await kv.put(`${prefix('topic-rev-other')}x`, 'unrelated'); // a revision with no event
    for (const [i, p] of published.entries()) {
      await using sub = await topic.subscribe({ from: { revision: p.revision } });
      expect(sub.startSeq).toBe(i + 1);
    }
    const between = await topic.subscribe({ from: { revision: published[2]!.revision + 1 } });
    expect(between.startSeq).toBe(4);
    await between.close();
    const { revision } = await kv.status();
    await using future = await topic.subscribe({ from: { revision: revision + 1 } });
    expect(future.startSeq).toBe(8);
    await topic.publish('h');
    expect(texts(await take(future[Symbol.asyncIterator](), 1))).toEqual(['h']);
  });

  it('topic — a consumer slower than its buffers misses nothing: the subscription re-reads by key', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('topic-slow')}t`;
    const publisher = new Topic(kv, name);
    await using sub = await new Topic(await newKv(), name).subscribe({
      watchBatchesMax: 1,
      pageEventsMax: 3,
    });
    const it1 = sub[Symbol.asyncIterator]();
    await publisher.publish('x0');
    expect(texts(await take(it1, 1))).toEqual(['x0']); // caught up: the subscription is watching
    // Not reading while 40 events (40 revisions) arrive: far more than one buffered batch.
    await publishAll(
      publisher,
      range(1, 40).map((i) => `x${i}`),
    );
    const rest = await take(it1, 40);
    expect(seqs(rest)).toEqual(range(2, 41));
    expect(await quiet(it1, 200)).toBe(true);
  });

  it('topic — aborting the signal ends the subscription normally, as close() does', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-abort')}t`;
    const topic = new Topic(kv, name);
    const ac = new AbortController();
    const sub = await topic.subscribe({ signal: ac.signal, subscriber: 'a', autoAck: true });
    const got: string[] = [];
    const loop = (async () => {
      for await (const ev of sub) got.push(toText(ev.value));
      return 'ended';
    })().catch((e: unknown) => e);
    await topic.publish('one');
    await topic.publish('two');
    const deadline = Date.now() + waitMs;
    while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(got).toEqual(['one', 'two']);
    const reason = new Error('shutting down');
    ac.abort(reason);
    // A requested stop is not an error: the loop ends without throwing.
    expect(await loop).toBe('ended');
    await sub.close(); // idempotent after the abort
    await topic.publish('three');
    expect(got).toEqual(['one', 'two']);
    // autoAck acknowledged both finished events before the subscription ended.
    expect(await topic.cursor('a')).toBe(2);

    // An aborted signal rejects subscribe() itself with the reason.
    await expect(topic.subscribe({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);

    // close() from elsewhere ends a waiting iteration normally.
    const other = await topic.subscribe();
    const it2 = other[Symbol.asyncIterator]();
    const pending = it2.next();
    await other.close();
    expect(await pending).toEqual({ done: true, value: undefined });
  });

  it('topic — a durable subscribe aborted after it stored the new cursor removes it again', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-abort-cursor')}t`;
    const ac = new AbortController();
    const reason = new Error('gave up');
    // The signal fires just after the store applied the new subscriber's cursor.
    const aborting = new Proxy(kv, {
      get(target, prop) {
        if (prop === 'txn')
          return async (...args: Parameters<KV['txn']>) => {
            const r = await target.txn(...args);
            const put = args[0].success[0];
            if (put?.type === 'put' && String(put.key).includes('/cursors/')) ac.abort(reason);
            return r;
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const topic = new Topic(aborting, name);
    await publishAll(topic, ['a', 'b', 'c']);
    await expect(topic.subscribe({ subscriber: 's', from: 'next', signal: ac.signal })).rejects.toBe(reason);
    expect(await topic.cursor('s')).toBeUndefined();
    // A later subscription under that name starts where it asks to, not where the aborted one would have.
    await using sub = await topic.subscribe({ subscriber: 's', from: 1 });
    expect(seqs(await take(sub[Symbol.asyncIterator](), 3))).toEqual([1, 2, 3]);
  });

  it('topic — misuse fails clearly: ack without a subscriber name, a seq beyond the next', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('topic-misuse')}t`;
    const topic = new Topic(kv, name);
    await topic.publish('a');
    await using sub = await topic.subscribe({ from: 1 });
    await expect(sub.ack(1)).rejects.toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' });
    await expect(topic.subscribe({ from: 5 })).rejects.toMatchObject({ code: 'invalid-argument' });
    await expect(topic.subscribe({ subscriber: '' })).rejects.toMatchObject({
      name: 'ConclaveError',
      code: 'invalid-argument',
    });
    const durable = await topic.subscribe({ subscriber: 'd', from: 1 });
    await expect(durable.ack(1)).rejects.toThrow(/last delivered \(0\)/);
    expect(() => new Topic(kv, '')).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
    expect(() => new Topic(kv, name, { retention: { eventsMax: 0 } })).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
    await durable.close();
  });
};
