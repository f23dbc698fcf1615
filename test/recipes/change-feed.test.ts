/** The bounded change fan-out behind every live view (recipes/internal/change-feed.ts). */
import { describe, expect, it } from 'vitest';
import { ChangeFeed } from '../../recipes/internal/change-feed.js';

const take = async <C>(it: AsyncGenerator<C>, n: number): Promise<C[]> => {
  const out: C[] = [];
  for (let i = 0; i < n; i++) {
    const r = await it.next();
    if (r.done) break;
    out.push(r.value);
  }
  return out;
};

describe('ChangeFeed', () => {
  it('delivers in order from the subscription on, to each iterator', async () => {
    const feed = new ChangeFeed<number>(8, () => []);
    feed.publish(0, undefined); // before anyone subscribed: nobody gets it
    const a = feed.subscribe(undefined);
    const b = feed.subscribe(undefined);
    for (let i = 1; i <= 3; i++) feed.publish(i, undefined);
    expect(await take(a, 3)).toEqual([1, 2, 3]);
    expect(await take(b, 3)).toEqual([1, 2, 3]);
    feed.end();
    expect((await a.next()).done).toBe(true);
  });

  it('an iterator past bufferedMax drops its backlog and reads one catch-up from what it last saw', async () => {
    // State = the last number published; the catch-up is "from seen to now".
    let now = 0;
    const feed = new ChangeFeed<string, number>(2, (seen) => [{ change: `${seen}->${now}`, after: now }]);
    const it = feed.subscribe(0);
    const publish = (n: number) => {
      now = n;
      feed.publish(`${n}`, n);
    };
    publish(1);
    expect(await take(it, 1)).toEqual(['1']);
    for (let n = 2; n <= 9; n++) publish(n); // 8 changes, buffer of 2: overflow
    expect(await take(it, 1)).toEqual(['1->9']);
    publish(10);
    expect(await take(it, 1)).toEqual(['10']);
    feed.end();
  });

  it('end(error) ends buffered iterators after their items, then throws; later subscribers end at once', async () => {
    const feed = new ChangeFeed<number>(8, () => []);
    const it = feed.subscribe(undefined);
    feed.publish(1, undefined);
    feed.end(new Error('boom'));
    expect(await it.next()).toEqual({ done: false, value: 1 });
    await expect(it.next()).rejects.toThrow('boom');
    await expect(feed.subscribe(undefined).next()).rejects.toThrow('boom');
  });

  it("aborting a subscriber's signal ends that iterator normally; others go on", async () => {
    const feed = new ChangeFeed<number>(8, () => []);
    const ac = new AbortController();
    const stopped = feed.subscribe(undefined, { signal: ac.signal });
    const other = feed.subscribe(undefined);
    const pending = stopped.next();
    ac.abort(new Error('stop'));
    expect(await pending).toEqual({ done: true, value: undefined });
    feed.publish(1, undefined);
    expect(await take(other, 1)).toEqual([1]);
    expect(feed.size).toBe(1);
  });

  it('first items come before published ones; a tagged publish reaches only that tag', async () => {
    const feed = new ChangeFeed<string>(8, () => []);
    const tagged = feed.subscribe(undefined, { tag: 't', first: [{ change: 'first', after: undefined }] });
    const plain = feed.subscribe(undefined);
    expect(feed.has('t')).toBe(true);
    feed.publish('only-t', undefined, 't');
    feed.publish('all', undefined);
    expect(await take(tagged, 3)).toEqual(['first', 'only-t', 'all']);
    expect(await take(plain, 1)).toEqual(['all']);
  });
});
