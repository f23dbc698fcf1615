/**
 * Ending 100,000 watches at once does not hold the event loop (the members' ticks run on it: a
 * heartbeat every 10 ms embedded): a client's `close()` and a member's shutdown end them a slice
 * per turn. Stretches are measured in CPU time (bench/cpu.ts, cpuStretchMeter) so a loaded
 * machine does not
 * fail the test; the bound is generous, while ending 100,000 at once took 0.4–1.2 s of CPU in one
 * stretch, and the first slice is also checked directly (no more than `watchCloseSliceMax` end
 * before the first turn).
 */
import { describe, expect, it } from 'vitest';
import { startCluster } from '../../backends/raft/index.js';
import { watchCloseSliceMax, watchersMax } from '../../backends/raft/store/watch-hub.js';
import { cpuStretchMeter } from '../../bench/cpu.js';
import type { Watch } from '../../src/types.js';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
/** The longest stretch allowed: far below a stretch that ends 100,000 watches at once. */
const stretchMsMax = 100;

async function open(
  kv: { watch(key: string, o: object): Watch },
  n: number,
  prefix: string,
): Promise<Watch[]> {
  const ws: Watch[] = [];
  while (ws.length < n) {
    const chunk: Watch[] = [];
    for (let i = 0; i < 500 && ws.length + chunk.length < n; i++)
      chunk.push(kv.watch(`${prefix}/${ws.length + chunk.length}`, {}));
    ws.push(...chunk);
    await Promise.all(chunk.map((w) => w.ready));
    await turn();
  }
  return ws;
}

/** Resolves with the error each watch ended with (undefined: ended without one). */
const ends = (ws: readonly Watch[]) =>
  Promise.all(
    ws.map(async (w) => {
      try {
        for await (const _ of w);
        return undefined;
      } catch (err) {
        return err;
      }
    }),
  );

describe('closing many watches', () => {
  it(`a client with ${watchersMax} watches closes them a slice per turn, and so does a member stopping with them`, async () => {
    const c = await startCluster({ nodes: 1 });
    try {
      const hub = c.members.get(1)!.store.hub;
      const a = c.client();
      await open(a, watchersMax, 'a');
      expect(hub.size).toBe(watchersMax);
      let stop = cpuStretchMeter();
      const closing = a.close();
      // Nothing past the first slice ended before the loop turned.
      expect(hub.size).toBeGreaterThanOrEqual(watchersMax - watchCloseSliceMax);
      await closing;
      let stretch = stop();
      expect(hub.size).toBe(0);
      expect(stretch).toBeLessThan(stretchMsMax);

      // A member stopping with every watch open (on its hub: an embedded client's watch would
      // move to another member) ends them with `closed`, a slice per turn.
      const bs = await open(hub, watchersMax, 'b');
      const ended = ends(bs);
      stop = cpuStretchMeter();
      const closed = c.close();
      expect(hub.size).toBeGreaterThanOrEqual(watchersMax - watchCloseSliceMax);
      await closed;
      const errors = await ended;
      stretch = stop();
      expect(hub.size).toBe(0);
      expect(errors.filter((e) => (e as { code?: string } | undefined)?.code === 'closed').length).toBe(
        watchersMax,
      );
      expect(stretch).toBeLessThan(stretchMsMax);
    } finally {
      await c.close();
    }
  }, 180_000);
});
