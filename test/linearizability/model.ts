/**
 * A sequential model of etcd v3's KV with revisions, for the linearizability checker.
 *
 * What it pins (etcd 3.4's behaviour, as Conclave's conformance suite does):
 * - the store starts at revision 1; a put bumps it by one; a delete bumps it only when it deleted
 *   something; a txn bumps it once, and only if its branch changed something (etcd's
 *   storeTxnWrite.End: `if len(tw.changes) != 0 { tw.s.currentRev++ }`);
 * - every key written by one txn gets the same mod revision (the txn's); a put on a missing key
 *   starts a new generation (create revision = mod revision, version 1), a put on an existing key
 *   bumps its version; a delete ends the generation;
 * - a linearizable get answers the key's value, create/mod revision and version, and the store's
 *   current revision in its header;
 * - txn compares: a missing key has version, create and mod revision 0; a VALUE compare on a
 *   missing key is false (etcd's compareKV returns false when the key is absent and the target
 *   is VALUE);
 * - ops in a txn branch run in order and a get sees the branch's earlier writes.
 *
 * Two ways to check a history with it:
 * - `etcdModel`: one partition, the store revision tracked exactly (every write's revision is
 *   determined by the order). Complete, and the right choice for short histories.
 * - `etcdPerKeyModel`: P-compositional. Revisions couple all keys, so per key the model tracks a
 *   *lower bound* of the store revision instead (what the partition saw last) and takes a write's
 *   revision from its response (it must be above the bound). Each per-key check is the projection
 *   of a global linearization, so it is sound (never calls a linearizable history illegal); the
 *   cross-key part — revisions never going back in real time, no two writes sharing a revision —
 *   is `checkRevisionOrder`'s. Together they catch stale reads, lost writes, reads of values
 *   never written, revisions going back, and a CAS that succeeded twice, at a fraction of the cost.
 *
 * Leases (etcd's lessor as the KV sees it):
 * - `grant` with a client-chosen id makes the lease live (the store revision is unchanged); an id
 *   already live is refused;
 * - a `put` with a lease attaches the key to it (a put without one detaches it); a put naming a
 *   lease that is not live is refused ("requested lease not found") and changes nothing;
 * - `revoke` deletes every key attached to the lease in one change — the revision goes up by one
 *   if it deleted anything, as any delete (etcd's lessor.Revoke runs one TxnDelete over the
 *   lease's keys) — and the lease is gone: a later put naming it is refused, a get of its keys
 *   finds them absent. Revoking a lease that is not live answers "lease not found";
 * - a get reports the lease a key is attached to.
 * Expiry and keep-alive are not modelled: the workload grants TTLs far beyond a run's length, so
 * no lease expires during one (etcd also renews every lease on a leader change). Expiry is checked
 * through the recipes (sessions, Mutex fencing) instead.
 */
import type { Model, Operation } from './checker.js';

export type CmpTarget = 'value' | 'version' | 'mod' | 'create';
export type CmpResult = '=' | '!=' | '<' | '>';
export interface Cmp {
  readonly key: string;
  readonly target: CmpTarget;
  readonly result: CmpResult;
  readonly value: string | number;
}
export type KeyOp =
  | { readonly type: 'get'; readonly key: string }
  /** `lease`: the id (decimal) of the lease to attach the key to; absent: none. */
  | { readonly type: 'put'; readonly key: string; readonly value: string; readonly lease?: string }
  | { readonly type: 'delete'; readonly key: string };
export type EtcdInput =
  | KeyOp
  | { readonly type: 'grant'; readonly lease: string }
  | { readonly type: 'revoke'; readonly lease: string }
  | {
      readonly type: 'txn';
      readonly compare: readonly Cmp[];
      readonly success: readonly KeyOp[];
      readonly failure: readonly KeyOp[];
    };

export interface KvOut {
  readonly value: string;
  readonly create: number;
  readonly mod: number;
  readonly version: number;
  /** The lease the key is attached to (decimal id); absent: none. */
  readonly lease?: string;
}
export type KeyOpOut =
  | { readonly type: 'get'; readonly kv: KvOut | undefined }
  | { readonly type: 'put' }
  | { readonly type: 'delete'; readonly deleted: number };
