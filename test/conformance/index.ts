/**
 * runConformance: the ONE suite of semantic tests, run unchanged against every backend.
 * Expectations are etcd 3.4's observable behaviour, checked against a real etcd.
 */
import { afterAll, beforeAll, describe } from 'vitest';
import type { KV } from '../../src/kv.js';
import type { ConformanceBackend, ConformanceContext, RegisterTests } from './context.js';
import { registerKvTests } from './kv.js';
import { registerLeaseTests } from './lease.js';
import { registerLimitsTests } from './limits.js';
import { registerRecipes } from './recipes/index.js';
import { registerSessionTests } from './session.js';
import { registerTxnTests } from './txn.js';
import { registerValidationTests } from './validation.js';
import { registerWatchTests } from './watch.js';

const suites: Array<[string, RegisterTests | undefined]> = [
  ['kv', registerKvTests],
  ['txn', registerTxnTests],
  ['watch', registerWatchTests],
  ['lease', registerLeaseTests],
  ['limits', registerLimitsTests],
  ['session', registerSessionTests],
  ['validation', registerValidationTests],
  ['recipes', registerRecipes],
];

/** Suites registered in this process (part of each run's key prefix). */
let runSeq = 0;

/**
 * Registers the suite for one backend. `only` limits it to some parts (by name: 'lease', 'session',
 * …), for a backend variant that only needs those (e.g. durable storage for the lease tests).
 */
export function runConformance(
  backend: ConformanceBackend,
  opts: { skip?: boolean; only?: readonly string[] } = {},
): void {
  describe.skipIf(opts.skip === true)(`conformance: ${backend.name}`, () => {
    let ctx: ConformanceContext | undefined;
    const extra: KV[] = [];
    // A prefix of this run's own (the etcd under test may hold earlier runs' keys): not random, unique.
    const run = `${process.pid.toString(36)}${Date.now().toString(36).slice(-5)}${(runSeq++).toString(36)}`;
    let n = 0;

    beforeAll(async () => {
      await backend.setup();
      const kv = await backend.factory();
      ctx = {
        backend,
        kv,
        prefix: (label) => `conf/${run}/${label.replace(/[^a-z0-9-]/gi, '_')}-${n++}/`,
        newKv: async () => {
          const k = await backend.factory();
          extra.push(k);
          return k;
        },
      };
    });

    afterAll(async () => {
      for (const k of extra) await k.close().catch(() => undefined);
      await ctx?.kv.close().catch(() => undefined);
      await backend.teardown();
    });

    const get = (): ConformanceContext => {
      if (!ctx) throw new Error('conformance context used before setup');
      return ctx;
    };
    for (const [name, register] of suites)
      if (register && (!opts.only || opts.only.includes(name))) describe(name, () => register(get));
  });
}
