import { describe, expect, it } from 'vitest';
import { checkOperations, type Model, type Operation } from './checker.js';
import {
  type EtcdInput,
  type EtcdOperation,
  type EtcdOutput,
  etcdModel,
  resolveFromEvents,
  resolveObservedWrites,
} from './model.js';
import { op } from './recorder.js';
import { synthesize, synthesizeWithEvents } from './synth.js';

const put = (key: string, value: string): EtcdInput => ({ type: 'put', key, value });
const get = (key: string): EtcdInput => ({ type: 'get', key });
const del = (key: string): EtcdInput => ({ type: 'delete', key });
const cas = (key: string, mod: number, value: string): EtcdInput => ({
  type: 'txn',
  compare: [{ key, target: 'mod', result: '=', value: mod }],
  success: [{ type: 'put', key, value }],
  failure: [{ type: 'get', key }],
});
const putOk = (revision: number): EtcdOutput => ({ type: 'put', revision });
const got = (revision: number, value?: string, mod = 0, create = mod, version = 1): EtcdOutput => ({
  type: 'get',
  revision,
  kv: value === undefined ? undefined : { value, mod, create, version },
});
const casOk = (revision: number): EtcdOutput => ({
  type: 'txn',
  revision,
  succeeded: true,
  results: [{ type: 'put' }],
});

function check(h: EtcdOperation[]) {
  return checkOperations(etcdModel, h, { timeoutMs: 5000 });
}

describe('linearizability checker: hand-written histories', () => {
  it('accepts sequential and concurrent linearizable histories', () => {
    expect(check([]).result).toBe('ok');
    const seq = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(1, 2, 3, get('x'), got(2, 'a', 2)),
      op(0, 4, 5, put('x', 'b'), putOk(3)),
      op(1, 6, 7, get('x'), got(3, 'b', 3, 2, 2)),
      op(1, 8, 9, del('x'), { type: 'delete', revision: 4, deleted: 1 }),
      op(0, 10, 11, get('x'), got(4)),
    ];
    expect(check(seq).result).toBe('ok');
    // A read concurrent with a write may see either side of it, and two reads may disagree as long
    // as an order exists: the first read comes before the write, the second after.
    const conc = [
      op(0, 0, 10, put('x', 'a'), putOk(2)),
      op(1, 1, 2, get('x'), got(1)),
      op(2, 3, 4, get('x'), got(2, 'a', 2)),
      op(1, 5, 6, get('x'), got(2, 'a', 2)),
    ];
    expect(check(conc).result).toBe('ok');
  });

  it('rejects a stale read', () => {
    const h = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(0, 2, 3, put('x', 'b'), putOk(3)),
      op(1, 4, 5, get('x'), got(2, 'a', 2)),
    ];
    const r = check(h);
    expect(r.result).toBe('illegal');
    if (r.result === 'illegal') {
      expect(r.report).toContain("get x -> 'a'");
      expect(r.report).toContain('model expects now');
    }
  });

  it('rejects a lost write (an acknowledged put that a later read does not see)', () => {
    const h = [op(0, 0, 1, put('x', 'a'), putOk(2)), op(1, 2, 3, get('x'), got(2))];
    expect(check(h).result).toBe('illegal');
  });

  it('rejects a read of a value never written', () => {
    const h = [op(0, 0, 1, put('x', 'a'), putOk(2)), op(1, 0.5, 3, get('x'), got(2, 'zzz', 2))];
    expect(check(h).result).toBe('illegal');
  });

  it('rejects the store revision going back', () => {
    const h = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(0, 2, 3, put('y', 'b'), putOk(3)),
      op(1, 4, 5, get('z'), got(2)),
    ];
    expect(check(h).result).toBe('illegal');
    // ...while a read concurrent with the second put may still be served at revision 2.
    const ok = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(0, 2, 6, put('y', 'b'), putOk(3)),
      op(1, 4, 5, get('z'), got(2)),
    ];
    expect(check(ok).result).toBe('ok');
  });

  it('rejects a CAS that succeeded twice on the same mod revision', () => {
    const h = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(1, 2, 5, cas('x', 2, 'c1'), casOk(3)),
      op(2, 3, 6, cas('x', 2, 'c2'), casOk(4)),
    ];
    expect(check(h).result).toBe('illegal');
    const once = [
      op(0, 0, 1, put('x', 'a'), putOk(2)),
      op(1, 2, 5, cas('x', 2, 'c1'), casOk(3)),
      op(2, 3, 6, cas('x', 2, 'c2'), {
        type: 'txn',
        revision: 3,
        succeeded: false,
        results: [{ type: 'get', kv: { value: 'c1', mod: 3, create: 2, version: 2 } }],
      }),
    ];
    expect(check(once).result).toBe('ok');
  });

  it('counts revisions as etcd does: a delete of a missing key and a failed read-only txn do not bump', () => {
    const h = [
      op(0, 0, 1, del('x'), { type: 'delete', revision: 1, deleted: 0 }),
      op(0, 2, 3, cas('x', 5, 'v'), {
        type: 'txn',
        revision: 1,
        succeeded: false,
        results: [{ type: 'get', kv: undefined }],
      }),
      op(0, 4, 5, put('x', 'a'), putOk(2)),
    ];
    expect(check(h).result).toBe('ok');
    const bumped = [op(0, 0, 1, del('x'), { type: 'delete', revision: 2, deleted: 0 })];
    expect(check(bumped).result).toBe('illegal');
  });

  it('lets an unknown-outcome write apply at any later point, or never', () => {
    const unknownPut = op(0, 0, 1, put('x', 'a'), undefined);
    // Never applied:
    expect(check([unknownPut, op(1, 5, 6, get('x'), got(1))]).result).toBe('ok');
    // Applied long after its call (its response time is +infinity):
    expect(
      check([unknownPut, op(1, 5, 6, get('x'), got(1)), op(1, 7, 8, get('x'), got(2, 'a', 2))]).result,
    ).toBe('ok');
    // Once seen, it cannot be undone:
    expect(
      check([unknownPut, op(1, 5, 6, get('x'), got(2, 'a', 2)), op(1, 7, 8, get('x'), got(1))]).result,
    ).toBe('illegal');
    // A later write's revision shows it applied, so a read after that must see it:
    expect(
      check([unknownPut, op(1, 5, 6, put('y', 'b'), putOk(3)), op(1, 7, 8, get('x'), got(3))]).result,
    ).toBe('illegal');
  });

  it("answers 'unknown', never 'ok', when the time limit is hit", () => {
    const h = synthesize({ seed: 3, ops: 3000, unknownRate: 0.02 });
    const r = checkOperations(etcdModel, h, { timeoutMs: 0 });
    expect(r.result).toBe('unknown');
  });
});

