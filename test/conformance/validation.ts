import { expect, it } from 'vitest';
import { ConclaveError } from '../../src/errors.js';
import type { RegisterTests } from './context.js';

/** Each bad argument is refused with a ConclaveError `invalid-argument`, and the message names it. */
function expectBad(p: Promise<unknown> | (() => unknown), name: RegExp): Promise<void> {
  const run = async () => (typeof p === 'function' ? p() : p);
  return run().then(
    () => {
      throw new Error(`expected a failure naming ${name}`);
    },
    (err: unknown) => {
      expect(err instanceof ConclaveError && err.code === 'invalid-argument').toBe(true);
      expect((err as Error).message).toMatch(name);
    },
  );
}

export const registerValidationTests: RegisterTests = (ctx) => {
  it('validation — empty keys are refused where etcd requires a key', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.put('', 'v'), /key/);
    await expectBad(() => kv.get(''), /key/);
  });

  it('validation — keys and values must be bytes or strings', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.put(42 as unknown as string, 'v'), /key/);
    await expectBad(() => kv.put('k', { a: 1 } as unknown as string), /value/);
  });

  it('validation — TTLs must be positive integers', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.lease.grant(-5), /ttlSeconds/);
    await expectBad(() => kv.lease.grant(0), /ttlSeconds/);
    await expectBad(() => kv.lease.grant(1.5), /ttlSeconds/);
  });

  it('validation — limit and revisions must be non-negative integers', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.range('k', { limit: -1 }), /limit/);
    await expectBad(() => kv.get('k', { revision: 1.5 }), /revision/);
    await expectBad(() => kv.get('k', { revision: -3 }), /revision/);
    await expectBad(() => kv.compact(0), /revision/);
    await expectBad(() => kv.watch('k', { startRevision: -1 }), /startRevision/);
  });

  it('validation — lease ids must be bigint', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.lease.revoke(5 as unknown as bigint), /bigint/);
    await expectBad(() => kv.put('k', 'v', { lease: 7 as unknown as bigint }), /lease/);
    await expectBad(() => kv.lease.keepAliveOnce(-1n), /id/);
  });

  it('validation — conflicting range selectors and malformed txns are refused', async () => {
    const { kv } = ctx();
    await expectBad(() => kv.range('k', { prefix: true, end: 'z' }), /end|prefix/);
    await expectBad(
      () =>
        kv.txn({
          compare: [{ key: 'k', target: 'bogus', result: '=', value: 1 } as never],
          success: [],
          failure: [],
        }),
      /target/,
    );
    await expectBad(() => kv.txn({ compare: [], success: [{ type: 'nope' } as never], failure: [] }), /type/);
    await expectBad(() => kv.get('k', { signal: 'x' as unknown as AbortSignal }), /signal/);
  });
};