export type EtcdOutput =
  | { readonly type: 'get'; readonly revision: number; readonly kv: KvOut | undefined }
  /** `leaseMissing`: refused because the lease named is not live (then `revision` is 0). */
  | { readonly type: 'put'; readonly revision: number; readonly leaseMissing?: boolean }
  | { readonly type: 'delete'; readonly revision: number; readonly deleted: number }
  /** `exists`: refused because the id is live already. `revision` is not compared (0 in the model). */
  | { readonly type: 'grant'; readonly revision: number; readonly exists?: boolean }
  /** `found: false`: the lease was not live ("lease not found"; `revision` is then 0). */
  | { readonly type: 'revoke'; readonly revision: number; readonly found: boolean }
  | {
      readonly type: 'txn';
      readonly revision: number;
      readonly succeeded: boolean;
      readonly results: readonly KeyOpOut[];
    };

export type EtcdOperation = Operation<EtcdInput, EtcdOutput>;

/**
 * The store: its revision and live keys. Immutable; `key` is its serialization (the memo key).
 * In the per-key model `rev` is a lower bound and a key's `mod` may be unknown (negative: an
 * unknown-outcome write applied with a revision above `-mod`, pinned by the next read).
 */
export interface EtcdState {
  readonly rev: number;
  readonly kvs: ReadonlyMap<string, KvOut>;
  /** Live lease ids. */
  readonly leases: ReadonlySet<string>;
  readonly key: string;
}

const noLeases: ReadonlySet<string> = new Set();

function makeState(rev: number, kvs: ReadonlyMap<string, KvOut>, leases = noLeases): EtcdState {
  const parts = [...kvs.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([k, v]) => `${k}=${v.value}@${v.create},${v.mod},${v.version}${v.lease ? `~${v.lease}` : ''}`);
  const ls = leases.size > 0 ? `|${[...leases].sort().join(',')}` : '';
  return { rev, kvs, leases, key: `${rev}|${parts.join(';')}${ls}` };
}

export const initialState: EtcdState = makeState(1, new Map());

function compareOne(c: Cmp, kv: KvOut | undefined): boolean {
  let a: string | number;
  if (c.target === 'value') {
    if (!kv) return false;
    a = kv.value;
  } else if (c.target === 'version') a = kv?.version ?? 0;
  else if (c.target === 'mod') a = kv?.mod ?? 0;
  else a = kv?.create ?? 0;
  const b = c.value;
  switch (c.result) {
    case '=':
      return a === b;
    case '!=':
      return a !== b;
    case '<':
      return a < b;
    case '>':
      return a > b;
  }
}

/**
 * Applies one request to `state` with exact revisions (`newRev` is the revision a change gets).
 * Returns the next state and the response etcd would give.
 */
