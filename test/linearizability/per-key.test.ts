/**
 * The checker's per-key partitioning (P-compositionality for etcd's KV) and lease expiry in the
 * model: hand-written and generated histories, legal and illegal.
 */
import { describe, expect, it } from 'vitest';
import { checkOperations } from './checker.js';
import {
  addLeaseExpiries,
  checkEtcdHistory,
  checkRevisionOrder,
  type EtcdInput,
  type EtcdOperation,
  type EtcdOutput,
  etcdModel,
  partitionByKey,
  perKeyApplicable,
  resolveObservedWrites,
} from './model.js';
import { op } from './recorder.js';
import { type LeaseBug, synthesize, synthesizeLeaseExpiry } from './synth.js';

const put = (key: string, value: string, lease?: string): EtcdInput => ({
  type: 'put',
  key,
  value,
  ...(lease !== undefined ? { lease } : {}),
});
const get = (key: string): EtcdInput => ({ type: 'get', key });
const putOk = (revision: number): EtcdOutput => ({ type: 'put', revision });
const got = (
  revision: number,
  value?: string,
  mod = 0,
  create = mod,
  version = 1,
  lease?: string,
): EtcdOutput => ({
  type: 'get',
  revision,
  kv:
    value === undefined
      ? undefined
      : { value, mod, create, version, ...(lease !== undefined ? { lease } : {}) },
});
const grant = (lease: string, ttlMs: number): EtcdInput => ({ type: 'grant', lease, ttlMs });
const granted: EtcdOutput = { type: 'grant', revision: 0 };
const keepalive = (lease: string): EtcdInput => ({ type: 'keepalive', lease });
const renewed: EtcdOutput = { type: 'keepalive', revision: 0, found: true, ttlMs: 100 };
const gone: EtcdOutput = { type: 'keepalive', revision: 0, found: false };

/** The exact model, with the expiries the history allows. */
const checkExpiry = (h: EtcdOperation[]) =>
  checkOperations(etcdModel, addLeaseExpiries(h), { timeoutMs: 10_000 });

describe('lease expiry and keep-alive in the model', () => {
  // Lease 7 (TTL 100) granted at [0, 1], key x attached at revision 2.
  const base = [op(0, 0, 1, grant('7', 100), granted), op(0, 2, 3, put('x', 'a', '7'), putOk(2))];

  it('a key of a lease may disappear once the TTL has passed since the grant, never before', () => {
    expect(checkExpiry([...base, op(1, 150, 151, get('x'), got(3))]).result).toBe('ok');
    // Or stay: the server expires a lease when it gets to it.
    expect(checkExpiry([...base, op(1, 150, 151, get('x'), got(2, 'a', 2, 2, 1, '7'))]).result).toBe('ok');
    // Gone 50 after a grant of TTL 100, with no revoke: the lease was cut short.
    const early = checkExpiry([...base, op(1, 50, 51, get('x'), got(3))]);
    expect(early.result).toBe('illegal');
    // Without expiry in the model, the legal disappearance is illegal too: the model needs it.
    expect(checkOperations(etcdModel, [...base, op(1, 150, 151, get('x'), got(3))]).result).toBe('illegal');
  });

  it('a keep-alive that answered moves the earliest expiry to its call plus the TTL', () => {
    const renewedAt80 = [...base, op(0, 80, 81, keepalive('7'), renewed)];
    expect(checkExpiry([...renewedAt80, op(1, 150, 151, get('x'), got(3))]).result).toBe('illegal');
    expect(checkExpiry([...renewedAt80, op(1, 190, 191, get('x'), got(3))]).result).toBe('ok');
  });

  it('an expired lease stays gone, and its keys go with it', () => {
    // A keep-alive answered "not found" (expired), then one "renewed": the lease came back.
    const back = [...base, op(0, 120, 121, keepalive('7'), gone), op(0, 130, 131, keepalive('7'), renewed)];
    expect(checkExpiry(back).result).toBe('illegal');
    // The lease is gone (the keep-alive says so) but its key is still there afterwards.
    const kept = [
      ...base,
      op(0, 120, 121, keepalive('7'), gone),
      op(1, 130, 131, get('x'), got(2, 'a', 2, 2, 1, '7')),
    ];
    expect(checkExpiry(kept).result).toBe('illegal');
    // The consistent version: gone, and so is the key (deleted at one revision by the expiry).
    const ok = [...base, op(0, 120, 121, keepalive('7'), gone), op(1, 130, 131, get('x'), got(3))];
    expect(checkExpiry(ok).result).toBe('ok');
  });

  it('a generated history where leases lapse, are renewed and revoked is linearizable', () => {
    const h = synthesizeLeaseExpiry({ seed: 3, ops: 3000 });
    const lapsed = h.filter((o) => o.output?.type === 'keepalive' && !o.output.found).length;
    const refused = h.filter((o) => o.output?.type === 'put' && o.output.leaseMissing).length;
    const renewals = h.filter((o) => o.output?.type === 'keepalive' && o.output.found).length;
    const r = checkExpiry(h);
    console.log(
      `lease expiry: ${h.length} ops (${renewals} renewals, ${lapsed} keep-alives of a lapsed lease, ${refused} puts refused) → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`,
    );
    // Leases did lapse (else expiry was not exercised) and were renewed.
    expect(lapsed + refused).toBeGreaterThan(10);
    expect(renewals).toBeGreaterThan(10);
    expect(r.result).toBe('ok');
    // Without expiry in the model the same history is illegal: it relies on expiries.
    expect(checkOperations(etcdModel, h, { timeoutMs: 10_000 }).result).toBe('illegal');
  }, 30_000);

  for (const bug of ['early-expiry', 'ignore-keepalive', 'keys-survive'] as LeaseBug[])
    it(`a generated history from a server with the '${bug}' defect is illegal`, () => {
      const r = checkExpiry(synthesizeLeaseExpiry({ seed: 3, ops: 3000, bug }));
      if (r.result === 'illegal') console.log(`${bug}:\n${r.report}`);
      expect(r.result).toBe('illegal');
    }, 30_000);
});

