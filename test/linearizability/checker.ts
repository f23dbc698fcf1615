/**
 * A linearizability checker for recorded client histories.
 *
 * The search is Wing & Gong's (1993): walk the history's call/return entries in time order and try
 * to linearize, one at a time, any operation whose call comes before the first pending return;
 * backtrack when a return is reached whose operation is not linearized yet. Lowe's memoization
 * ("Testing for linearizability", 2017) prunes it: a configuration (the set of linearized
 * operations, as a bitset, plus the model state reached) that was already explored is never
 * explored again. P-compositionality (Herlihy & Wing: a history is linearizable iff each of its
 * per-object sub-histories is) lets the model split a history into partitions that are checked
 * one by one — this is the design of Porcupine (github.com/anishathalye/porcupine); the code here
 * is our own.
 *
 * Operations whose outcome is unknown (a timeout, an `indeterminate` error) are *optional*: their
 * response time is +infinity, so they may be linearized at any point after their call, and the
 * search succeeds once every operation with a known outcome is linearized — an unknown operation
 * that never took effect is simply never linearized. This is how etcd's robustness tests treat
 * failed requests.
 *
 * The search is bounded by a time limit; hitting it answers 'unknown', never 'ok'.
 */

/** One completed (or abandoned) client operation. Times are on one monotonic clock (ms). */
export interface Operation<I, O> {
  readonly clientId: number;
  readonly input: I;
  /** Invocation time. */
  readonly call: number;
  /** The response, or `undefined` when the outcome is unknown (the op may or may not have applied). */
  readonly output: O | undefined;
  /** Response time; ignored (treated as +infinity) when `output` is undefined. */
  readonly return: number;
}

/**
 * A sequential specification. `step` is deterministic: it answers the state after applying `input`
 * when `output` is what the model would answer (or `output` is undefined: unknown outcome), else
 * `undefined` (this output is impossible from this state).
 */
export interface Model<S, I, O> {
  init(): S;
  step(state: S, input: I, output: O | undefined): S | undefined;
  /** A string equal for equal states (the memoization key). */
  key(state: S): string;
  /**
   * Optional: a number ordering the candidates of a configuration (lower tried first), e.g. the
   * revision an etcd response carries. Speed only: every candidate is still tried.
   */
  hint?(input: I, output: O): number;
  /**
   * Optional monotone level, for pruning: `level(state)` never decreases along any step, and an
   * operation with a known outcome can only step from a state whose level is at most
   * `maxLevel(input, output)` (etcd: the store revision, and the revision a response carries —
   * minus one for a write). Then an unknown-outcome operation is never placed where it would lift
   * the level past a known operation not yet placed: that known operation could never be placed
   * after it. Sound (it only cuts branches that cannot succeed); it confines unknown writes to
   * the revision gaps the known ones leave, which is what keeps an illegal history with many
   * unknown writes from exhausting the time limit.
   */
  level?(state: S): number;
  maxLevel?(input: I, output: O): number;
  /** P-compositionality: split a history into independently checkable parts (default: one). */
  partition?(ops: readonly Operation<I, O>[]): Operation<I, O>[][];
  /** What the model would answer to `input` in `state` (for the failure report). */
  expected?(state: S, input: I): string;
  describeInput?(input: I): string;
  describeOutput?(output: O | undefined): string;
  describeState?(state: S): string;
}

export type CheckResult =
  | { result: 'ok'; partitions: number; ops: number; elapsedMs: number }
  | { result: 'unknown'; partitions: number; ops: number; elapsedMs: number; reason: string }
  | {
      result: 'illegal';
      partitions: number;
      ops: number;
      elapsedMs: number;
      /** The failing window as a readable timeline. */
      report: string;
    };

export interface CheckOptions {
  /** Give up after this long and answer 'unknown' (default 10 s). */
  timeoutMs?: number;
  /** Most memoized configurations per partition before answering 'unknown' (default 5,000,000). */
  cacheEntriesMax?: number;
}

interface Entry {
  /** Index of the operation in its partition. */
  readonly id: number;
  readonly isCall: boolean;
  readonly time: number;
  prev: Entry | undefined;
  next: Entry | undefined;
  /** For a call: its return entry. */
  match: Entry | undefined;
}