export function apply(state: EtcdState, input: EtcdInput): { state: EtcdState; output: EtcdOutput } {
  const newRev = state.rev + 1;
  if (input.type === 'get')
    return { state, output: { type: 'get', revision: state.rev, kv: state.kvs.get(input.key) } };
  if (input.type === 'grant') {
    if (state.leases.has(input.lease)) return { state, output: { type: 'grant', revision: 0, exists: true } };
    return {
      state: makeState(state.rev, state.kvs, new Set([...state.leases, input.lease])),
      output: { type: 'grant', revision: 0 },
    };
  }
  if (input.type === 'revoke') {
    if (!state.leases.has(input.lease))
      return { state, output: { type: 'revoke', revision: 0, found: false } };
    const kvs = new Map([...state.kvs].filter(([, v]) => v.lease !== input.lease));
    const leases = new Set(state.leases);
    leases.delete(input.lease);
    const rev = kvs.size < state.kvs.size ? newRev : state.rev;
    return { state: makeState(rev, kvs, leases), output: { type: 'revoke', revision: rev, found: true } };
  }
  if (input.type === 'put' && input.lease !== undefined && !state.leases.has(input.lease))
    return { state, output: { type: 'put', revision: 0, leaseMissing: true } };
  let branch: readonly KeyOp[];
  let succeeded = true;
  if (input.type === 'txn') {
    succeeded = input.compare.every((c) => compareOne(c, state.kvs.get(c.key)));
    branch = succeeded ? input.success : input.failure;
  } else branch = [input];
  let kvs: Map<string, KvOut> | undefined;
  const cur = () => kvs ?? state.kvs;
  const results: KeyOpOut[] = [];
  for (const op of branch) {
    if (op.type === 'get') results.push({ type: 'get', kv: cur().get(op.key) });
    else if (op.type === 'put') {
      if (op.lease !== undefined && input.type === 'txn')
        throw new Error('model: a put with a lease inside a txn is not modelled');
      kvs ??= new Map(state.kvs);
      const old = kvs.get(op.key);
      kvs.set(op.key, {
        value: op.value,
        create: old ? old.create : newRev,
        mod: newRev,
        version: old ? old.version + 1 : 1,
        ...(op.lease !== undefined ? { lease: op.lease } : {}),
      });
      results.push({ type: 'put' });
    } else {
      const had = cur().has(op.key);
      if (had) {
        kvs ??= new Map(state.kvs);
        kvs.delete(op.key);
      }
      results.push({ type: 'delete', deleted: had ? 1 : 0 });
    }
  }
  const next = kvs ? makeState(newRev, kvs, state.leases) : state;
  const revision = next.rev;
  if (input.type === 'txn') return { state: next, output: { type: 'txn', revision, succeeded, results } };
  const r = results[0]!;
  if (r.type === 'put') return { state: next, output: { type: 'put', revision } };
  if (r.type === 'delete') return { state: next, output: { type: 'delete', revision, deleted: r.deleted } };
  throw new Error('unreachable');
}

function kvEqual(a: KvOut | undefined, b: KvOut | undefined): boolean {
  if (!a || !b) return a === b;
  return (
    a.value === b.value &&
    a.create === b.create &&
    a.mod === b.mod &&
    a.version === b.version &&
    (a.lease ?? '0') === (b.lease ?? '0')
  );
}

function keyOpOutEqual(a: KeyOpOut, b: KeyOpOut): boolean {
  if (a.type !== b.type) return false;
  if (a.type === 'get') return kvEqual(a.kv, (b as typeof a).kv);
  if (a.type === 'delete') return a.deleted === (b as typeof a).deleted;
  return true;
}

export function outputEqual(a: EtcdOutput, b: EtcdOutput): boolean {
  if (a.type !== b.type) return false;
  if (a.type === 'grant') return !!a.exists === !!(b as typeof a).exists;
  if (a.type === 'revoke') {
    const bb = b as typeof a;
    return a.found === bb.found && (!a.found || a.revision === bb.revision);
  }
  if (a.type === 'put' && (a.leaseMissing || (b as typeof a).leaseMissing))
    return !!a.leaseMissing === !!(b as typeof a).leaseMissing;
  if (a.revision !== (b as typeof a).revision) return false;
  switch (a.type) {
    case 'get':
      return kvEqual(a.kv, (b as typeof a).kv);
    case 'put':
      return true;
    case 'delete':
      return a.deleted === (b as typeof a).deleted;
    case 'txn': {
      const bb = b as typeof a;
      return (
        a.succeeded === bb.succeeded &&
        a.results.length === bb.results.length &&
        a.results.every((r, i) => keyOpOutEqual(r, bb.results[i]!))
      );
    }
  }
}

export function describeKv(kv: KvOut | undefined): string {
  return kv
    ? `'${kv.value}' (create ${kv.create}, mod ${kv.mod}, version ${kv.version}${kv.lease ? `, lease ${kv.lease}` : ''})`
    : 'absent';
}

function describeKeyOp(op: KeyOp): string {
  if (op.type === 'put') return `put ${op.key}='${op.value}'${op.lease ? ` lease ${op.lease}` : ''}`;
  return `${op.type} ${op.key}`;
}

