/**
 * Leases ordered by deadline (a heap of explicit deadlines, and promoted deadlines found in TTL
 * order by a cursor): random grants, renewals, revocations, failed revocations, promotions,
 * restores and clock steps give exactly what a brute-force lessor (every lease scanned, every
 * deadline rewritten on promotion) gives; an idle expiry pass and a promotion cost the same with
 * 100,000 leases as with none.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { expiryScanMax, Leases } from '../../backends/raft/store/leases.js';

/** The brute force: the lessor's contract written as plainly as possible. */
class Model {
  readonly m = new Map<bigint, { ttl: number; exp: number; revoking: boolean }>();
  constructor(readonly minTtl: number) {}
  grant(id: bigint, ttl: number, now: number): void {
    const t = Math.max(ttl, this.minTtl);
    this.m.set(id, { ttl: t, exp: now + t * 1000, revoking: false });
  }
  renew(id: bigint, now: number): number | 'expiring' {
    const l = this.m.get(id);
    if (!l) return 0;
    if (l.revoking || l.exp <= now) return 'expiring';
    l.exp = now + l.ttl * 1000;
    return l.ttl;
  }
  remaining(id: bigint, now: number): number {
    const l = this.m.get(id);
    if (!l) return -1;
    if (l.revoking) return 0;
    return Math.max(0, Math.ceil((l.exp - now) / 1000));
  }
  startRevoking(now: number): bigint[] {
    const out: bigint[] = [];
    for (const [id, l] of this.m) {
      if (l.revoking || l.exp > now) continue;
      l.revoking = true;
      out.push(id);
    }
    return out;
  }
  revokeFailed(id: bigint): void {
    const l = this.m.get(id);
    if (l) l.revoking = false;
  }
  promote(now: number, extend: number): void {
    for (const l of this.m.values()) {
      l.exp = now + extend + l.ttl * 1000;
      l.revoking = false;
    }
  }
}

type Step =
  | { t: 'grant'; id: number; ttl: number }
  | { t: 'renew'; id: number }
  | { t: 'remove'; id: number }
  | { t: 'pass'; max: number }
  | { t: 'failed'; id: number }
  | { t: 'promote'; extend: number }
  | { t: 'restore' }
  | { t: 'clock'; ms: number };

const idArb = fc.nat(11);
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant('grant' as const),
      id: idArb,
      ttl: fc.integer({ min: 1, max: 4 }),
    }),
  },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('renew' as const), id: idArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('remove' as const), id: idArb }) },
  {
    weight: 3,
    arbitrary: fc.record({ t: fc.constant('pass' as const), max: fc.integer({ min: 1, max: 4 }) }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('failed' as const), id: idArb }) },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant('promote' as const), extend: fc.constantFrom(0, 100, 1500) }),
  },
  { weight: 1, arbitrary: fc.constant({ t: 'restore' as const }) },
  {
    weight: 4,
    arbitrary: fc.record({ t: fc.constant('clock' as const), ms: fc.integer({ min: 0, max: 2500 }) }),
  },
);