describe('per-key partitioning (P-compositionality)', () => {
  it('splits by key, joins the keys of a txn, and puts each lease operation with the keys it can delete', () => {
    const h = [
      op(0, 0, 1, put('a', '1'), putOk(2)),
      op(1, 0, 1, put('b', '2'), putOk(3)),
      op(2, 2, 3, { type: 'grant', lease: '9' }, granted),
      op(2, 4, 5, put('c', '3', '9'), putOk(4)),
      op(2, 6, 7, { type: 'revoke', lease: '9' }, { type: 'revoke', revision: 5, found: true }),
      op(3, 8, 9, { type: 'grant', lease: '10' }, granted),
      op(
        3,
        8,
        9,
        {
          type: 'txn',
          compare: [{ key: 'd', target: 'version', result: '=', value: 0 }],
          success: [{ type: 'put', key: 'e', value: '4' }],
          failure: [],
        },
        { type: 'txn', revision: 6, succeeded: true, results: [{ type: 'put' }] },
      ),
    ];
    const parts = partitionByKey(h).map((p) => p.map((o) => h.indexOf(o)).sort());
    expect(parts).toEqual(expect.arrayContaining([[0], [1], [2, 3, 4], [6], [5]]));
    expect(parts).toHaveLength(5);
    expect(checkEtcdHistory(h, { perKey: true })).toMatchObject({ result: 'ok', partitions: 5 });
  });

  it('catches what spans keys through the revisions: one revision answered by two changes, a revision going back', () => {
    const twice = [op(0, 0, 1, put('a', '1'), putOk(2)), op(1, 2, 3, put('b', '2'), putOk(2))];
    expect(checkRevisionOrder(twice)).toMatch(/two changes of the store answered revision 2/);
    expect(checkEtcdHistory(twice, { perKey: true }).result).toBe('illegal');
    // Per key alone both are fine; across keys a read of b invoked after a's put at 5 returned
    // answers revision 4.
    const back = [
      op(0, 0, 1, put('b', '1'), putOk(4)),
      op(1, 2, 3, put('a', '2'), putOk(5)),
      op(2, 4, 5, get('b'), got(4, '1', 4)),
    ];
    expect(checkRevisionOrder(back)).toMatch(/went back/);
    expect(checkEtcdHistory(back, { perKey: true }).result).toBe('illegal');
    expect(checkEtcdHistory(back).result).toBe('illegal');
  });

  it('is used only where the model allows it: a CAS txn whose failure branch writes is checked exactly', () => {
    const casElsePut: EtcdInput = {
      type: 'txn',
      compare: [{ key: 'a', target: 'mod', result: '=', value: 2 }],
      success: [{ type: 'put', key: 'a', value: 'x' }],
      failure: [{ type: 'put', key: 'a', value: 'y' }],
    };
    expect(perKeyApplicable([op(0, 0, 1, casElsePut, undefined)])).toBe(false);
    expect(perKeyApplicable(synthesize({ seed: 1, ops: 500, leases: true }))).toBe(true);
  });

  // The point of partitioning: a history far beyond what one search handles, checked part by part.
  it('checks a 50,000-operation history on 100 keys (16 clients, 2 % unknown writes) in seconds, and still finds a stale read, a lost write and a reused revision', () => {
    const h = resolveObservedWrites(
      synthesize({ seed: 21, ops: 50_000, clients: 16, keys: 100, unknownRate: 0.02 }),
    );
    const unknown = h.filter((o) => o.output === undefined).length;
    const ok = checkEtcdHistory(h, { perKey: true, timeoutMs: 20_000 });
    console.log(
      `per-key: ${h.length} ops (${unknown} unknown) in ${ok.partitions} parts → ${ok.result} in ${ok.elapsedMs.toFixed(0)} ms`,
    );
    expect(unknown).toBeGreaterThan(100);
    expect(ok).toMatchObject({ result: 'ok', partitions: 100 });
    expect(ok.elapsedMs).toBeLessThan(20_000);

    const at = (pred: (o: EtcdOperation, i: number) => boolean) =>
      h.findIndex((o, i) => i > 25_000 && pred(o, i));
    // A stale read: a get that saw a value, edited to the key's value before it.
    const g = at(
      (o) =>
        o.input.type === 'get' &&
        o.output?.type === 'get' &&
        o.output.kv !== undefined &&
        o.output.kv.version > 1,
    );
    const gi = h[g]!;
    const key = (gi.input as { key: string }).key;
    const seenMod = gi.output?.type === 'get' ? gi.output.kv!.mod : 0;
    const before = h
      .filter(
        (o) =>
          o.input.type === 'put' &&
          o.input.key === key &&
          o.output?.type === 'put' &&
          o.output.revision < seenMod,
      )
      .sort(
        (a, b) => (b.output as { revision: number }).revision - (a.output as { revision: number }).revision,
      )[0];
    expect(before).toBeDefined();
    const stale = [...h];
    stale[g] = {
      ...gi,
      output: {
        type: 'get',
        revision: (gi.output as { revision: number }).revision,
        kv: {
          ...((gi.output as { kv: NonNullable<unknown> }).kv as object),
          value: (before!.input as { value: string }).value,
        } as never,
      },
    };
    // A lost write: an acknowledged put that a later read saw, removed (the read sees a value never written).
    const p = at((o, i) => {
      if (o.input.type !== 'put' || o.output?.type !== 'put') return false;
      const v = o.input.value;
      return h.slice(i + 1).some((r) => r.output?.type === 'get' && r.output.kv?.value === v);
    });
    const lost = [...h.slice(0, p), ...h.slice(p + 1)];
    // A reused revision: an acknowledged put on one key answering the revision of a put on another.
    const q = at((o) => o.input.type === 'put' && o.output?.type === 'put');
    const other = h.find(
      (o, i) =>
        i > q &&
        o.input.type === 'put' &&
        o.input.key !== (h[q]!.input as { key: string }).key &&
        o.output?.type === 'put',
    )!;
    const reused = [...h];
    reused[h.indexOf(other)] = { ...other, output: putOk((h[q]!.output as { revision: number }).revision) };
    for (const [name, bad] of [
      ['stale read', stale],
      ['lost write', lost],
      ['reused revision', reused],
    ] as const) {
      const r = checkEtcdHistory(bad, { perKey: true, timeoutMs: 20_000 });
      console.log(`per-key, ${name} → ${r.result} in ${r.elapsedMs.toFixed(0)} ms`);
      expect(r.result, name).toBe('illegal');
    }
  }, 120_000);
});