export function describeInput(input: EtcdInput): string {
  if (input.type === 'grant' || input.type === 'revoke') return `${input.type} lease ${input.lease}`;
  if (input.type !== 'txn') return describeKeyOp(input);
  const cmp = input.compare
    .map((c) => `${c.target}(${c.key}) ${c.result} ${JSON.stringify(c.value)}`)
    .join(' && ');
  return `txn if ${cmp || 'true'} then [${input.success.map(describeKeyOp).join(', ')}] else [${input.failure
    .map(describeKeyOp)
    .join(', ')}]`;
}

export function describeOutput(output: EtcdOutput | undefined): string {
  if (!output) return 'unknown outcome';
  switch (output.type) {
    case 'get':
      return `${describeKv(output.kv)} at rev ${output.revision}`;
    case 'put':
      return output.leaseMissing ? 'refused: lease not found' : `rev ${output.revision}`;
    case 'grant':
      return output.exists ? 'refused: lease exists' : 'granted';
    case 'revoke':
      return output.found ? `revoked at rev ${output.revision}` : 'refused: lease not found';
    case 'delete':
      return `deleted ${output.deleted} at rev ${output.revision}`;
    case 'txn':
      return `${output.succeeded ? 'succeeded' : 'failed'} at rev ${output.revision}${output.results
        .filter((r) => r.type === 'get')
        .map((r) => ` got ${describeKv((r as { kv: KvOut | undefined }).kv)}`)
        .join('')}`;
  }
}

function describeState(s: EtcdState): string {
  const kvs = [...s.kvs.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([k, v]) => `${k}=${describeKv(v)}`);
  return `rev ${s.rev}; ${kvs.join(', ') || 'no keys'}${s.leases.size > 0 ? `; leases ${[...s.leases].join(', ')}` : ''}`;
}

function isWriteOutput(input: EtcdInput, output: EtcdOutput): boolean {
  if (output.type === 'put') return !output.leaseMissing;
  if (output.type === 'delete') return output.deleted > 0;
  if (output.type === 'txn' && input.type === 'txn') {
    const branch = output.succeeded ? input.success : input.failure;
    return branch.some(
      (o) =>
        o.type === 'put' ||
        (o.type === 'delete' && output.results.some((r) => r.type === 'delete' && r.deleted > 0)),
    );
  }
  return false;
}

/** The store revision a response carries, if it carries one. */
function revisionOf(output: EtcdOutput): number | undefined {
  if (output.type === 'grant') return undefined;
  if (output.type === 'revoke' && !output.found) return undefined;
  if (output.type === 'put' && output.leaseMissing) return undefined;
  return output.revision;
}

/** The exact model: one partition, store revision tracked exactly, starting at `initialRevision`. */
export function etcdModelAt(initialRevision: number): Model<EtcdState, EtcdInput, EtcdOutput> {
  const init = makeState(initialRevision, new Map());
  return { ...etcdModel, init: () => init };
}

/** The exact model over a fresh store (revision 1). */
export const etcdModel: Model<EtcdState, EtcdInput, EtcdOutput> = {
  init: () => initialState,
  step(state, input, output) {
    const r = apply(state, input);
    if (output === undefined) return r.state;
    return outputEqual(r.output, output) ? r.state : undefined;
  },
  key: (s) => s.key,
  // A write at revision R comes before the reads served at R, which come before the write at R+1.
  hint: (input, output) => {
    const r = revisionOf(output);
    return r === undefined ? Number.MAX_SAFE_INTEGER : r + (isWriteOutput(input, output) ? 0 : 0.5);
  },
  // The store revision never goes back; a response at revision R was served at R (a write: from
  // R − 1; a revoke: from R − 1 or R, as it deleted keys or not). Answers that carry no revision
  // (a grant, a refusal) bound nothing.
  level: (s) => s.rev,
  maxLevel: (input, output) => {
    const r = revisionOf(output);
    return r === undefined ? Number.POSITIVE_INFINITY : r - (isWriteOutput(input, output) ? 1 : 0);
  },
  expected: (s, input) => describeOutput(apply(s, input).output),
  describeInput,
  describeOutput,
  describeState,
};

/**
 * Resolves unknown-outcome writes that a read proves applied, as etcd's robustness tests patch
 * their histories: with every put writing a value unique in the run, a read that returns value v
 * for key k with mod revision m was served after the put of v took effect, at revision m. Such a
 * put (or a single-put CAS txn, which then succeeded) gets that response, and its response time
 * becomes the observing read's (it took effect before that read answered). Writes never observed
 * stay unknown. Sound only when put values are unique per key — the workload's are.
 */