describe('linearizability checker: leases', () => {
  const grant = (lease: string): EtcdInput => ({ type: 'grant', lease });
  const revoke = (lease: string): EtcdInput => ({ type: 'revoke', lease });
  const putL = (key: string, value: string, lease: string): EtcdInput => ({ type: 'put', key, value, lease });
  const granted: EtcdOutput = { type: 'grant', revision: 0 };
  const revoked = (revision: number): EtcdOutput => ({ type: 'revoke', revision, found: true });
  const withLease = (revision: number, value: string, mod: number, lease: string): EtcdOutput => ({
    type: 'get',
    revision,
    kv: { value, mod, create: mod, version: 1, lease },
  });
  // grant 7; put x with it (rev 2); put y without (rev 3); revoke 7 deletes x (rev 4).
  const base = [
    op(0, 0, 1, grant('7'), granted),
    op(0, 2, 3, putL('x', 'a', '7'), putOk(2)),
    op(1, 4, 5, put('y', 'b'), putOk(3)),
    op(1, 6, 7, get('x'), withLease(3, 'a', 2, '7')),
    op(0, 8, 9, revoke('7'), revoked(4)),
  ];

  it('accepts a revoke that deletes the attached keys at one revision', () => {
    const h = [
      ...base,
      op(1, 10, 11, get('x'), got(4)),
      op(1, 12, 13, get('y'), got(4, 'b', 3)),
      // A put naming the revoked lease is refused; a revoke of it answers 'not found'.
      op(0, 14, 15, putL('x', 'c', '7'), { type: 'put', revision: 0, leaseMissing: true }),
      op(0, 16, 17, revoke('7'), { type: 'revoke', revision: 0, found: false }),
    ];
    expect(check(h).result).toBe('ok');
  });

  it('rejects a key of a revoked lease read back after the revoke was acknowledged', () => {
    expect(check([...base, op(1, 10, 11, get('x'), withLease(4, 'a', 2, '7'))]).result).toBe('illegal');
  });

  it('rejects a put acknowledged with a lease that was never granted or already revoked', () => {
    expect(check([op(0, 0, 1, putL('x', 'a', '9'), putOk(2))]).result).toBe('illegal');
    expect(check([...base, op(0, 10, 11, putL('z', 'c', '7'), putOk(5))]).result).toBe('illegal');
  });

  it('rejects a revoke that bumps the revision without deleting anything, or reports the wrong lease', () => {
    const empty = [op(0, 0, 1, grant('8'), granted), op(0, 2, 3, revoke('8'), revoked(2))];
    expect(check(empty).result).toBe('illegal');
    expect(check([op(0, 0, 1, grant('8'), granted), op(0, 2, 3, revoke('8'), revoked(1))]).result).toBe('ok');
    expect(check([...base.slice(0, 3), op(1, 6, 7, get('x'), withLease(3, 'a', 2, '8'))]).result).toBe(
      'illegal',
    );
  });

  it('lets a grant of unknown outcome explain a later put with its lease', () => {
    const h = [op(0, 0, 1, grant('5'), undefined), op(1, 2, 3, putL('x', 'a', '5'), putOk(2))];
    expect(check(h).result).toBe('ok');
  });

  it('checks a generated 5,000-operation history with leases (2 % unknown outcomes)', () => {
    const h = resolveObservedWrites(
      synthesize({ seed: 3, ops: 5000, clients: 8, keys: 10, unknownRate: 0.02, leases: true }),
    );
    const kinds = new Set(h.map((o) => o.input.type));
    expect(kinds).toContain('grant');
    expect(kinds).toContain('revoke');
    expect(h.some((o) => o.output?.type === 'revoke' && o.output.found && o.output.revision > 0)).toBe(true);
    const r = checkOperations(etcdModel, h, { timeoutMs: 15_000 });
    console.log(`checker: ${h.length} ops with leases → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`);
    expect(r.result).toBe('ok');
  }, 30_000);
});

