/**
 * Request limits are the same on every backend: etcd's `--max-request-bytes` (1.5 MiB by default)
 * and `--max-txn-ops` (128). A refused request fails with a non-retryable `request-too-large` or
 * `too-many-ops` and writes nothing. Sizes keep 1 KiB away from the limit: etcd measures its own
 * encoding of the request (a few dozen bytes of framing), the Raft store measures its own.
 */
import { expect, it } from 'vitest';
import { ConclaveError } from '../../src/errors.js';
import type { Op } from '../../src/types.js';
import type { RegisterTests } from './context.js';

const KiB = 1024;
const requestBytesDefault = 1.5 * 1024 * KiB;

/** Rejects with a ConclaveError of `code`, not retryable; returns it. */
async function refused(p: Promise<unknown>, code: string): Promise<ConclaveError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}, the call succeeded`).toBeInstanceOf(ConclaveError);
  const ce = err as ConclaveError;
  expect({ code: ce.code, retryable: ce.retryable }).toEqual({ code, retryable: false });
  return ce;
}

export const registerLimitsTests: RegisterTests = (ctx) => {
  it('limits — a put 1 KiB over 1.5 MiB fails request-too-large, not retryable, and writes nothing', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('limit-put')}big`;
    const err = await refused(kv.put(k, new Uint8Array(requestBytesDefault + KiB)), 'request-too-large');
    expect(err.message).toMatch(/request is too large/);
    expect(await kv.get(k)).toBeUndefined();
  });

  it('limits — a put 1 KiB under 1.5 MiB is accepted and reads back whole', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('limit-put-ok')}big`;
    const value = new Uint8Array(requestBytesDefault - KiB).fill(7);
    await kv.put(k, value);
    const got = await kv.get(k);
    expect(got?.value.length).toBe(value.length);
    expect(got?.value[value.length - 1]).toBe(7);
  });

  it('limits — a txn whose puts together exceed 1.5 MiB fails request-too-large and writes none of them', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('limit-txn-bytes');
    const half = new Uint8Array(800 * KiB);
    await refused(
      kv.txn({
        compare: [],
        success: [
          { type: 'put', key: `${p}a`, value: half },
          { type: 'put', key: `${p}b`, value: half },
        ],
        failure: [],
      }),
      'request-too-large',
    );
    expect((await kv.range(p, { prefix: true, countOnly: true })).count).toBe(0);
  });

  it('limits — a txn of exactly 128 ops is accepted; 129 compares, or a nested txn past what its parent leaves, fail too-many-ops', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('limit-ops');
    const puts: Op[] = Array.from({ length: 128 }, (_, i) => ({ type: 'put', key: `${p}${i}`, value: 'x' }));
    const ok = await kv.txn({ compare: [], success: puts, failure: [] });
    expect(ok.succeeded).toBe(true);
    expect((await kv.range(p, { prefix: true, countOnly: true })).count).toBe(128);

    const q = prefix('limit-ops-refused');
    const compares = Array.from({ length: 129 }, () => ({
      key: `${q}c`,
      target: 'version' as const,
      result: '=' as const,
      value: 0,
    }));
    await refused(
      kv.txn({ compare: compares, success: [{ type: 'put', key: `${q}a`, value: 'x' }], failure: [] }),
      'too-many-ops',
    );
    // The parent's longest list is 100, so a nested list may hold 28 entries, not 29.
    const gets = (n: number): Op[] => Array.from({ length: n }, () => ({ type: 'get', key: `${q}g` }));
    const nested = (n: number): Op => ({
      type: 'txn',
      txn: { compare: [], success: [...gets(n - 1), { type: 'put', key: `${q}n`, value: 'x' }], failure: [] },
    });
    await refused(kv.txn({ compare: [], success: [...gets(99), nested(29)], failure: [] }), 'too-many-ops');
    expect((await kv.range(q, { prefix: true, countOnly: true })).count).toBe(0);
    const t = await kv.txn({ compare: [], success: [...gets(99), nested(28)], failure: [] });
    expect(t.succeeded).toBe(true);
    expect(await kv.get(`${q}n`)).toBeDefined();
  });
};