export function resolveObservedWrites(history: readonly EtcdOperation[]): EtcdOperation[] {
  const seen = new Map<string, { mod: number; ret: number }>();
  const note = (key: string, kv: KvOut | undefined, ret: number) => {
    if (!kv) return;
    const k = `${key}\u0000${kv.value}`;
    const prev = seen.get(k);
    if (!prev || ret < prev.ret) seen.set(k, { mod: kv.mod, ret });
  };
  for (const o of history) {
    if (!o.output) continue;
    if (o.input.type === 'get' && o.output.type === 'get') note(o.input.key, o.output.kv, o.return);
    if (o.input.type === 'txn' && o.output.type === 'txn') {
      const branch = o.output.succeeded ? o.input.success : o.input.failure;
      o.output.results.forEach((r, i) => {
        const bop = branch[i];
        if (r.type === 'get' && bop?.type === 'get') note(bop.key, r.kv, o.return);
      });
    }
  }
  return history.map((o) => {
    if (o.output) return o;
    const i = o.input;
    if (i.type === 'put') {
      const s = seen.get(`${i.key}\u0000${i.value}`);
      if (s) return { ...o, output: { type: 'put', revision: s.mod }, return: Math.max(o.call, s.ret) };
    }
    if (i.type === 'txn' && i.success.length === 1 && i.success[0]!.type === 'put') {
      const p = i.success[0]!;
      const s = seen.get(`${p.key}\u0000${p.value}`);
      if (s)
        return {
          ...o,
          output: { type: 'txn', revision: s.mod, succeeded: true, results: [{ type: 'put' }] },
          return: Math.max(o.call, s.ret),
        };
    }
    return o;
  });
}

/** One change of the store as its watch reports it (the ground truth of which writes applied). */
export interface StoreEvent {
  readonly type: 'put' | 'delete';
  readonly key: string;
  /** For a put: the value written. */
  readonly value: string;
  /** The revision of the change. */
  readonly revision: number;
}

/**
 * Resolves unknown-outcome writes from the store's own record of what applied — the events of a
 * watch over the workload's keys from its first revision — as etcd's robustness tests patch their
 * histories from the watch stream. With every put writing a value unique in the run:
 * - an unknown put (or a CAS txn whose success branch is one put) whose value appears in an event
 *   applied at that event's revision R: it becomes a known write at R, returning no later than the
 *   first known response that carries a revision ≥ R (a linearizable store had applied R by then),
 *   and no earlier than its call;
 * - one whose value appears in no event never applied, or applied with no effect (a put refused
 *   for a dead lease; a CAS whose compare failed, whose other branch only reads): it changed
 *   nothing, so it is left out.
 * - when the history has no revokes, a delete event no known response explains (no known delete
 *   that deleted, no succeeded txn at that revision), alone at its revision: given to an unknown delete of that key, in
 *   revision order, the earliest invoked one that was invoked before the deadline above (unknown
 *   deletes of one key have the same effect, so which one is named changes nothing); when every
 *   delete event of the key is thus explained, its other unknown deletes deleted nothing (or never
 *   applied) and are left out.
 * Grants, revokes and other txns stay unknown (so do deletes when there are revokes: a revoke's
 * deletes look like a delete's). This turns a history with many unknown
 * writes into one with almost none, which the exact search decides quickly at any length; the
 * events are not trusted beyond that — a resolved write that contradicts the reads still makes
 * the history illegal.
 */