const sorted = (ids: bigint[]) => [...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

describe('leases ordered by deadline', () => {
  it('answer every renewal, time-to-live and expiry pass as the brute-force lessor does', () => {
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 10, maxLength: 120, size: 'max' }), (steps) => {
        const leases = new Leases(1);
        const model = new Model(1);
        let now = 1000;
        for (const s of steps) {
          const id = 'id' in s ? BigInt(s.id) : 0n;
          switch (s.t) {
            case 'grant':
              if (model.m.has(id)) expect(() => leases.grant(id, s.ttl, now)).toThrow(/already exists/);
              else {
                leases.grant(id, s.ttl, now);
                model.grant(id, s.ttl, now);
              }
              break;
            case 'renew':
              expect(leases.renew(id, now)).toBe(model.renew(id, now));
              break;
            case 'remove':
              expect(leases.remove(id)).toBe(model.m.delete(id));
              break;
            case 'pass': {
              // Passes of at most `max` ids until one returns none: together, the brute force's set.
              const got: bigint[] = [];
              for (let i = 0; i < 100; i++) {
                const ids = leases.startRevoking(now, s.max);
                expect(ids.length).toBeLessThanOrEqual(s.max);
                if (ids.length === 0) break;
                got.push(...ids);
              }
              expect(sorted(got)).toEqual(sorted(model.startRevoking(now)));
              break;
            }
            case 'failed':
              leases.revokeFailed(id);
              model.revokeFailed(id);
              break;
            case 'promote':
              leases.promote(now, s.extend);
              model.promote(now, s.extend);
              break;
            case 'restore': {
              // A snapshot install: the map is refilled with fresh leases, each with a full TTL from now.
              const copies = [...leases.byId.values()].map((l) => ({
                id: l.id,
                ttlSeconds: l.ttlSeconds,
                grantedTtlSeconds: l.grantedTtlSeconds,
                keys: new Set(l.keys),
                expiryMs: now + l.ttlSeconds * 1000,
                revoking: false,
              }));
              leases.byId.clear();
              for (const c of copies) leases.byId.set(c.id, c);
              for (const [, l] of model.m) {
                l.exp = now + l.ttl * 1000;
                l.revoking = false;
              }
              break;
            }
            case 'clock':
              now += s.ms;
              break;
          }
          leases.checkInvariants();
          for (const k of model.m.keys())
            expect(leases.remainingSeconds(k, now), `lease ${k}`).toBe(model.remaining(k, now));
          expect(leases.byId.size).toBe(model.m.size);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('a pass looks at no more than expiryScanMax leases after a promotion, and the next passes find the rest', () => {
    const leases = new Leases(1);
    const n = expiryScanMax * 2 + 10;
    for (let i = 0; i < n; i++) leases.grant(BigInt(i), 5, 0);
    leases.promote(1000, 0);
    // Every lease but the last (in id order) is renewed: only that one reaches its promoted deadline.
    for (let i = 0; i < n - 1; i++) expect(leases.renew(BigInt(i), 2000)).toBe(5);
    const passes: bigint[][] = [];
    for (let i = 0; i < 10; i++) passes.push(leases.startRevoking(6000));
    // 6000 is the promoted deadline (1000 + 5 s); the renewed ones last until 7000.
    expect(passes.slice(0, 2)).toEqual([[], []]);
    expect(passes[2]).toEqual([BigInt(n - 1)]);
    expect(passes.slice(3).flat()).toEqual([]);
    expect(sorted(leases.startRevoking(7000))).toEqual(
      sorted(Array.from({ length: n - 1 }, (_, i) => BigInt(i))),
    );
    leases.checkInvariants();
  });

  it('an idle expiry pass looks at no lease, with 100,000 of them; a pass looks only at the leases it expires', () => {
    const leases = new Leases(1);
    for (let i = 0; i < 100_000; i++) leases.grant(BigInt(i), 60 + (i % 50), 0);
    // Granted in this epoch: every deadline is in the heap; an idle pass only peeks at its top.
    for (let t = 0; t < 1000; t++) expect(leases.startRevoking(1000 + t)).toEqual([]);
    expect(leases.visited).toBe(0);
    // After a promotion, the first pass steps the cursor once to the earliest promoted deadline,
    // and the idle passes after it look at nothing.
    leases.promote(2000, 0);
    for (let t = 0; t < 1000; t++) expect(leases.startRevoking(3000 + t)).toEqual([]);
    expect(leases.visited).toBe(1);
    // The 2,000 leases of TTL 60 s reach their promoted deadline (2,000 + 60 s) together: the
    // passes that find them look at them and at the next lease, not at the other 98,000.
    const before = leases.visited;
    const due: bigint[] = [];
    for (let pass = 0; pass < 10; pass++) due.push(...leases.startRevoking(62_000));
    expect(due.length).toBe(2000);
    expect(leases.visited - before).toBeLessThanOrEqual(2000 + 10);
    leases.checkInvariants();
  });

  it('an idle expiry pass and a promotion cost the same with 100,000 leases as with none', () => {
    const timeIdlePasses = (leases: Leases): number => {
      const t0 = performance.now();
      for (let i = 0; i < 100_000; i++) leases.startRevoking(1000 + (i % 7));
      return performance.now() - t0;
    };
    const empty = new Leases(1);
    const full = new Leases(1);
    for (let i = 0; i < 100_000; i++) full.grant(BigInt(i), 60 + (i % 50), 0);
    for (const l of [empty, full]) {
      l.promote(0, 0);
      timeIdlePasses(l); // warm-up (the first pass after the promotion looks once)
    }
    const emptyMs = Math.min(timeIdlePasses(empty), timeIdlePasses(empty));
    const fullMs = Math.min(timeIdlePasses(full), timeIdlePasses(full));
    // A scan of 100,000 leases per pass would make this ~100,000 times slower.
    expect(fullMs).toBeLessThan(Math.max(emptyMs * 5, 50));
    // A promotion touches no lease: far less than one walk over them.
    const t0 = performance.now();
    for (const l of full.byId.values()) l.ttlSeconds += 0;
    const walkMs = performance.now() - t0;
    const t1 = performance.now();
    full.promote(5000, 100);
    const promoteMs = performance.now() - t1;
    expect(promoteMs).toBeLessThan(Math.max(walkMs / 4, 0.05));
    // And it took effect: a lease of 60 s has 65.1 s left at 0 ms, 0 s after 65.1 s.
    expect(full.remainingSeconds(0n, 0)).toBe(66);
    expect(full.startRevoking(65_099)).toEqual([]);
    expect(full.startRevoking(65_100)).toContain(0n);
    full.checkInvariants();
  });
});