/** Builds the doubly linked list of entries in time order; on a tie, calls come first (concurrent). */
function makeEntries<I, O>(ops: readonly Operation<I, O>[]): Entry {
  const list: Entry[] = [];
  ops.forEach((op, id) => {
    const ret = op.output === undefined ? Number.POSITIVE_INFINITY : op.return;
    if (!(ret >= op.call)) throw new Error(`operation ${id} returns (${ret}) before its call (${op.call})`);
    const c: Entry = { id, isCall: true, time: op.call, prev: undefined, next: undefined, match: undefined };
    const r: Entry = { id, isCall: false, time: ret, prev: undefined, next: undefined, match: undefined };
    c.match = r;
    list.push(c, r);
  });
  list.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.id - b.id : a.isCall ? -1 : 1));
  const head: Entry = {
    id: -1,
    isCall: false,
    time: Number.NEGATIVE_INFINITY,
    prev: undefined,
    next: undefined,
    match: undefined,
  };
  let last = head;
  for (const e of list) {
    last.next = e;
    e.prev = last;
    last = e;
  }
  return head;
}

/** Unlinks a call entry and its return entry. */
function lift(e: Entry): void {
  e.prev!.next = e.next;
  if (e.next) e.next.prev = e.prev;
  const m = e.match!;
  m.prev!.next = m.next;
  if (m.next) m.next.prev = m.prev;
}

/** Relinks what `lift` unlinked (in reverse order). */
function unlift(e: Entry): void {
  const m = e.match!;
  m.prev!.next = m;
  if (m.next) m.next.prev = m;
  e.prev!.next = e;
  if (e.next) e.next.prev = e;
}

/** 32-bit Zobrist keys, one per operation, so the bitset's hash updates in O(1). */
function zobrist(n: number): Uint32Array {
  const z = new Uint32Array(n);
  let s = 0x2545f491;
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b9) | 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    z[i] = (x ^ (x >>> 16)) >>> 0;
  }
  return z;
}

type PartResult<S> =
  | { result: 'ok' }
  | { result: 'unknown'; reason: string }
  | {
      result: 'illegal';
      /** The deepest configuration reached: its state and linearized set. */
      state: S;
      linearized: Uint32Array;
      /** The operation whose response could not be explained. */
      stuck: number;
    };

const timeCheckEvery = 1024;
/** Focused search: the most unknown ops chained after one before a known op must step. */
const focusChainMax = 0;
/** Focused search: how many of the latest unknown candidates a chain may use. */
const focusRecentMax = 4;

function checkPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  deadline: number,
  cacheEntriesMax: number,
  focused: boolean,
): PartResult<S> {
  const n = ops.length;
  const words = (n + 31) >>> 5;
  const bits = new Uint32Array(words);
  const z = zobrist(n);
  let hash = 0;
  let required = 0;
  for (const op of ops) if (op.output !== undefined) required++;
  if (required === 0) return { result: 'ok' };
  let linearizedRequired = 0;
  const hints = ops.map((op, i) =>
    op.output !== undefined && model.hint ? model.hint(op.input, op.output) : i,
  );
  // Known-outcome ops by their max level, ascending (see Model.level).
  const leveled = model.level && model.maxLevel ? model : undefined;
  const maxLevels = ops.map((op) =>
    leveled && op.output !== undefined ? leveled.maxLevel!(op.input, op.output) : Number.POSITIVE_INFINITY,
  );
  const byLevel = ops
    .map((_, i) => i)
    .filter((i) => Number.isFinite(maxLevels[i]!))
    .sort((a, b) => maxLevels[a]! - maxLevels[b]!);
  const isLinearized = (id: number) => ((bits[id >>> 5]! >>> (id & 31)) & 1) === 1;
  /** False when `next` (reached by placing an unknown op) leaves a known op below its level. */
  const levelOk = (next: S): boolean => {
    if (!leveled) return true;
    const lv = leveled.level!(next);
    for (const i of byLevel) {
      if (isLinearized(i)) continue;
      return lv <= maxLevels[i]!;
    }
    return true;
  };
  // Memo: (bitset hash | state key) → the bitsets seen with that hash (compared in full on a hit).
  const cache = new Map<string, Uint32Array[]>();
  let cacheSize = 0;
  const seen = (stateKey: string): boolean => {
    const k = `${hash}|${stateKey}`;
    const list = cache.get(k);
    if (list) {
      for (const b of list) {
        let eq = true;
        for (let i = 0; i < words; i++)
          if (b[i] !== bits[i]) {
            eq = false;
            break;
          }
        if (eq) return true;
      }
      list.push(bits.slice());
    } else cache.set(k, [bits.slice()]);
    cacheSize++;
    return false;
  };
  const flip = (id: number) => {
    bits[id >>> 5]! ^= 1 << (id & 31);
    hash = (hash ^ z[id]!) >>> 0;
  };

  const head = makeEntries(ops);
  /**
   * The candidates of the current configuration: the calls before its first pending return. Known
   * outcomes come first, in the model's hint order (etcd: by revision) or else time order; then the
   * unknown-outcome ones, the most recently invoked first. An unknown write is thus linearized only
   * where the history needs it (a revision or value that cannot be explained without it), and the
   * latest one — the likeliest — is tried first. Every candidate is tried before backtracking, so
   * the order changes only the speed, never the answer.
   */
  const candidates = (): { cands: Entry[]; known: number; stuck: number } => {
    const known: Entry[] = [];
    const unknown: Entry[] = [];
    let e = head.next;
    for (; e?.isCall; e = e.next) (ops[e.id]!.output === undefined ? unknown : known).push(e);
    known.sort((x, y) => hints[x.id]! - hints[y.id]! || x.time - y.time);
    unknown.reverse();
    return { cands: [...known, ...unknown], known: known.length, stuck: e ? e.id : -1 };
  };
  // In a focused search an unknown-outcome op is linearized only where a known-outcome candidate
  // can step right after it, or after a chain of at most `focusChainMax` more of the latest
  // `focusRecentMax` unknown candidates. That finds the linearization of a correct history quickly
  // but misses one where more unknown ops took effect back to back, so a focused search that fails
  // proves nothing and the caller runs the complete one.
  const enables = (after: S, cands: Entry[], known: number, chain: Entry[]): boolean => {
    for (let i = 0; i < known; i++) {
      const o = ops[cands[i]!.id]!;
      if (model.step(after, o.input, o.output) !== undefined) return true;
    }
    if (chain.length > focusChainMax) return false;
    const end = Math.min(cands.length, known + focusRecentMax);
    for (let i = known; i < end; i++) {
      const u = cands[i]!;
      if (chain.includes(u)) continue;
      const s2 = model.step(after, ops[u.id]!.input, undefined);
      if (s2 !== undefined && enables(s2, cands, known, [...chain, u])) return true;
    }
    return false;
  };

  type Frame = { entry: Entry; state: S; cands: Entry[]; known: number; stuck: number; idx: number };
  const stack: Frame[] = [];
  let state = model.init();
  let cur = candidates();
  let idx = 0;
  let steps = 0;
  let best = { depth: -1, state, bits: bits.slice(), stuck: -1 };

  for (;;) {
    if (++steps % timeCheckEvery === 0) {
      if (performance.now() > deadline) return { result: 'unknown', reason: 'time limit reached' };
      if (cacheSize > cacheEntriesMax)
        return { result: 'unknown', reason: `memo cache passed ${cacheEntriesMax} configurations` };
    }
    // A focused search tries only the latest `focusRecentMax` unknown candidates: unknown writes
    // that never took effect stay pending to the end and would otherwise be retried at every
    // dead end. An older one that did take effect late is found by the complete search.
    const end = focused ? Math.min(cur.cands.length, cur.known + focusRecentMax) : cur.cands.length;
    if (idx < end) {
      const entry = cur.cands[idx]!;
      const op = ops[entry.id]!;
      const next = model.step(state, op.input, op.output);
      // An unknown-outcome op that changes nothing here is never placed here: it is optional, so
      // any linearization that places it can leave it out (each such op would otherwise double
      // the configurations an illegal history must exhaust).
      if (
        next !== undefined &&
        (op.output !== undefined || (levelOk(next) && model.key(next) !== model.key(state))) &&
        (!focused || idx < cur.known || enables(next, cur.cands, cur.known, [entry]))
      ) {
        flip(entry.id);
        if (!seen(model.key(next))) {
          stack.push({ entry, state, ...cur, idx });
          state = next;
          if (op.output !== undefined && ++linearizedRequired === required) return { result: 'ok' };
          lift(entry);
          cur = candidates();
          idx = 0;
          continue;
        }
        flip(entry.id);
      }
      idx++;
      continue;
    }
    // No candidate left: a dead end. Remember the deepest one (its first pending return is the
    // operation no order could explain) and backtrack.
    if (stack.length > best.depth)
      best = { depth: stack.length, state, bits: bits.slice(), stuck: cur.stuck };
    const top = stack.pop();
    if (!top) return { result: 'illegal', state: best.state, linearized: best.bits, stuck: best.stuck };
    if (ops[top.entry.id]!.output !== undefined) linearizedRequired--;
    flip(top.entry.id);
    state = top.state;
    unlift(top.entry);
    cur = { cands: top.cands, known: top.known, stuck: top.stuck };
    idx = top.idx + 1;
  }
}