export function resolveFromEvents(
  history: readonly EtcdOperation[],
  events: readonly StoreEvent[],
): EtcdOperation[] {
  const applied = new Map<string, number>();
  for (const e of events) if (e.type === 'put') applied.set(`${e.key}\u0000${e.value}`, e.revision);
  // Known responses by revision, for the latest return a resolved write can have.
  const known = history
    .filter((o) => o.output !== undefined)
    .map((o) => ({ rev: revisionOf(o.output!), ret: o.return }))
    .filter((x): x is { rev: number; ret: number } => x.rev !== undefined)
    .sort((a, b) => a.rev - b.rev);
  // suffixMin[i]: the earliest return among known responses i.. (revision ≥ known[i].rev).
  const suffixMin = new Array<number>(known.length + 1).fill(Number.POSITIVE_INFINITY);
  for (let i = known.length - 1; i >= 0; i--) suffixMin[i] = Math.min(suffixMin[i + 1]!, known[i]!.ret);
  const end = Math.max(0, ...history.map((o) => (o.output === undefined ? o.call : o.return))) + 1;
  const returnBy = (rev: number, call: number) => {
    let lo = 0;
    let hi = known.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (known[mid]!.rev < rev) lo = mid + 1;
      else hi = mid;
    }
    const t = suffixMin[lo]!;
    return Math.max(call, Number.isFinite(t) ? t : end);
  };
  // Delete events: those no known response explains, alone at their revision, in revision order.
  const explained = new Set<number>();
  for (const o of history)
    if (
      (o.output?.type === 'delete' && o.output.deleted > 0) ||
      (o.output?.type === 'txn' && o.output.succeeded)
    )
      explained.add(o.output.revision);
  // A revoke's deletes cannot be told from a delete's, and a revoke that deleted nothing answers
  // a revision some other change made: with revokes in the history, deletes stay unknown.
  const revokes = history.some((o) => o.input.type === 'revoke');
  const perRev = new Map<number, number>();
  for (const e of events) perRev.set(e.revision, (perRev.get(e.revision) ?? 0) + 1);
  const delEvents = events
    .filter(
      (e) => !revokes && e.type === 'delete' && !explained.has(e.revision) && perRev.get(e.revision) === 1,
    )
    .sort((a, b) => a.revision - b.revision);
  const unknownDeletes = new Map<string, EtcdOperation[]>();
  for (const o of history)
    if (!o.output && o.input.type === 'delete') {
      const l = unknownDeletes.get(o.input.key) ?? [];
      l.push(o);
      unknownDeletes.set(o.input.key, l);
    }
  for (const l of unknownDeletes.values()) l.sort((a, b) => a.call - b.call);
  const deleteAt = new Map<EtcdOperation, number>();
  /** Keys with a delete event no known response explains and no unknown delete was given. */
  const unexplainedKeys = new Set<string>();
  for (const e of delEvents) {
    const l = unknownDeletes.get(e.key);
    if (!l) continue;
    const by = returnBy(e.revision, Number.NEGATIVE_INFINITY);
    const k = l.findIndex((o) => o.call < by);
    if (k < 0) {
      unexplainedKeys.add(e.key);
      continue;
    }
    deleteAt.set(l[k]!, e.revision);
    l.splice(k, 1);
  }
  const out: EtcdOperation[] = [];
  for (const o of history) {
    if (o.output) {
      out.push(o);
      continue;
    }
    const i = o.input;
    if (i.type === 'delete') {
      const r = deleteAt.get(o);
      // Every delete event of this key is explained: this one deleted nothing (or never applied).
      if (r === undefined && !revokes && !unexplainedKeys.has(i.key)) continue;
      out.push(
        r === undefined
          ? o
          : { ...o, output: { type: 'delete', revision: r, deleted: 1 }, return: returnBy(r, o.call) },
      );
      continue;
    }
    if (i.type === 'put') {
      const r = applied.get(`${i.key}\u0000${i.value}`);
      if (r !== undefined)
        out.push({ ...o, output: { type: 'put', revision: r }, return: returnBy(r, o.call) });
      continue;
    }
    if (
      i.type === 'txn' &&
      i.success.length === 1 &&
      i.success[0]!.type === 'put' &&
      i.failure.every((f) => f.type === 'get')
    ) {
      const p = i.success[0]!;
      const r = applied.get(`${p.key}\u0000${p.value}`);
      if (r !== undefined)
        out.push({
          ...o,
          output: { type: 'txn', revision: r, succeeded: true, results: [{ type: 'put' }] },
          return: returnBy(r, o.call),
        });
      continue;
    }
    out.push(o);
  }
  return out;
}
