/** Small helpers for conformance tests. */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type { KeyValue, Watch, WatchBatch } from '../../src/types.js';

export const text = (b: Uint8Array | undefined): string | undefined =>
  b === undefined ? undefined : toText(b);
export const keys = (kvs: KeyValue[]): string[] => kvs.map((kv) => toText(kv.key));
export const values = (kvs: KeyValue[]): string[] => kvs.map((kv) => toText(kv.value));

/**
 * The conformance suite's seed: `CONFORMANCE_SEED` when set (to replay a failure), else one drawn
 * for the run (the only unseeded draw in the suite). Every test that uses randomness takes a
 * generator from `seeded()` and names the seed in its failure messages.
 */
export const conformanceSeed: number = (() => {
  const env = process.env.CONFORMANCE_SEED;
  if (env === undefined || env === '') return Math.floor(Math.random() * 2 ** 31);
  const n = Number(env);
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`CONFORMANCE_SEED must be a non-negative integer, got ${env}`);
  return n;
})();

/**
 * A seeded generator (xorshift32) for one test: its stream is the suite seed mixed with `label`
 * (each test its own stream, so adding a test does not change another's). `replay` is what to put
 * in a failure message: the environment setting that replays the run.
 */
export function seeded(label: string): { rand: () => number; replay: string } {
  let x = conformanceSeed >>> 0;
  for (let i = 0; i < label.length; i++) x = Math.imul(x ^ label.charCodeAt(i), 0x01000193) >>> 0;
  x = x || 1;
  const rand = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
  return { rand, replay: `CONFORMANCE_SEED=${conformanceSeed}` };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Collects batches from a watch until `done(events so far)` or the deadline; throws on timeout. */
export async function collect(
  w: Watch,
  until: (batches: WatchBatch[]) => boolean,
  timeoutMs = 5000,
): Promise<WatchBatch[]> {
  const out: WatchBatch[] = [];
  const it = w[Symbol.asyncIterator]();
  const deadline = Date.now() + timeoutMs;
  while (!until(out)) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`watch: timed out after ${timeoutMs} ms with ${out.length} batches`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      it.next(),
      new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), left))),
    ]);
    clearTimeout(timer);
    if (r === 'timeout') throw new Error(`watch: timed out after ${timeoutMs} ms with ${out.length} batches`);
    if (r.done) break;
    out.push(r.value);
  }
  return out;
}

export const eventCount = (bs: WatchBatch[]): number => bs.reduce((n, b) => n + b.events.length, 0);

/** The shared polling helper (test/harness/wait.ts), as the suite's files import it from here. */
export { waitFor } from '../harness/wait.js';

/**
 * A client that can "die": after `die()` every call fails (keep-alives included), as if the
 * process were gone — nothing revokes its lease or deletes its keys.
 */
export function mortal(kv: KV): { kv: KV; die(): void } {
  let dead = false;
  const check = () => {
    if (dead) throw new ConclaveError(ErrorCode.Closed, 'this client died');
  };
  const wrap = <T extends object>(target: T): T =>
    new Proxy(target, {
      get(t, prop) {
        if (prop === 'lease') return wrap(kv.lease);
        const v = Reflect.get(t, prop, t);
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          check();
          return (v as (...a: unknown[]) => unknown).apply(t, args);
        };
      },
    });
  return { kv: wrap(kv), die: () => (dead = true) };
}

/** A KV whose first range (a recipe's initial read) is followed by `afterRead()` (writes, a compaction…). */
export function afterFirstRead(kv: KV, afterRead: () => Promise<void>): KV {
  let fired = false;
  return new Proxy(kv, {
    get(target, prop) {
      if (prop === 'range') {
        return async (...args: Parameters<KV['range']>) => {
          const r = await target.range(...args);
          if (!fired) {
            fired = true;
            await afterRead();
          }
          return r;
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/**
 * `kv` with some of its methods replaced (each override receives the real client to delegate to);
 * every other member is the real client's, bound to it.
 */
export function overriding(
  kv: KV,
  overrides: {
    [M in 'range' | 'txn' | 'watch']?: (real: KV, ...args: Parameters<KV[M]>) => ReturnType<KV[M]>;
  },
): KV {
  return new Proxy(kv, {
    get(target, prop) {
      const o = overrides[prop as keyof typeof overrides] as
        | ((real: KV, ...a: unknown[]) => unknown)
        | undefined;
      if (o) return (...args: unknown[]) => o(target, ...args);
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/**
 * A client for the in-client handoff tests (recipes/internal/handoff.ts): counts queue re-reads
 * (ranges bounded by create revision), and while `delayReplies(ms)` is set, returns the reply of a
 * release txn that carries a handoff read (a delete, then a get) only after `ms` — its effect is
 * already applied, so waiters see the delete event long before the offer.
 */
export function handoffProbe(kv: KV): {
  kv: KV;
  queueReads(): number;
  delayReplies(ms: number): void;
} {
  let reads = 0;
  let delayMs = 0;
  const probed = overriding(kv, {
    range: (real, key, opts) => {
      if (opts?.maxCreateRevision !== undefined) reads++;
      return real.range(key, opts);
    },
    txn: async (real, t, opts) => {
      const r = await real.txn(t, opts);
      const ops = t.success;
      if (delayMs > 0 && ops.length === 2 && ops[0]!.type === 'delete' && ops[1]!.type === 'get')
        await sleep(delayMs);
      return r;
    },
  });
  return { kv: probed, queueReads: () => reads, delayReplies: (ms) => (delayMs = ms) };
}
