import { expect, it } from 'vitest';
import type { Compare, Op } from '../../src/types.js';
import type { RegisterTests } from './context.js';
import { text } from './util.js';

export const registerTxnTests: RegisterTests = (ctx) => {
  it('txn — a txn with several writes bumps the revision once; its ops share it', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-once');
    const before = await kv.put(`${p}seed`, 's');
    const t = await kv.txn({
      compare: [],
      success: [
        { type: 'put', key: `${p}a`, value: '1' },
        { type: 'put', key: `${p}b`, value: '2' },
        { type: 'delete', key: `${p}seed` },
      ],
      failure: [],
    });
    expect(t.succeeded).toBe(true);
    expect(t.revision).toBe(before.revision + 1);
    expect((await kv.get(`${p}a`))?.modRevision).toBe(t.revision);
    expect((await kv.get(`${p}b`))?.modRevision).toBe(t.revision);
  });

  it('txn — a txn that changes nothing does not bump the revision', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-noop');
    const r = await kv.put(`${p}a`, '1');
    const t = await kv.txn({
      compare: [],
      success: [
        { type: 'get', key: `${p}a` },
        { type: 'delete', key: `${p}missing` },
      ],
      failure: [],
    });
    expect(t.revision).toBe(r.revision);
    const get = t.responses[0];
    expect(get?.type).toBe('get');
    if (get?.type === 'get') expect(text(get.kvs[0]?.value)).toBe('1');
  });

  it('txn — a VALUE compare on a missing key is false; version/create/mod of a missing key compare as 0', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('txn-missing')}k`;
    const ok = async (c: Compare) => (await kv.txn({ compare: [c], success: [], failure: [] })).succeeded;
    expect(await ok({ key: k, target: 'value', result: '=', value: '' })).toBe(false);
    expect(await ok({ key: k, target: 'value', result: '!=', value: 'x' })).toBe(false);
    expect(await ok({ key: k, target: 'version', result: '=', value: 0 })).toBe(true);
    expect(await ok({ key: k, target: 'create', result: '=', value: 0 })).toBe(true);
    expect(await ok({ key: k, target: 'mod', result: '=', value: 0 })).toBe(true);
    expect(await ok({ key: k, target: 'lease', result: '=', value: 0n })).toBe(true);
  });

  it('txn — compares on value, version, create, mod and lease with = != < >', async () => {
    const { kv, prefix, backend } = ctx();
    const k = `${prefix('txn-cmp')}k`;
    const lease = await kv.lease.grant(backend.minTtlSeconds + 5);
    const r1 = await kv.put(k, 'b');
    const r2 = await kv.put(k, 'b', { lease: lease.id });
    const ok = async (c: Compare) => (await kv.txn({ compare: [c], success: [], failure: [] })).succeeded;
    expect(await ok({ key: k, target: 'value', result: '=', value: 'b' })).toBe(true);
    expect(await ok({ key: k, target: 'value', result: '<', value: 'c' })).toBe(true);
    expect(await ok({ key: k, target: 'value', result: '>', value: 'a' })).toBe(true);
    expect(await ok({ key: k, target: 'value', result: '!=', value: 'b' })).toBe(false);
    expect(await ok({ key: k, target: 'version', result: '=', value: 2 })).toBe(true);
    expect(await ok({ key: k, target: 'version', result: '>', value: 1 })).toBe(true);
    expect(await ok({ key: k, target: 'create', result: '=', value: r1.revision })).toBe(true);
    expect(await ok({ key: k, target: 'create', result: '<', value: r2.revision })).toBe(true);
    expect(await ok({ key: k, target: 'mod', result: '=', value: r2.revision })).toBe(true);
    expect(await ok({ key: k, target: 'mod', result: '!=', value: r1.revision })).toBe(true);
    expect(await ok({ key: k, target: 'lease', result: '=', value: lease.id })).toBe(true);
    expect(await ok({ key: k, target: 'lease', result: '!=', value: 0n })).toBe(true);
    await kv.lease.revoke(lease.id);
  });

  it('txn — a compare over a range holds only if every key in it satisfies it', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-range');
    await kv.put(`${p}a`, '1');
    await kv.put(`${p}b`, '1');
    const cmp = (v: string): Compare => ({ key: p, prefix: true, target: 'value', result: '=', value: v });
    expect((await kv.txn({ compare: [cmp('1')], success: [], failure: [] })).succeeded).toBe(true);
    await kv.put(`${p}b`, '2');
    expect((await kv.txn({ compare: [cmp('1')], success: [], failure: [] })).succeeded).toBe(false);
  });

  it('txn — the failure branch runs when a compare fails, and gets see the txn-local state', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-branch');
    const t = await kv.txn({
      compare: [{ key: `${p}k`, target: 'version', result: '>', value: 0 }],
      success: [{ type: 'put', key: `${p}k`, value: 'success' }],
      failure: [
        { type: 'put', key: `${p}k`, value: 'failure' },
        { type: 'get', key: `${p}k` },
      ],
    });
    expect(t.succeeded).toBe(false);
    const g = t.responses[1];
    expect(g?.type === 'get' && text(g.kvs[0]?.value)).toBe('failure');
    expect(text((await kv.get(`${p}k`))?.value)).toBe('failure');
  });

  it('txn — put with prevKv inside a txn returns the previous value', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('txn-prev')}k`;
    await kv.put(k, 'old');
    const t = await kv.txn({
      compare: [],
      success: [{ type: 'put', key: k, value: 'new', options: { prevKv: true } }],
      failure: [],
    });
    const r = t.responses[0];
    expect(r?.type === 'put' && text(r.prevKv?.value)).toBe('old');
  });

  it('txn — nested txns run their own branch and report it', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-nested');
    await kv.put(`${p}x`, '1');
    const t = await kv.txn({
      compare: [],
      success: [
        {
          type: 'txn',
          txn: {
            compare: [{ key: `${p}x`, target: 'value', result: '=', value: '2' }],
            success: [{ type: 'put', key: `${p}y`, value: 'then' }],
            failure: [{ type: 'put', key: `${p}y`, value: 'else' }],
          },
        },
      ],
      failure: [],
    });
    const inner = t.responses[0];
    expect(inner?.type).toBe('txn');
    if (inner?.type === 'txn') {
      expect(inner.succeeded).toBe(false);
      expect(inner.responses[0]?.type).toBe('put');
    }
    expect(text((await kv.get(`${p}y`))?.value)).toBe('else');
  });

  it('txn — more than 128 ops fails with too-many-ops', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-many');
    const ops: Op[] = Array.from({ length: 129 }, (_, i) => ({ type: 'put', key: `${p}${i}`, value: 'x' }));
    await expect(kv.txn({ compare: [], success: ops, failure: [] })).rejects.toMatchObject({
      code: 'too-many-ops',
    });
    expect((await kv.range(p, { prefix: true, countOnly: true })).count).toBe(0);
  });

  it('txn — the same key put twice in one txn fails with duplicate-key and changes nothing', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('txn-dup')}k`;
    await expect(
      kv.txn({
        compare: [],
        success: [
          { type: 'put', key: k, value: '1' },
          { type: 'put', key: k, value: '2' },
        ],
        failure: [],
      }),
    ).rejects.toMatchObject({ code: 'duplicate-key' });
    expect(await kv.get(k)).toBeUndefined();
  });

  it('txn — a txn whose later put names an unknown lease fails as a whole: nothing is written', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('txn-atomic');
    const before = await kv.status();
    await expect(
      kv.txn({
        compare: [],
        success: [
          { type: 'put', key: `${p}a`, value: '1' },
          { type: 'put', key: `${p}b`, value: '2', options: { lease: 0x1234_9999n } },
        ],
        failure: [],
      }),
    ).rejects.toMatchObject({ code: 'lease-not-found' });
    expect(await kv.get(`${p}a`)).toBeUndefined();
    expect((await kv.status()).revision).toBe(before.revision);
  });

  it('txn — a put under an unknown lease fails with lease-not-found', async () => {
    const { kv, prefix } = ctx();
    await expect(kv.put(`${prefix('badlease')}k`, 'v', { lease: 0x1234_5678n })).rejects.toMatchObject({
      code: 'lease-not-found',
    });
  });
};
