/** put of a 256-byte value with N requests in flight, over 1024 keys (etcd's `benchmark put` shape). */
import { benchValue, measuredLoop } from './measure.js';
import type { Phase } from './types.js';

const keySpace = 1024;

export function putPhase(inFlight: number): Phase {
  return {
    name: `put${inFlight}`,
    description: `put, 256-byte value, ${inFlight} in flight, ${keySpace} keys`,
    run: (ctx) => {
      const keys = Array.from({ length: keySpace }, (_, i) => `${ctx.prefix}/k${i}`);
      const value = benchValue();
      return measuredLoop(ctx, inFlight, async (_w, seq) => {
        await ctx.target.kv.put(keys[seq % keySpace]!, value, { signal: ctx.signal });
      });
    },
  };
}
