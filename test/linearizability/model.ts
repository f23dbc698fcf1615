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
 * - `keepalive` answers whether the lease is live (a keep-alive of a lease that is gone answers
 *   "not found", TTL 0); it changes nothing the KV shows;
 * - expiry: a lease ends by itself at a time the client does not know, no earlier than `ttlMs`
 *   after the last grant or keep-alive of it that answered (etcd's lessor sets the expiry to the
 *   time it applied that request plus the TTL, and only ever moves it later — a leader change
 *   renews every lease). `addLeaseExpiries` adds to a history, per lease granted with a TTL, one
 *   `expire` operation of unknown outcome invoked at that bound: like every unknown-outcome
 *   operation it may apply at any point after its call, or never, and applied it is a revoke
 *   (attached keys deleted at one revision, the lease gone). Lease ids are not reused within a
 *   history (the workload's are unique).
 */
import { type CheckResult, checkOperations, type Model, type Operation } from './checker.js';

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
  /** `ttlMs`: the TTL asked for, in the history's time unit (only expiry needs it). */
  | { readonly type: 'grant'; readonly lease: string; readonly ttlMs?: number }
  | { readonly type: 'revoke'; readonly lease: string }
  | { readonly type: 'keepalive'; readonly lease: string }
  /** Not a client request: the lease ending by itself (always of unknown outcome; `addLeaseExpiries`). */
  | { readonly type: 'expire'; readonly lease: string }
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
  /**
   * `exists`: refused because the id is live already. `revision` is not compared (0 in the model).
   * `ttlMs`: the TTL granted (etcd may raise the one asked for to its minimum).
   */
  | { readonly type: 'grant'; readonly revision: number; readonly exists?: boolean; readonly ttlMs?: number }
  /** `found: false`: the lease was gone (etcd answers TTL 0 / "lease not found"). `ttlMs`: the TTL renewed. */
  | {
      readonly type: 'keepalive';
      readonly revision: number;
      readonly found: boolean;
      readonly ttlMs?: number;
    }
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

/** A state from its parts (the memo key derived). */
export function makeState(rev: number, kvs: ReadonlyMap<string, KvOut>, leases = noLeases): EtcdState {
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
  if (input.type === 'keepalive')
    return { state, output: { type: 'keepalive', revision: 0, found: state.leases.has(input.lease) } };
  if (input.type === 'revoke' || input.type === 'expire') {
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
  if (a.type === 'keepalive') return a.found === (b as typeof a).found;
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
  if (input.type === 'grant')
    return `grant lease ${input.lease}${input.ttlMs !== undefined ? ` ttl ${input.ttlMs}` : ''}`;
  if (input.type === 'revoke' || input.type === 'keepalive' || input.type === 'expire')
    return `${input.type} lease ${input.lease}`;
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
    case 'keepalive':
      return output.found ? 'renewed' : 'not found';
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
  if (output.type === 'grant' || output.type === 'keepalive') return undefined;
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
  const revokes = history.some((o) => o.input.type === 'revoke' || o.input.type === 'expire');
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

// ------------------------------------------------------------------------------------------------
// Lease expiry

/**
 * Adds the lease expiries a history allows (see the file comment): for each lease granted with a
 * TTL (`ttlMs` of the grant's answer, else of its request), one `expire` of unknown outcome invoked
 * at the earliest time it could happen — the latest call of the grant or of a keep-alive that
 * answered it live, plus the TTL that request set. It may apply then or at any later point, or
 * never; applied, it deletes the lease's keys as a revoke does. Bounded below by calls, not
 * returns: the server applied each request somewhere inside its interval, so the expiry it set is
 * at least the call plus the TTL. Keep-alives of unknown outcome only make the real expiry later,
 * so leaving them out keeps the bound sound. Expiries whose bound lies past the history's last
 * event are not added (they could only apply after everything).
 */
export function addLeaseExpiries(history: readonly EtcdOperation[]): EtcdOperation[] {
  const bound = new Map<string, number>();
  const ttlOf = new Map<string, number>();
  for (const o of history)
    if (o.input.type === 'grant') {
      const ttl = (o.output?.type === 'grant' ? o.output.ttlMs : undefined) ?? o.input.ttlMs;
      if (ttl === undefined || (o.output?.type === 'grant' && o.output.exists)) continue;
      ttlOf.set(o.input.lease, ttl);
      bound.set(o.input.lease, Math.max(bound.get(o.input.lease) ?? 0, o.call + ttl));
    }
  for (const o of history)
    if (o.input.type === 'keepalive' && o.output?.type === 'keepalive' && o.output.found) {
      const ttl = o.output.ttlMs ?? ttlOf.get(o.input.lease);
      if (ttl === undefined || !bound.has(o.input.lease)) continue;
      bound.set(o.input.lease, Math.max(bound.get(o.input.lease)!, o.call + ttl));
    }
  const end = Math.max(
    Number.NEGATIVE_INFINITY,
    ...history.map((o) => (o.output === undefined ? o.call : o.return)),
  );
  const out = [...history];
  let n = 0;
  for (const [lease, at] of bound) {
    if (at > end) continue;
    // Client ids below zero: not a client (the failure report shows them as such).
    out.push({
      clientId: -1 - n++,
      input: { type: 'expire', lease },
      call: at,
      output: undefined,
      return: at,
    });
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Per-key partitioning

/**
 * A create or mod revision in the per-key model: a revision (>= 1), or — written by an operation of
 * unknown outcome — negative: some revision above `-r` not known yet, pinned by the next read.
 */
function revMatches(model: number, got: number, readRev: number): boolean {
  return model >= 0 ? model === got : got > -model && got <= readRev;
}

/** A read's kv against the model's (pinning unknown revisions to what was read); false: mismatch. */
function pinKv(m: KvOut | undefined, g: KvOut | undefined, readRev: number): KvOut | undefined | false {
  if (!m || !g) return m === g ? undefined : false;
  if (m.value !== g.value || m.version !== g.version || (m.lease ?? '0') !== (g.lease ?? '0')) return false;
  if (!revMatches(m.create, g.create, readRev) || !revMatches(m.mod, g.mod, readRev)) return false;
  if (g.create > g.mod) return false;
  return g;
}

/** A compare on a kv whose revisions may be unknown: true, false, or undefined (cannot tell). */
function compare3(c: Cmp, kv: KvOut | undefined): boolean | undefined {
  if (c.target === 'value' || c.target === 'version') return compareOne(c, kv);
  const a = c.target === 'mod' ? (kv?.mod ?? 0) : (kv?.create ?? 0);
  if (a >= 0) return compareOne(c, kv);
  const lo = -a;
  const b = Number(c.value);
  switch (c.result) {
    case '=':
      return b <= lo ? false : undefined;
    case '!=':
      return b <= lo ? true : undefined;
    case '<':
      return b <= lo + 1 ? false : undefined;
    case '>':
      return b <= lo ? true : undefined;
  }
}

/** Revoke or expiry in the per-key model: the lease's keys here deleted, the lease gone. */
function endLease(state: EtcdState, lease: string, rev: number): EtcdState {
  const kvs = new Map([...state.kvs].filter(([, v]) => v.lease !== lease));
  const leases = new Set(state.leases);
  leases.delete(lease);
  return makeState(rev, kvs, leases);
}

/**
 * One step of the per-key model (see `etcdPerKeyModel`). The state's `rev` is a lower bound of the
 * store revision: the highest revision this partition's operations have seen. A known write at
 * revision R must come after it (R > rev), a read at R at or after it (R >= rev); then rev = R.
 */
function perKeyStep(
  state: EtcdState,
  input: EtcdInput,
  output: EtcdOutput | undefined,
): EtcdState | undefined {
  const lb = state.rev;
  switch (input.type) {
    case 'get': {
      if (!output) return state;
      if (output.type !== 'get' || output.revision < lb) return undefined;
      const p = pinKv(state.kvs.get(input.key), output.kv, output.revision);
      if (p === false) return undefined;
      const kvs = new Map(state.kvs);
      if (p) kvs.set(input.key, p);
      return makeState(output.revision, kvs, state.leases);
    }
    case 'put': {
      const live = input.lease === undefined || state.leases.has(input.lease);
      if (output?.type === 'put' && output.leaseMissing) return live ? undefined : state;
      if (!live) return output ? undefined : state;
      if (output && (output.type !== 'put' || output.revision <= lb)) return undefined;
      const rev = output ? output.revision : -lb;
      const old = state.kvs.get(input.key);
      const kvs = new Map(state.kvs);
      kvs.set(input.key, {
        value: input.value,
        create: old ? old.create : rev,
        mod: rev,
        version: old ? old.version + 1 : 1,
        ...(input.lease !== undefined ? { lease: input.lease } : {}),
      });
      return makeState(output ? output.revision : lb, kvs, state.leases);
    }
    case 'delete': {
      const had = state.kvs.has(input.key);
      if (output) {
        if (output.type !== 'delete' || output.deleted !== (had ? 1 : 0)) return undefined;
        if (had ? output.revision <= lb : output.revision < lb) return undefined;
      }
      const kvs = new Map(state.kvs);
      kvs.delete(input.key);
      return makeState(output ? output.revision : lb, had ? kvs : state.kvs, state.leases);
    }
    case 'grant': {
      const live = state.leases.has(input.lease);
      if (output && (output.type !== 'grant' || !!output.exists !== live)) return undefined;
      if (live) return state;
      return makeState(lb, state.kvs, new Set([...state.leases, input.lease]));
    }
    case 'keepalive': {
      if (output && (output.type !== 'keepalive' || output.found !== state.leases.has(input.lease)))
        return undefined;
      return state;
    }
    case 'revoke':
    case 'expire': {
      const live = state.leases.has(input.lease);
      if (!output) return live ? endLease(state, input.lease, lb) : state;
      if (output.type !== 'revoke' || output.found !== live) return undefined;
      if (!live) return state;
      const next = endLease(state, input.lease, output.revision);
      // Deleting keys here bumps the revision; deleting none here may still have bumped it
      // (keys of the lease in other partitions), so only R >= rev is required then.
      const deleted = next.kvs.size < state.kvs.size;
      if (deleted ? output.revision <= lb : output.revision < lb) return undefined;
      return next;
    }
    case 'txn': {
      if (output && output.type !== 'txn') return undefined;
      const cmps = input.compare.map((c) => compare3(c, state.kvs.get(c.key)));
      let succeeded: boolean | undefined = cmps.includes(false)
        ? false
        : cmps.every((r) => r === true)
          ? true
          : undefined;
      const kvs = new Map(state.kvs);
      if (output) {
        if (succeeded !== undefined && succeeded !== output.succeeded) return undefined;
        succeeded = output.succeeded;
        // An equality on a revision not known yet that held pins it.
        if (succeeded)
          for (const c of input.compare) {
            const kv = kvs.get(c.key);
            if (!kv || c.result !== '=' || (c.target !== 'mod' && c.target !== 'create')) continue;
            if (c.target === 'mod' && kv.mod < 0) kvs.set(c.key, { ...kv, mod: Number(c.value) });
            if (c.target === 'create' && kv.create < 0) kvs.set(c.key, { ...kv, create: Number(c.value) });
          }
      }
      // Unknown outcome, undecided compare: the success branch. `perKeyApplicable` admits such a
      // txn only with a read-only failure branch, whose effect (none) is leaving the op out.
      succeeded ??= true;
      const branch = succeeded ? input.success : input.failure;
      if (output && output.results.length !== branch.length) return undefined;
      const newRev = output ? output.revision : -lb;
      let changed = false;
      for (const [i, op] of branch.entries()) {
        const exp = output?.results[i];
        if (op.type === 'get') {
          if (!exp) continue;
          if (exp.type !== 'get') return undefined;
          const p = pinKv(kvs.get(op.key), exp.kv, newRev);
          if (p === false) return undefined;
          if (p) kvs.set(op.key, p);
        } else if (op.type === 'put') {
          if (exp && exp.type !== 'put') return undefined;
          const old = kvs.get(op.key);
          kvs.set(op.key, {
            value: op.value,
            create: old ? old.create : newRev,
            mod: newRev,
            version: old ? old.version + 1 : 1,
          });
          changed = true;
        } else {
          const had = kvs.has(op.key);
          if (exp && (exp.type !== 'delete' || exp.deleted !== (had ? 1 : 0))) return undefined;
          if (had) {
            kvs.delete(op.key);
            changed = true;
          }
        }
      }
      if (output && (changed ? output.revision <= lb : output.revision < lb)) return undefined;
      return makeState(output ? output.revision : lb, kvs, state.leases);
    }
  }
}

/** The keys an operation touches (none: a lease operation). */
function keysOf(input: EtcdInput): string[] {
  if (input.type === 'get' || input.type === 'put' || input.type === 'delete') return [input.key];
  if (input.type === 'txn')
    return [...input.compare.map((c) => c.key), ...[...input.success, ...input.failure].map((o) => o.key)];
  return [];
}

/**
 * Whether `etcdPerKeyModel` may check this history: every txn whose compare reads a revision
 * (mod or create) has a failure branch that only reads (so an undecidable compare of an
 * unknown-outcome txn can take the success branch: its failure is the same as leaving it out),
 * and no txn puts with a lease (not modelled).
 */
export function perKeyApplicable(history: readonly EtcdOperation[]): boolean {
  return history.every((o) => {
    const i = o.input;
    if (i.type !== 'txn') return true;
    if ([...i.success, ...i.failure].some((op) => op.type === 'put' && op.lease !== undefined)) return false;
    const readsRev = i.compare.some((c) => c.target === 'mod' || c.target === 'create');
    return !readsRev || i.failure.every((op) => op.type === 'get');
  });
}

/**
 * P-compositionality for etcd's KV: the history split into independently checked parts, one per
 * group of keys no txn spans (a txn over several keys joins them). Leases cross keys — a revoke or
 * expiry deletes every key attached — so each lease's grant, keep-alive, revoke and expiry
 * operations go into every part with a put naming that lease (and a lease no put names is a part
 * of its own). Each part is the projection of the whole history, so each part's check is a
 * necessary condition: an illegal part means an illegal history.
 */
export function partitionByKey(ops: readonly EtcdOperation[]): EtcdOperation[][] {
  const parent = new Map<string, string>();
  const find = (k: string): string => {
    let r = k;
    while (parent.get(r) !== r) r = parent.get(r)!;
    let x = k;
    while (parent.get(x) !== r) {
      const nx = parent.get(x)!;
      parent.set(x, r);
      x = nx;
    }
    return r;
  };
  for (const o of ops) {
    const ks = keysOf(o.input);
    for (const k of ks) if (!parent.has(k)) parent.set(k, k);
    for (let i = 1; i < ks.length; i++) {
      const a = find(ks[0]!);
      const b = find(ks[i]!);
      if (a !== b) parent.set(b, a);
    }
  }
  const parts = new Map<string, { ops: EtcdOperation[]; leases: Set<string> }>();
  const leaseOps = new Map<string, EtcdOperation[]>();
  for (const o of ops) {
    const ks = keysOf(o.input);
    if (ks.length === 0) {
      const lease = (o.input as { lease: string }).lease;
      const l = leaseOps.get(lease) ?? [];
      l.push(o);
      leaseOps.set(lease, l);
      continue;
    }
    const root = find(ks[0]!);
    let p = parts.get(root);
    if (!p) parts.set(root, (p = { ops: [], leases: new Set() }));
    p.ops.push(o);
    if (o.input.type === 'put' && o.input.lease !== undefined) p.leases.add(o.input.lease);
  }
  const named = new Set<string>();
  const out: EtcdOperation[][] = [];
  for (const p of parts.values()) {
    for (const l of p.leases) named.add(l);
    out.push([...p.ops, ...[...p.leases].flatMap((l) => leaseOps.get(l) ?? [])]);
  }
  for (const [l, lops] of leaseOps) if (!named.has(l)) out.push(lops);
  return out;
}

/**
 * The per-key model, starting at `initialRevision`: `partitionByKey`'s parts, each checked with the
 * store revision tracked as a lower bound (what the part has seen) and each write's revision taken
 * from its answer; a write of unknown outcome leaves its key's mod (and, for a new key, create)
 * revision unknown above the bound until a read pins it. It is a relaxation of `etcdModel` on
 * each part, so it never calls a linearizable history illegal; what it cannot see — the order of
 * revisions across keys — is `checkRevisionOrder`'s. Use it through `checkEtcdHistory`.
 */
export function etcdPerKeyModelAt(initialRevision: number): Model<EtcdState, EtcdInput, EtcdOutput> {
  const init = makeState(initialRevision, new Map());
  return {
    ...etcdModel,
    init: () => init,
    step: perKeyStep,
    partition: partitionByKey,
    expected: (s, input) => `(per key, revision at least ${s.rev}) ${describeOutput(apply(s, input).output)}`,
  };
}

/**
 * The cross-key half of the per-key check, on the answers alone (O(n log n)):
 * - no two operations that changed the store answer the same revision (each change is one
 *   revision);
 * - revisions never go back in real time: an operation invoked after another returned answers a
 *   revision at least that one's, and above it if it changed the store.
 * Returns a report of the first violation, or undefined.
 */
export function checkRevisionOrder(history: readonly EtcdOperation[]): string | undefined {
  type R = { i: number; rev: number; write: boolean; o: EtcdOperation };
  const rs: R[] = [];
  history.forEach((o, i) => {
    if (!o.output) return;
    const rev = revisionOf(o.output);
    if (rev === undefined) return;
    rs.push({ i, rev, o, write: isWriteOutput(o.input, o.output) });
  });
  const describe = (r: R) =>
    `#${r.i} client ${r.o.clientId} [${r.o.call.toFixed(3)} .. ${r.o.return.toFixed(3)}] ${describeInput(r.o.input)} -> ${describeOutput(r.o.output)}`;
  const byRev = new Map<number, R>();
  for (const r of rs) {
    if (!r.write) continue;
    const other = byRev.get(r.rev);
    if (other)
      return `not linearizable: two changes of the store answered revision ${r.rev}:\n  ${describe(other)}\n  ${describe(r)}`;
    byRev.set(r.rev, r);
  }
  const byReturn = [...rs].sort((a, b) => a.o.return - b.o.return);
  const byCall = [...rs].sort((a, b) => a.o.call - b.o.call);
  let k = 0;
  let best: R | undefined;
  for (const b of byCall) {
    while (k < byReturn.length && byReturn[k]!.o.return < b.o.call) {
      const a = byReturn[k++]!;
      if (!best || a.rev > best.rev) best = a;
    }
    if (best && (b.write ? b.rev <= best.rev : b.rev < best.rev))
      return `not linearizable: the store revision went back in real time — op #${best.i} answered revision ${best.rev} before op #${b.i} was invoked, which answered ${b.rev}${b.write ? ' for a change' : ''}:\n  ${describe(best)}\n  ${describe(b)}`;
  }
  return undefined;
}

/**
 * Checks an etcd history: with `perKey`, when the history allows it (`perKeyApplicable`), the
 * revision order across keys first and then each part alone (`etcdPerKeyModelAt`) — fast on long
 * multi-key histories, and a necessary condition only: an 'illegal' is definite, an 'ok' says
 * every part and the revision order are consistent (a linearization of each part exists), not that
 * one order explains all parts at once. Otherwise (the default) the exact search.
 */
export function checkEtcdHistory(
  history: readonly EtcdOperation[],
  o: { initialRevision?: number; timeoutMs?: number; perKey?: boolean } = {},
): CheckResult {
  const initial = o.initialRevision ?? 1;
  const opts = o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {};
  if (!o.perKey || !perKeyApplicable(history)) return checkOperations(etcdModelAt(initial), history, opts);
  const start = performance.now();
  const order = checkRevisionOrder(history);
  if (order !== undefined)
    return {
      result: 'illegal',
      partitions: 1,
      ops: history.length,
      elapsedMs: performance.now() - start,
      report: order,
    };
  return checkOperations(etcdPerKeyModelAt(initial), history, opts);
}