function fmtTime(t: number, t0: number): string {
  return Number.isFinite(t) ? `${(t - t0).toFixed(3)}ms` : '∞';
}

/**
 * The failing window: the operation whose response no linearization could explain, every
 * operation concurrent with it that was not linearized at the deepest point the search reached,
 * and the last few linearized operations before it, in time order.
 */
function failureReport<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  r: Extract<PartResult<S>, { result: 'illegal' }>,
): string {
  const isLin = (i: number) => ((r.linearized[i >>> 5]! >>> (i & 31)) & 1) === 1;
  const stuck = ops[r.stuck]!;
  const overlaps = (op: Operation<I, O>) =>
    op.call <= stuck.return && (op.output === undefined ? true : op.return >= stuck.call);
  const pending: number[] = [];
  const recent: number[] = [];
  ops.forEach((op, i) => {
    if (!isLin(i) && overlaps(op) && op.call <= stuck.return) pending.push(i);
  });
  const windowStart = Math.min(...pending.map((i) => ops[i]!.call));
  ops.forEach((op, i) => {
    if (isLin(i) && op.output !== undefined && op.return <= windowStart) recent.push(i);
  });
  recent.sort((a, b) => ops[a]!.return - ops[b]!.return);
  const context = recent.slice(-3);
  const shown = [...context, ...pending].sort((a, b) => ops[a]!.call - ops[b]!.call);
  const t0 = Math.min(...shown.map((i) => ops[i]!.call));
  const dIn = (i: I) => (model.describeInput ? model.describeInput(i) : JSON.stringify(i));
  const dOut = (o: O | undefined) =>
    model.describeOutput ? model.describeOutput(o) : o === undefined ? 'unknown outcome' : JSON.stringify(o);
  const lines: string[] = [];
  lines.push(
    `not linearizable: no order of the ${pending.length} operation(s) pending at the deepest point explains op #${r.stuck}'s response`,
  );
  if (model.describeState) lines.push(`model state there: ${model.describeState(r.state)}`);
  lines.push(`timeline (times relative to ${t0.toFixed(3)} ms; * = linearized before the window):`);
  for (const i of shown) {
    const op = ops[i]!;
    const exp =
      !isLin(i) && model.expected ? `   model expects now: ${model.expected(r.state, op.input)}` : '';
    lines.push(
      `${isLin(i) ? '*' : i === r.stuck ? '!' : ' '} #${i} client ${op.clientId} [${fmtTime(op.call, t0)} .. ${fmtTime(
        op.output === undefined ? Number.POSITIVE_INFINITY : op.return,
        t0,
      )}] ${dIn(op.input)} -> ${dOut(op.output)}${exp}`,
    );
  }
  return lines.join('\n');
}

/** Checks a history against a model; see the file comment for the algorithm and its bounds. */
export function checkOperations<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  opts: CheckOptions = {},
): CheckResult {
  const start = performance.now();
  const deadline = start + (opts.timeoutMs ?? 10_000);
  const cacheEntriesMax = opts.cacheEntriesMax ?? 5_000_000;
  const parts = model.partition ? model.partition(history) : [history.slice()];
  const base = { partitions: parts.length, ops: history.length };
  let unknown: string | undefined;
  for (const part of parts) {
    // First the focused search (fast on correct histories); if it finds no linearization, the
    // complete one decides (see checkPartition).
    let r = checkPartition(model, part, deadline, cacheEntriesMax, true);
    if (r.result === 'illegal' && part.some((o) => o.output === undefined))
      r = checkPartition(model, part, deadline, cacheEntriesMax, false);
    if (r.result === 'illegal')
      return {
        result: 'illegal',
        ...base,
        elapsedMs: performance.now() - start,
        report: failureReport(model, part, r),
      };
    // Keep checking the other partitions: one of them may still prove the history illegal.
    if (r.result === 'unknown') {
      unknown = r.reason;
      if (performance.now() > deadline) break;
    }
  }
  const elapsedMs = performance.now() - start;
  if (unknown !== undefined) return { result: 'unknown', ...base, elapsedMs, reason: unknown };
  return { result: 'ok', ...base, elapsedMs };
}
