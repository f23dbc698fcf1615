/**
 * get of one existing key, one in flight. Linearizable reads go through etcd's ReadIndex (a
 * heartbeat round to a quorum); serializable ones are served by the member the client talks to.
 */
import { benchValue, measuredLoop, valueBytes } from './measure.js';
import type { Phase } from './types.js';

export function getPhase(serializable: boolean): Phase {
  return {
    name: serializable ? 'get-ser' : 'get-lin',
    description: `get of one 256-byte key, ${serializable ? 'serializable' : 'linearizable'}, 1 in flight`,
    run: async (ctx) => {
      const key = `${ctx.prefix}/key`;
      await ctx.target.kv.put(key, benchValue(), { signal: ctx.signal });
      return measuredLoop(ctx, 1, async () => {
        const kv = await ctx.target.kv.get(key, { serializable, signal: ctx.signal });
        if (kv?.value.byteLength !== valueBytes) throw new Error(`get ${key}: wrong or missing value`);
      });
    },
  };
}
