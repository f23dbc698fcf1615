/**
 * The interval index behind the watch hub's range watchers: its invariants (order, AVL balance,
 * subtree max end) hold after every step of random inserts, updates and deletes; stabbing queries
 * equal a brute-force scan; and a query's cost stays logarithmic in the intervals that do not
 * contain the key.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IntervalIndex, unboundedHi } from '../../backends/raft/store/interval-index.js';

const keyArb = fc
  .array(fc.constantFrom('a', 'b', 'c', '\xff'), { minLength: 1, maxLength: 3 })
  .map((a) => a.join(''));
const hiArb = fc.oneof({ weight: 4, arbitrary: keyArb }, { weight: 1, arbitrary: fc.constant(unboundedHi) });

type Step =
  | { t: 'set'; start: string; hi: string; v: number }
  | { t: 'del'; start: string; hi: string }
  | { t: 'delHeld'; i: number };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ t: fc.constant('set' as const), start: keyArb, hi: hiArb, v: fc.nat() }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('del' as const), start: keyArb, hi: hiArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('delHeld' as const), i: fc.nat() }) },
);

const id = (start: string, hi: string) => `${start}\u0001${hi}`;

describe('interval index', () => {
  it('keeps its invariants and answers every stabbing query as a brute-force scan does', () => {
    fc.assert(
      fc.property(
        fc.array(stepArb, { maxLength: 200, size: 'max' }),
        fc.array(keyArb, { minLength: 1, maxLength: 10 }),
        (steps, probes) => {
          const ix = new IntervalIndex<number>();
          const model = new Map<string, { start: string; hi: string; v: number }>();
          for (const s of steps) {
            if (s.t === 'set') {
              ix.set(s.start, s.hi, s.v);
              model.set(id(s.start, s.hi), s);
            } else {
              const held = [...model.values()];
              const target = s.t === 'del' ? s : held[s.i % Math.max(1, held.length)];
              if (!target) continue;
              expect(ix.delete(target.start, target.hi)).toBe(model.delete(id(target.start, target.hi)));
            }
            ix.checkInvariants();
            expect(ix.size).toBe(model.size);
            // AVL: height <= 1.4405·log2(n + 2) - 0.3277.
            expect(ix.height).toBeLessThanOrEqual(Math.floor(1.4405 * Math.log2(model.size + 2)));
          }
          for (const [k, m] of model) expect(ix.get(m.start, m.hi), k).toBe(m.v);
          const order: string[] = [];
          ix.forEach((_v, start, hi) => {
            order.push(id(start, hi));
          });
          expect(order).toEqual([...model.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
          for (const k of probes) {
            const got: number[] = [];
            ix.stab(k, (v) => got.push(v));
            const want = [...model.values()].filter((m) => m.start <= k && k < m.hi).map((m) => m.v);
            expect(got.sort((a, b) => a - b)).toEqual(want.sort((a, b) => a - b));
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it('a query visits O(log n) nodes for intervals that miss the key, plus the ones that hold it', () => {
    const ix = new IntervalIndex<number>();
    const n = 100_000;
    const key = (i: number) => `k${String(i).padStart(6, '0')}`;
    // Disjoint single-step intervals [k_i, k_i + '\0') and 1,000 prefixes of one area.
    for (let i = 0; i < n; i++) ix.set(key(i), `${key(i)}\u0000`, i);
    for (let i = 0; i < 1000; i++) ix.set(`p/${i}`, unboundedHi, -i);
    ix.checkInvariants();
    const height = ix.height;
    expect(height).toBeLessThanOrEqual(Math.floor(1.4405 * Math.log2(ix.size + 2)));
    // A key no interval holds (between two of them, before the prefixes start).
    ix.visited = 0;
    let hits = 0;
    ix.stab(`${key(500)}x`, () => hits++);
    expect(hits).toBe(0);
    expect(ix.visited).toBeLessThanOrEqual(2 * height);
    // A key one interval holds.
    ix.visited = 0;
    ix.stab(key(77_777), () => hits++);
    expect(hits).toBe(1);
    expect(ix.visited).toBeLessThanOrEqual(2 * height + 2);
    // A key the 1,000 unbounded intervals hold: the matches, plus a path, not the 100,000 others.
    ix.visited = 0;
    hits = 0;
    ix.stab('q', () => hits++);
    expect(hits).toBe(1000);
    expect(ix.visited).toBeLessThanOrEqual(1000 + 2 * height);
  });
});
