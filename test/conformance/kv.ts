import { expect, it } from 'vitest';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { RegisterTests } from './context.js';
import { keys, text, values } from './util.js';

export const registerKvTests: RegisterTests = (ctx) => {
  it('kv — put then get returns the value with create/mod revision and version 1', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('put-get')}a`;
    const r = await kv.put(k, 'v1');
    const got = await kv.get(k);
    expect(text(got?.value)).toBe('v1');
    expect(got?.createRevision).toBe(r.revision);
    expect(got?.modRevision).toBe(r.revision);
    expect(got?.version).toBe(1);
    expect(got?.lease).toBe(0n);
  });

  it('kv — each put bumps the revision by one and the version by one; create revision stays', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('bump')}a`;
    const r1 = await kv.put(k, '1');
    const r2 = await kv.put(k, '2');
    expect(r2.revision).toBe(r1.revision + 1);
    const got = await kv.get(k);
    expect(got?.version).toBe(2);
    expect(got?.createRevision).toBe(r1.revision);
    expect(got?.modRevision).toBe(r2.revision);
  });

  it('kv — a missing key reads as undefined and an empty range', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('missing');
    expect(await kv.get(`${p}nope`)).toBeUndefined();
    const r = await kv.range(`${p}nope`);
    expect(r.kvs).toEqual([]);
    expect(r.count).toBe(0);
    expect(r.more).toBe(false);
  });

  it('kv — values are binary-safe', async () => {
    const { kv, prefix } = ctx();
    const k = new TextEncoder().encode(`${prefix('binary')}\u0000k`);
    const v = new Uint8Array([0, 255, 1, 254, 0]);
    await kv.put(k, v);
    const got = await kv.get(k);
    expect(Array.from(got!.value)).toEqual(Array.from(v));
    expect(Array.from(got!.key)).toEqual(Array.from(k));
  });

  it('kv — delete of a missing key does not bump the revision', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('del-missing');
    const r0 = await kv.put(`${p}x`, 'x');
    const d = await kv.delete(`${p}nope`);
    expect(d.deleted).toBe(0);
    expect(d.revision).toBe(r0.revision);
  });

  it('kv — a delete resets version to 0 and the next put starts a new generation', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('gen')}a`;
    await kv.put(k, '1');
    await kv.put(k, '2');
    const d = await kv.delete(k, { prevKv: true });
    expect(d.deleted).toBe(1);
    expect(text(d.prevKvs[0]?.value)).toBe('2');
    const p = await kv.put(k, '3');
    expect(p.revision).toBe(d.revision + 1);
    const got = await kv.get(k);
    expect(got?.version).toBe(1);
    expect(got?.createRevision).toBe(p.revision);
    // The old generation is still readable at an old revision.
    const old = await kv.get(k, { revision: d.revision - 1 });
    expect(text(old?.value)).toBe('2');
    expect(old?.version).toBe(2);
    expect(await kv.get(k, { revision: d.revision })).toBeUndefined();
  });

  it('kv — put with prevKv returns the previous key-value (absent for a new key)', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('prevkv')}a`;
    const first = await kv.put(k, 'old', { prevKv: true });
    expect(first.prevKv).toBeUndefined();
    const second = await kv.put(k, 'new', { prevKv: true });
    expect(text(second.prevKv?.value)).toBe('old');
    expect(second.prevKv?.modRevision).toBe(first.revision);
  });

  it('kv — ignoreValue keeps the value, ignoreLease keeps the lease; both fail on a missing key', async () => {
    const { kv, prefix, backend } = ctx();
    const k = `${prefix('ignore')}a`;
    const lease = await kv.lease.grant(backend.minTtlSeconds + 5);
    await kv.put(k, 'keep', { lease: lease.id });
    await kv.put(k, '', { ignoreValue: true, lease: lease.id });
    expect(text((await kv.get(k))?.value)).toBe('keep');
    await kv.put(k, 'changed', { ignoreLease: true });
    const got = await kv.get(k);
    expect(text(got?.value)).toBe('changed');
    expect(got?.lease).toBe(lease.id);
    await expect(kv.put(`${k}-missing`, '', { ignoreValue: true })).rejects.toBeInstanceOf(ConclaveError);
    await expect(kv.put(`${k}-missing`, 'x', { ignoreLease: true })).rejects.toBeInstanceOf(ConclaveError);
    await kv.lease.revoke(lease.id);
  });

  it('kv — ignoreValue with a value, ignoreLease with a lease: invalid-argument (etcd: "value/lease is provided"), nothing written', async () => {
    const { kv, prefix, backend } = ctx();
    const k = `${prefix('ignore-provided')}a`;
    const lease = await kv.lease.grant(backend.minTtlSeconds + 5);
    const first = await kv.put(k, 'keep');
    const invalid = { code: ErrorCode.InvalidArgument };
    await expect(kv.put(k, 'x', { ignoreValue: true })).rejects.toMatchObject(invalid);
    await expect(kv.put(k, 'x', { ignoreLease: true, lease: lease.id })).rejects.toMatchObject(invalid);
    await expect(
      kv.txn({
        compare: [],
        success: [{ type: 'put', key: k, value: 'x', options: { ignoreValue: true } }],
        failure: [],
      }),
    ).rejects.toMatchObject(invalid);
    const got = await kv.get(k);
    expect(text(got?.value)).toBe('keep');
    expect(got?.modRevision).toBe(first.revision);
    expect(got?.lease).toBe(0n);
    // An empty value with ignoreValue, and lease 0 with ignoreLease, are what etcd accepts.
    await kv.put(k, '', { ignoreValue: true, ignoreLease: true, lease: 0n });
    expect(text((await kv.get(k))?.value)).toBe('keep');
    await kv.lease.revoke(lease.id);
  });

  it('kv — prefix, range end, "\\0" end and fromKey select the right keys in key order', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('ranges');
    for (const k of ['b', 'a', 'c', 'ca', 'd']) await kv.put(`${p}${k}`, k);
    expect(keys((await kv.range(p, { prefix: true })).kvs)).toEqual(
      ['a', 'b', 'c', 'ca', 'd'].map((k) => p + k),
    );
    expect(keys((await kv.range(`${p}b`, { end: `${p}ca` })).kvs)).toEqual([`${p}b`, `${p}c`]);
    const zero = await kv.range(`${p}c`, { end: '\0' });
    expect(keys(zero.kvs).filter((k) => k.startsWith(p))).toEqual([`${p}c`, `${p}ca`, `${p}d`]);
    const from = await kv.range(`${p}c`, { fromKey: true });
    expect(keys(from.kvs).filter((k) => k.startsWith(p))).toEqual([`${p}c`, `${p}ca`, `${p}d`]);
    expect(keys((await kv.range(`${p}c`, { prefix: true })).kvs)).toEqual([`${p}c`, `${p}ca`]);
  });

  it('kv — limit cuts kvs, count reports all matches, more says whether keys were cut', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('limit');
    for (const k of ['a', 'b', 'c', 'd']) await kv.put(`${p}${k}`, k);
    const r = await kv.range(p, { prefix: true, limit: 2 });
    expect(keys(r.kvs)).toEqual([`${p}a`, `${p}b`]);
    expect(r.count).toBe(4);
    expect(r.more).toBe(true);
    const all = await kv.range(p, { prefix: true, limit: 4 });
    expect(all.more).toBe(false);
    const none = await kv.range(p, { prefix: true, limit: 0 });
    expect(none.kvs.length).toBe(4);
  });

  it('kv — countOnly returns the count without kvs; keysOnly returns keys without values', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('count');
    for (const k of ['a', 'b', 'c']) await kv.put(`${p}${k}`, `value-${k}`);
    const c = await kv.range(p, { prefix: true, countOnly: true });
    expect(c.count).toBe(3);
    expect(c.kvs).toEqual([]);
    const ko = await kv.range(p, { prefix: true, keysOnly: true });
    expect(keys(ko.kvs)).toEqual([`${p}a`, `${p}b`, `${p}c`]);
    expect(ko.kvs.every((kv) => kv.value.length === 0)).toBe(true);
    expect(ko.kvs[0]?.version).toBe(1);
  });

  it('kv — sort by every target in both orders', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('sort');
    await kv.put(`${p}a`, 'z');
    await kv.put(`${p}b`, 'y');
    await kv.put(`${p}c`, 'x');
    await kv.put(`${p}a`, 'w'); // a: version 2, newest mod revision
    const by = async (target: 'key' | 'version' | 'create' | 'mod' | 'value', order: 'ascend' | 'descend') =>
      keys((await kv.range(p, { prefix: true, sort: { target, order } })).kvs).map((k) => k.slice(p.length));
    expect(await by('key', 'descend')).toEqual(['c', 'b', 'a']);
    expect(await by('create', 'ascend')).toEqual(['a', 'b', 'c']);
    expect(await by('create', 'descend')).toEqual(['c', 'b', 'a']);
    expect(await by('mod', 'ascend')).toEqual(['b', 'c', 'a']);
    expect(await by('mod', 'descend')).toEqual(['a', 'c', 'b']);
    expect(await by('value', 'ascend')).toEqual(['a', 'c', 'b']);
    expect(await by('value', 'descend')).toEqual(['b', 'c', 'a']);
    expect((await by('version', 'descend'))[0]).toBe('a');
    expect((await by('version', 'ascend'))[2]).toBe('a');
  });

  it('kv — sort with limit returns the first keys of the sorted order', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('sortlimit');
    for (const k of ['a', 'b', 'c']) await kv.put(`${p}${k}`, k);
    const r = await kv.range(p, { prefix: true, limit: 1, sort: { target: 'create', order: 'descend' } });
    expect(keys(r.kvs)).toEqual([`${p}c`]);
    expect(r.count).toBe(3);
    expect(r.more).toBe(true);
  });

  it('kv — min/max create and mod revision filters', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('filters');
    const ra = await kv.put(`${p}a`, 'a');
    const rb = await kv.put(`${p}b`, 'b');
    const rc = await kv.put(`${p}c`, 'c');
    await kv.put(`${p}a`, 'a2');
    const k = async (o: object) =>
      keys((await kv.range(p, { prefix: true, ...o })).kvs).map((x) => x.slice(p.length));
    expect(await k({ minCreateRevision: rb.revision })).toEqual(['b', 'c']);
    expect(await k({ maxCreateRevision: rb.revision })).toEqual(['a', 'b']);
    expect(await k({ minModRevision: rc.revision })).toEqual(['a', 'c']);
    expect(await k({ maxModRevision: rb.revision })).toEqual(['b']);
    expect(ra.revision).toBeLessThan(rb.revision);
  });

  it('kv — count ignores the create/mod revision filters (etcd counts the whole range)', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('count-filter');
    await kv.put(`${p}a`, 'a');
    const rb = await kv.put(`${p}b`, 'b');
    await kv.put(`${p}c`, 'c');
    const r = await kv.range(p, { prefix: true, maxCreateRevision: rb.revision });
    expect(keys(r.kvs)).toEqual([`${p}a`, `${p}b`]);
    expect(r.count).toBe(3);
    const limited = await kv.range(p, { prefix: true, minCreateRevision: rb.revision, limit: 1 });
    expect(keys(limited.kvs)).toEqual([`${p}b`]);
  });

  it('kv — reads at an old revision see the old state; the header revision is the current one', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('oldrev');
    const r1 = await kv.put(`${p}a`, '1');
    const r2 = await kv.put(`${p}a`, '2');
    await kv.put(`${p}b`, 'x');
    const old = await kv.range(p, { prefix: true, revision: r1.revision });
    expect(values(old.kvs)).toEqual(['1']);
    const now = await kv.range(p, { prefix: true });
    expect(values(now.kvs)).toEqual(['2', 'x']);
    expect(now.revision).toBeGreaterThanOrEqual(r2.revision + 1);
    expect(old.revision).toBe(now.revision);
  });

  it('kv — a read at a future revision fails with future-revision', async () => {
    const { kv, prefix } = ctx();
    const r = await kv.put(`${prefix('future')}a`, '1');
    await expect(kv.get(`${prefix('future')}a`, { revision: r.revision + 1000 })).rejects.toMatchObject({
      code: 'future-revision',
    });
  });

  it('kv — delete range with prevKv deletes every key in the range at one revision', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('delrange');
    for (const k of ['a', 'b', 'c']) await kv.put(`${p}${k}`, k);
    const before = await kv.range(p, { prefix: true });
    const d = await kv.delete(p, { prefix: true, prevKv: true });
    expect(d.deleted).toBe(3);
    expect(values(d.prevKvs)).toEqual(['a', 'b', 'c']);
    expect(d.revision).toBe(before.revision + 1);
    expect((await kv.range(p, { prefix: true })).count).toBe(0);
  });

  it('kv — the store revision is reported by status and never goes backwards', async () => {
    const { kv, prefix } = ctx();
    const s1 = await kv.status();
    const r = await kv.put(`${prefix('status')}a`, '1');
    const s2 = await kv.status();
    expect(r.revision).toBeGreaterThan(s1.revision);
    expect(s2.revision).toBeGreaterThanOrEqual(r.revision);
    expect(s2.version.length).toBeGreaterThan(0);
  });

  it('kv — compaction: reads below it fail with compacted, compacting again at or below fails, past current fails', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('compact');
    const r1 = await kv.put(`${p}a`, '1');
    const r2 = await kv.put(`${p}a`, '2');
    await kv.compact(r2.revision);
    await expect(kv.get(`${p}a`, { revision: r1.revision })).rejects.toMatchObject({ code: 'compacted' });
    expect(text((await kv.get(`${p}a`, { revision: r2.revision }))?.value)).toBe('2');
    await expect(kv.compact(r2.revision)).rejects.toMatchObject({ code: 'compacted' });
    await expect(kv.compact(r1.revision)).rejects.toMatchObject({ code: 'compacted' });
    const s = await kv.status();
    await expect(kv.compact(s.revision + 1000)).rejects.toMatchObject({ code: 'future-revision' });
  });

  it('kv — a closed client refuses calls with code closed', async () => {
    const { newKv, prefix } = ctx();
    const k2 = await newKv();
    await k2.close();
    await k2.close(); // idempotent
    await expect(k2.get(`${prefix('closed')}a`)).rejects.toMatchObject({ code: 'closed' });
  });

  it('kv — an aborted signal rejects the call with its reason', async () => {
    const { kv, prefix } = ctx();
    const reason = new Error('stop');
    await expect(kv.get(`${prefix('abort')}a`, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });
};