describe('linearizability checker: P-compositionality and unknown-write resolution', () => {
  // Per-key registers (no global revision), so a history splits by key.
  type RIn = { key: string; write?: string };
  const registers: Model<ReadonlyMap<string, string>, RIn, string> = {
    init: () => new Map(),
    step(s, i, o) {
      if (i.write !== undefined) return new Map(s).set(i.key, i.write);
      return o === undefined || o === (s.get(i.key) ?? '') ? s : undefined;
    },
    key: (s) => JSON.stringify([...s].sort()),
    partition(ops) {
      const by = new Map<string, Operation<RIn, string>[]>();
      for (const o of ops) by.set(o.input.key, [...(by.get(o.input.key) ?? []), o]);
      return [...by.values()];
    },
  };
  const rop = (c: number, t0: number, t1: number, input: RIn, output: string) => ({
    clientId: c,
    call: t0,
    return: t1,
    input,
    output,
  });

  it('checks each key on its own and finds the anomaly in one partition', () => {
    const ok = [
      rop(0, 0, 1, { key: 'a', write: '1' }, ''),
      rop(1, 0, 1, { key: 'b', write: '2' }, ''),
      rop(0, 2, 3, { key: 'a' }, '1'),
      rop(1, 2, 3, { key: 'b' }, '2'),
    ];
    const r = checkOperations(registers, ok);
    expect(r).toMatchObject({ result: 'ok', partitions: 2 });
    const bad = [...ok, rop(2, 4, 5, { key: 'b' }, '')];
    expect(checkOperations(registers, bad)).toMatchObject({ result: 'illegal', partitions: 2 });
  });

  it('resolves an unknown put that a read observed, and keeps the history checkable', () => {
    const h = [
      op(0, 0, 1, put('x', 'a'), undefined),
      op(1, 5, 6, get('x'), got(2, 'a', 2)),
      op(1, 7, 8, put('y', 'b'), putOk(3)),
    ];
    const resolved = resolveObservedWrites(h);
    expect(resolved[0]).toMatchObject({ output: { type: 'put', revision: 2 }, return: 6 });
    expect(check(resolved).result).toBe('ok');
    // Resolved, it is no longer optional: a read before the observer may still miss it, one
    // after the observer may not.
    expect(check(resolveObservedWrites([...h, op(2, 9, 10, get('x'), got(3))])).result).toBe('illegal');
  });
});

