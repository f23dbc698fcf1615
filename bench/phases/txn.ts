/**
 * Compare-and-swap txns, N in flight: each worker owns one key and swaps it with
 * `txn(mod == lastSeen ? put : get)`, so every txn is a conditional write that should succeed; a
 * failure (someone else changed the key) re-reads it and is counted as a conflict.
 */
import { benchValue, measuredLoop } from './measure.js';
import type { Phase } from './types.js';

export function txnPhase(inFlight: number): Phase {
  return {
    name: `txn${inFlight}`,
    description: `txn compare-and-swap (mod revision), ${inFlight} in flight, one key per worker`,
    run: async (ctx) => {
      const kv = ctx.target.kv;
      const value = benchValue();
      const keys = Array.from({ length: inFlight }, (_, w) => `${ctx.prefix}/cas${w}`);
      const seen = await Promise.all(keys.map(async (k) => (await kv.put(k, value)).revision));
      let conflicts = 0;
      const result = await measuredLoop(
        ctx,
        inFlight,
        async (w) => {
          const key = keys[w]!;
          const res = await kv.txn(
            {
              compare: [{ key, target: 'mod', result: '=', value: seen[w]! }],
              success: [{ type: 'put', key, value }],
              failure: [{ type: 'get', key }],
            },
            { signal: ctx.signal },
          );
          if (res.succeeded) {
            seen[w] = res.revision;
          } else {
            conflicts++;
            seen[w] = (await kv.get(key))?.modRevision ?? 0;
          }
        },
        () => ({ conflicts }),
      );
      return result;
    },
  };
}
