/**
 * Option names across the recipes: bounds are named `<what>Max`; the old names of renamed options
 * still work for one release, and both names given with different values are refused. The bounds
 * are public as one grouped `limits` object.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalKV } from '../../backends/raft/store/local-kv.js';
import * as root from '../../index.js';
import { limits } from '../../recipes/limits.js';
import { Topic } from '../../recipes/topic.js';
import { WorkQueue, workQueueAttemptsLimitMax } from '../../recipes/work-queue.js';
import { Session } from '../../src/session.js';

const invalid = expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' });

describe('renamed options', () => {
  let kv: LocalKV;
  let session: Session;
  beforeEach(async () => {
    kv = new LocalKV({ minTtlSeconds: 1 });
    session = await Session.create(kv, { ttlSeconds: 5 });
  });
  afterEach(async () => {
    await session.close();
    await kv.close();
  });

  it('WorkQueue: attemptsMax, and the deprecated maxAttempts, reach the queue, the item and its job', async () => {
    await using q = new WorkQueue(session, 'q1', { attemptsMax: 3 });
    expect(q.attemptsMax).toBe(3);
    expect(q.maxAttempts).toBe(3);
    await using old = new WorkQueue(session, 'q2', { maxAttempts: 2 });
    expect(old.attemptsMax).toBe(2);
    await old.add('a', { maxAttempts: 7 });
    await q.add('b', { attemptsMax: 4 });
    await q.add('c');
    const a = await old.claim({ signal: AbortSignal.timeout(5000) });
    expect([a.attemptsMax, a.maxAttempts]).toEqual([7, 7]);
    const b = await q.claim({ signal: AbortSignal.timeout(5000) });
    const c = await q.claim({ signal: AbortSignal.timeout(5000) });
    expect([b.attemptsMax, c.attemptsMax]).toEqual([4, 3]);
    for (const j of [a, b, c]) expect((await j.ack()).isOk()).toBe(true);
    expect(new WorkQueue(session, 'q3').attemptsMax).toBe(limits.workQueue.attemptsMaxDefault);
  });

  it('WorkQueue: both names with different values, or a value out of range, are refused', async () => {
    expect(() => new WorkQueue(session, 'q', { attemptsMax: 3, maxAttempts: 4 })).toThrow(invalid);
    expect(() => new WorkQueue(session, 'q', { attemptsMax: 3, maxAttempts: 4 })).toThrow(/disagree/);
    expect(new WorkQueue(session, 'q', { attemptsMax: 3, maxAttempts: 3 }).attemptsMax).toBe(3);
    expect(() => new WorkQueue(session, 'q', { attemptsMax: 0 })).toThrow(invalid);
    expect(() => new WorkQueue(session, 'q', { attemptsMax: workQueueAttemptsLimitMax + 1 })).toThrow(
      /attemptsMax must be an integer from 1/,
    );
    await using q = new WorkQueue(session, 'q');
    await expect(q.add('x', { attemptsMax: 1, maxAttempts: 2 })).rejects.toThrow(invalid);
  });

  it('Topic retention: eventsMax/ageMsMax, and the deprecated maxEvents/maxAgeMs, trim alike', async () => {
    for (const [name, retention] of [
      ['t-new', { eventsMax: 2 }],
      ['t-old', { maxEvents: 2 }],
    ] as const) {
      const t = new Topic(kv, name, { retention });
      for (const v of ['1', '2', '3', '4']) await t.publish(v);
      expect(await t.info()).toMatchObject({ oldestSeq: 3, lastSeq: 4 });
    }
    let now = 1_000_000;
    for (const [name, retention] of [
      ['a-new', { ageMsMax: 100 }],
      ['a-old', { maxAgeMs: 100 }],
    ] as const) {
      const t = new Topic(kv, name, { retention, now: () => now });
      await t.publish('old');
      now += 200;
      await t.publish('new');
      expect(await t.info()).toMatchObject({ oldestSeq: 2, lastSeq: 2 });
    }
    expect(() => new Topic(kv, 't', { retention: { eventsMax: 2, maxEvents: 3 } })).toThrow(invalid);
    expect(() => new Topic(kv, 't', { retention: { ageMsMax: 5, maxAgeMs: 6 } })).toThrow(invalid);
    expect(() => new Topic(kv, 't', { retention: { eventsMax: 0 } })).toThrow(invalid);
    expect(() => new Topic(kv, 't', { retention: { ageMsMax: -1 } })).toThrow(invalid);
  });
});

describe('limits', () => {
  it('the package root exports one grouped limits object, not the bound constants one by one', () => {
    expect(root.limits).toBe(limits);
    expect(limits.txnOpsMax).toBe(128);
    expect(limits.workQueue.attemptsLimitMax).toBe(workQueueAttemptsLimitMax);
    const names = Object.keys(root);
    expect(names.filter((n) => /(Max|Default|Digits)$/.test(n))).toEqual([]);
    // Every group holds only numbers (bounds and defaults).
    for (const [group, v] of Object.entries(limits))
      if (typeof v === 'object')
        for (const [k, n] of Object.entries(v)) expect(typeof n, `${group}.${k}`).toBe('number');
  });
});