describe('linearizability checker: generated histories', () => {
  it('checks a 10,000-operation history of 8 clients on 10 keys (0.5 % unknown outcomes)', () => {
    const h = synthesize({ seed: 11, ops: 10_000, clients: 8, keys: 10, unknownRate: 0.005 });
    const unknown = h.filter((o) => o.output === undefined).length;
    expect(unknown / h.length).toBeLessThanOrEqual(0.005);
    const r = checkOperations(etcdModel, h, { timeoutMs: 25_000 });
    console.log(
      `checker: ${h.length} ops (${unknown} unknown) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    expect(r.result).toBe('ok');
  });

  // The target: 10,000 operations, 8 clients, 10 keys, 2 % unknown outcomes, checked in under
  // 10 s (the checker's own limit: past it the answer is 'unknown', and the test fails). Unknown
  // writes that a later read saw are resolved first, as etcd's robustness tests patch theirs.
  it('checks a 10,000-operation history with 2 % unknown outcomes in under 10 s', () => {
    const raw = synthesize({ seed: 11, ops: 10_000, clients: 8, keys: 10, unknownRate: 0.02 });
    const rawUnknown = raw.filter((o) => o.output === undefined).length;
    expect(rawUnknown / raw.length).toBeLessThanOrEqual(0.02);
    expect(rawUnknown / raw.length).toBeGreaterThan(0.01);
    const h = resolveObservedWrites(raw);
    const unknown = h.filter((o) => o.output === undefined).length;
    const r = checkOperations(etcdModel, h, { timeoutMs: 10_000 });
    console.log(
      `checker: ${h.length} ops (${rawUnknown} unknown, ${unknown} after resolution) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    expect(r.result).toBe('ok');
  }, 20_000);

  // The known anomaly, bounded: an illegal history with unknown writes can exhaust the complete
  // search and come out 'unknown'. Unknown writes are confined to the revision gaps the known
  // writes leave and never placed where they change nothing, which makes 2,000 operations with
  // 2 % unknown writes answer 'illegal' in a few seconds; 10,000 operations at 2 % still come out
  // 'unknown' in 10 s (docs/reliability.md), which is why long nemesis runs check 1-minute rounds.
  // Unknown writes resolved from the store's event log (as etcd's robustness tests do from the
  // watch stream): 10,000 operations with 2 % and 5 % unknown outcomes get verdicts, legal and
  // illegal, where resolving from reads alone leaves the illegal ones 'unknown'.
  for (const rate of [0.02, 0.05])
    it(`10,000 operations, ${rate * 100} % unknown writes, resolved from the event log: ok, and 'illegal' with one put dropped`, () => {
      const { history: raw, events } = synthesizeWithEvents({
        seed: 6,
        ops: 10_000,
        clients: 8,
        keys: 10,
        unknownRate: rate,
      });
      const rawUnknown = raw.filter((o) => o.output === undefined).length;
      const h = resolveFromEvents(resolveObservedWrites(raw), events);
      const unknown = h.filter((o) => o.output === undefined).length;
      const ok = checkOperations(etcdModel, h, { timeoutMs: 10_000 });
      const mid = h.findIndex((o, i) => i > h.length / 2 && o.output?.type === 'put');
      const bad = [...h.slice(0, mid), ...h.slice(mid + 1)];
      const illegal = checkOperations(etcdModel, bad, { timeoutMs: 10_000 });
      console.log(
        `checker: 10,000 ops, ${rawUnknown} unknown (${unknown} after resolving from ${events.length} events) → ${ok.result} in ${ok.elapsedMs.toFixed(0)} ms; one put dropped → ${illegal.result} in ${illegal.elapsedMs.toFixed(0)} ms`,
      );
      expect(rawUnknown).toBeGreaterThan(rate * 10_000 * 0.3);
      expect(ok.result).toBe('ok');
      expect(illegal.result).toBe('illegal');
    }, 60_000);

  it("an injected anomaly among 2 % unknown writes (2,000 ops) is 'illegal', not 'unknown'", () => {
    const raw = resolveObservedWrites(
      synthesize({ seed: 6, ops: 2000, clients: 8, keys: 10, unknownRate: 0.02 }),
    );
    // Drop one acknowledged put in the middle: later revisions and reads cannot be explained.
    const mid = raw.findIndex((o, i) => i > raw.length / 2 && o.output?.type === 'put');
    const h = [...raw.slice(0, mid), ...raw.slice(mid + 1)];
    const unknown = h.filter((o) => o.output === undefined).length;
    const r = checkOperations(etcdModel, h, { timeoutMs: 20_000 });
    console.log(
      `checker: ${h.length} ops, ${unknown} unknown, one put dropped → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    expect(unknown).toBeGreaterThan(10);
    expect(r.result).toBe('illegal');
  }, 60_000);
});
