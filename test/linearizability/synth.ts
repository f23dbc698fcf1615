/**
 * Synthetic histories for the checker's own tests: a seeded simulation of concurrent clients
 * against the model, each operation taking effect at a random instant inside its [call, return]
 * interval — so the history is linearizable by construction. A fraction of writes get an unknown
 * outcome (no output, like a timeout): half of them took effect, half did not.
 */
import { Prng } from '../sim/prng.js';
import {
  apply,
  type EtcdInput,
  type EtcdOperation,
  type EtcdState,
  initialState,
  makeState,
  type StoreEvent,
} from './model.js';
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

/** A server defect for `synthesizeLeaseExpiry`'s illegal histories. */
export type LeaseBug =
  /** A lease expires at half its TTL. */
  | 'early-expiry'
  /** Keep-alives answer "renewed" but do not move the expiry. */
  | 'ignore-keepalive'
  /** An expired lease is gone, but its keys stay. */
  | 'keys-survive';

/**
 * A history with leases that expire: `clients` clients on `keys` keys, each granting a lease of
 * `ttl` (time units), attaching puts to it, sending keep-alives now and then (so some leases live
 * long, others lapse), revoking some, and reading. A simulated server applies each operation at
 * a random instant inside its interval and expires a lease some random lag after its expiry (the
 * later of its grant's and last keep-alive's apply instant, plus the TTL) — linearizable with
 * expiry modelled, unless `bug` is given.
 */
export function synthesizeLeaseExpiry(o: {
  seed: number;
  ops: number;
  clients?: number;
  keys?: number;
  ttl?: number;
  bug?: LeaseBug;
}): EtcdOperation[] {
  const prng = new Prng(o.seed);
  const clients = o.clients ?? 6;
  const keys = o.keys ?? 6;
  const ttl = o.ttl ?? 40;
  const out: EtcdOperation[] = [];
  let state: EtcdState = initialState;
  /** Per live lease: when it expires (apply instant + ttl) and the server's lag past that. */
  const expiry = new Map<string, { at: number; lag: number }>();
  const held: (string | undefined)[] = Array.from({ length: clients }, () => undefined);
  let n = 0;
  const next = (c: number): EtcdInput => {
    const lease = held[c];
    const r = prng.next();
    if (lease === undefined && r < 0.15) {
      held[c] = `${++n}`;
      return { type: 'grant', lease: held[c], ttlMs: ttl };
    }
    if (lease !== undefined && r < 0.05) {
      held[c] = undefined;
      return { type: 'revoke', lease };
    }
    if (lease !== undefined && r < 0.2) return { type: 'keepalive', lease };
    const key = `k${prng.int(keys)}`;
    if (r < 0.55) return { type: 'get', key };
    if (r < 0.9) return { type: 'put', key, value: `v${++n}`, ...(lease !== undefined ? { lease } : {}) };
    return { type: 'delete', key };
  };
  const inflight = Array.from({ length: clients }, (_, c) => {
    const t = prng.next() * 5;
    const d = 1 + prng.next() * 8;
    return { c, call: t, ret: t + d, at: t + prng.next() * d };
  });
  const expireUpTo = (t: number) => {
    for (;;) {
      let first: [string, number] | undefined;
      for (const [l, e] of expiry) {
        const when = e.at + e.lag;
        if (when <= t && (!first || when < first[1])) first = [l, when];
      }
      if (!first) return;
      expiry.delete(first[0]);
      const r = apply(state, { type: 'expire', lease: first[0] });
      if (o.bug === 'keys-survive') {
        const leases = new Set(state.leases);
        leases.delete(first[0]);
        state = makeState(state.rev, state.kvs, leases);
      } else state = r.state;
    }
  };
  while (out.length < o.ops) {
    let i = 0;
    for (let j = 1; j < clients; j++) if (inflight[j]!.at < inflight[i]!.at) i = j;
    const p = inflight[i]!;
    expireUpTo(p.at);
    const input = next(i);
    const r = apply(state, input);
    state = r.state;
    let output = r.output;
    if (input.type === 'grant' && output.type === 'grant' && !output.exists) {
      const at = p.at + ttl * (o.bug === 'early-expiry' ? 0.5 : 1);
      expiry.set(input.lease, { at, lag: prng.next() * 10 });
      output = { ...output, ttlMs: ttl };
    }
    if (input.type === 'keepalive' && output.type === 'keepalive' && output.found) {
      const e = expiry.get(input.lease)!;
      if (o.bug !== 'ignore-keepalive') e.at = p.at + ttl * (o.bug === 'early-expiry' ? 0.5 : 1);
      output = { ...output, ttlMs: ttl };
    }
    if (input.type === 'revoke') expiry.delete(input.lease);
    // A client learns its lease is gone from a refusal; it grants another.
    if (
      (output.type === 'keepalive' && !output.found) ||
      (output.type === 'put' && output.leaseMissing) ||
      (output.type === 'revoke' && !output.found)
    )
      held[i] = undefined;
    out.push({ clientId: i, call: p.call, return: p.ret, input, output });
    const t = p.ret + prng.next() * 2;
    const d = 1 + prng.next() * 8;
    inflight[i] = { c: i, call: t, ret: t + d, at: t + prng.next() * d };
  }
  return out;
}
