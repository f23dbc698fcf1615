/**
 * Public function arguments, fuzzed with fast-check (seeded): every KV and lease entry point of the
 * embedded backend and of the etcd client, given arbitrary values of any type, either answers or
 * rejects with a `ConclaveError` — never a TypeError, a crash or a synchronous throw — and a key of
 * the wrong type is `invalid-argument` on both (the etcd client decides before reaching a server).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import { refusedEndpoint } from '../harness/hostile.js';

const seed = Number(process.env.FUZZ_SEED ?? 17);
const runs = 150;

/** Calls `f` and returns the error it failed with (undefined: it resolved), catching sync throws too. */
async function outcome(f: () => Promise<unknown>): Promise<unknown> {
  try {
    await f();
    return undefined;
  } catch (err) {
    return err;
  }
}

const anyArgs = fc.array(fc.anything({ withBigInt: true, withTypedArray: true, withNullPrototype: true }), {
  maxLength: 3,
});

type Entry = [string, (kv: KV, a: unknown[]) => Promise<unknown>];
const entries: Entry[] = [
  ['range', (kv, a) => (kv.range as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['put', (kv, a) => (kv.put as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['delete', (kv, a) => (kv.delete as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['txn', (kv, a) => (kv.txn as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['lease.grant', (kv, a) => (kv.lease.grant as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['lease.revoke', (kv, a) => (kv.lease.revoke as (...x: unknown[]) => Promise<unknown>)(...a)],
  ['lease.timeToLive', (kv, a) => (kv.lease.timeToLive as (...x: unknown[]) => Promise<unknown>)(...a)],
];

describe('public KV functions with arbitrary arguments (embedded backend)', () => {
  let kv: KV;
  beforeAll(async () => {
    kv = await connect('embedded:');
  });
  afterAll(async () => {
    await kv?.close();
  });
  for (const [name, call] of entries)
    it(`${name}: answers or fails with a ConclaveError (seed ${seed})`, async () => {
      await fc.assert(
        fc.asyncProperty(anyArgs, async (args) => {
          const err = await outcome(() => call(kv, args));
          if (err !== undefined && !(err instanceof ConclaveError))
            throw new Error(
              `${name}(${fc.stringify(args)}) failed with a non-Conclave error: ${String(err)}`,
            );
        }),
        { seed, numRuns: runs },
      );
    });
});

describe('a key of the wrong type is invalid-argument on every backend', () => {
  const badKey = fc
    .anything({ withBigInt: true, withNullPrototype: true })
    .filter((k) => typeof k !== 'string' && !(k instanceof Uint8Array));
  let embedded: KV;
  let etcd: KV;
  beforeAll(async () => {
    embedded = await connect('embedded:');
    // Nothing listens there: an argument check that needed the server would fail differently.
    etcd = await connect({
      backend: 'etcd',
      endpoints: [await refusedEndpoint()],
      lazy: true,
      callTimeoutMs: 2000,
    });
  });
  afterAll(async () => {
    await embedded?.close();
    await etcd?.close();
  });
  for (const which of ['embedded', 'etcd'] as const)
    for (const [name, call] of entries.filter(([n]) => ['range', 'put', 'delete'].includes(n)))
      it(`${which} ${name}`, async () => {
        const kv = which === 'embedded' ? embedded : etcd;
        await fc.assert(
          fc.asyncProperty(badKey, async (key) => {
            const err = await outcome(() => call(kv, name === 'put' ? [key, 'v'] : [key]));
            if (!(err instanceof ConclaveError) || err.code !== ErrorCode.InvalidArgument)
              throw new Error(`${name}(${fc.stringify(key)}): expected invalid-argument, got ${String(err)}`);
          }),
          { seed, numRuns: 60 },
        );
      });
});
