/**
 * Synthetic histories for the checker's own tests: a seeded simulation of concurrent clients
 * against the model, each operation taking effect at a random instant inside its [call, return]
 * interval — so the history is linearizable by construction. A fraction of writes get an unknown
 * outcome (no output, like a timeout): half of them took effect, half did not.
 */
import { Prng } from '../sim/prng.js';
import { apply, type EtcdOperation, type EtcdState, initialState, type StoreEvent } from './model.js';
import { WorkloadGen } from './recorder.js';

export interface SynthOptions {
  seed: number;
  ops: number;
  clients?: number;
  keys?: number;
  /** Fraction of writes whose outcome is unknown (default 0.02). */
  unknownRate?: number;
  /** Lease grants, revokes and puts with leases too. */
  leases?: boolean;
}

export function synthesize(opts: SynthOptions): EtcdOperation[] {
  return synthesizeWithEvents(opts).history;
}

/** The store's changes between two states, as its watch would report them. */
function diff(a: EtcdState, b: EtcdState): StoreEvent[] {
  const out: StoreEvent[] = [];
  for (const [k, v] of b.kvs)
    if (a.kvs.get(k)?.mod !== v.mod) out.push({ type: 'put', key: k, value: v.value, revision: v.mod });
  for (const k of a.kvs.keys())
    if (!b.kvs.has(k)) out.push({ type: 'delete', key: k, value: '', revision: b.rev });
  return out;
}

/** `synthesize`, with the store's event log (every change that applied, unknown outcomes included). */
export function synthesizeWithEvents(opts: SynthOptions): { history: EtcdOperation[]; events: StoreEvent[] } {
  const events: StoreEvent[] = [];
  const clients = opts.clients ?? 8;
  const keys = opts.keys ?? 10;
  const unknownRate = opts.unknownRate ?? 0.02;
  const prng = new Prng(opts.seed);
  const gens = Array.from(
    { length: clients },
    (_, c) => new WorkloadGen(prng.fork(), c, keys, opts.leases ? 1_000_000n : undefined),
  );
  // Each client's next free time; operations are produced in order of their effect instant.
  const free = Array.from({ length: clients }, () => prng.next());
  type Pending = { client: number; call: number; ret: number; at: number };
  const out: EtcdOperation[] = [];
  let state: EtcdState = initialState;
  // Per client, the operation in flight; the simulation steps the client with the earliest effect.
  const inflight: Pending[] = free.map((t, client) => {
    const d = 0.2 + prng.next() * 2;
    return { client, call: t, ret: t + d, at: t + prng.next() * d };
  });
  while (out.length < opts.ops) {
    let i = 0;
    for (let j = 1; j < clients; j++) if (inflight[j]!.at < inflight[i]!.at) i = j;
    const p = inflight[i]!;
    const gen = gens[i]!;
    const input = gen.next();
    const isWrite = input.type !== 'get';
    const unknown = isWrite && prng.chance(unknownRate);
    if (!unknown || prng.chance(0.5)) {
      const r = apply(state, input);
      events.push(...diff(state, r.state));
      state = r.state;
      if (!unknown) {
        out.push({ clientId: i, call: p.call, return: p.ret, input, output: r.output });
        gen.observe(input, r.output);
      } else out.push({ clientId: i, call: p.call, return: p.ret, input, output: undefined });
    } else out.push({ clientId: i, call: p.call, return: p.ret, input, output: undefined });
    const t = p.ret + prng.next() * 0.5;
    const d = 0.2 + prng.next() * 2;
    inflight[i] = { client: i, call: t, ret: t + d, at: t + prng.next() * d };
  }
  return { history: out, events };
}
