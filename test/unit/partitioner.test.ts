/**
 * The partitioner's ring is a pure function of the member list: these outputs are pinned, so a
 * change to the hash, the point layout or the walk (which would make two versions of Conclave
 * disagree on who owns what) fails here.
 */
import { describe, expect, it } from 'vitest';
import { buildRing, partitionerRingPointsMax, ringOwners } from '../../recipes/partitioner.js';
import { ConclaveError } from '../../src/errors.js';

const items = [
  'shard-0',
  'shard-1',
  'shard-2',
  'shard-3',
  'shard-4',
  'shard-5',
  'shard-6',
  'shard-7',
  'tenant/acme',
  'tenant/globex',
];

describe('partitioner ring', () => {
  it('pins exact points and owners for a fixed member list', () => {
    const ring = buildRing([{ id: 'worker-a' }, { id: 'worker-b', weight: 2 }, { id: 'worker-c' }], 64);
    expect(ring.points.length).toBe(256);
    expect(ring.points.slice(0, 3)).toEqual([651084254341, 1876468907106, 2619868104898]);
    expect(ring.ids.slice(0, 3)).toEqual(['worker-b', 'worker-c', 'worker-b']);
    expect(Object.fromEntries(items.map((i) => [i, ringOwners(ring, i, 2)]))).toEqual({
      'shard-0': ['worker-a', 'worker-c'],
      'shard-1': ['worker-b', 'worker-c'],
      'shard-2': ['worker-b', 'worker-a'],
      'shard-3': ['worker-b', 'worker-a'],
      'shard-4': ['worker-a', 'worker-c'],
      'shard-5': ['worker-b', 'worker-c'],
      'shard-6': ['worker-a', 'worker-c'],
      'shard-7': ['worker-b', 'worker-c'],
      'tenant/acme': ['worker-b', 'worker-c'],
      'tenant/globex': ['worker-b', 'worker-c'],
    });
  });

  it('does not depend on the order members are listed in', () => {
    const a = buildRing([{ id: 'x' }, { id: 'y', weight: 0.5 }, { id: 'z' }]);
    const b = buildRing([{ id: 'z' }, { id: 'x' }, { id: 'y', weight: 0.5 }]);
    expect(b).toEqual(a);
  });

  it('when a member leaves, only its items move, each to one of the others', () => {
    const before = buildRing([{ id: 'worker-a' }, { id: 'worker-b', weight: 2 }, { id: 'worker-c' }]);
    const after = buildRing([{ id: 'worker-a' }, { id: 'worker-b', weight: 2 }]);
    let moved = 0;
    for (let i = 0; i < 3000; i++) {
      const item = `item-${i}`;
      const was = ringOwners(before, item)[0];
      const now = ringOwners(after, item)[0];
      if (was !== 'worker-c') expect(now).toBe(was);
      else moved++;
    }
    // About a quarter of the items were on worker-c (weight 1 of 4); loose bounds.
    expect(moved).toBeGreaterThan(3000 * 0.12);
    expect(moved).toBeLessThan(3000 * 0.4);
  });

  it('shares items roughly by weight', () => {
    const ring = buildRing([{ id: 'light' }, { id: 'heavy', weight: 3 }]);
    let heavy = 0;
    for (let i = 0; i < 4000; i++) if (ringOwners(ring, `k${i}`)[0] === 'heavy') heavy++;
    expect(heavy / 4000).toBeGreaterThan(0.6);
    expect(heavy / 4000).toBeLessThan(0.9);
  });

  it('replicas are distinct, primary first, and capped by the member count', () => {
    const ring = buildRing([{ id: 'a' }, { id: 'b' }]);
    expect(ringOwners(ring, 'q', 5).sort()).toEqual(['a', 'b']);
    expect(ringOwners(ring, 'q', 1)[0]).toBe(ringOwners(ring, 'q', 2)[0]);
    expect(ringOwners(buildRing([]), 'q')).toEqual([]);
    // Ignoring the primary promotes the next member on the ring (as tooz's ignore_members).
    const three = buildRing([{ id: 'a' }, { id: 'b' }, { id: 'c' }]);
    const [first, second] = ringOwners(three, 'q', 2);
    expect(ringOwners(three, 'q', 1, [first!])).toEqual([second]);
    expect(ringOwners(three, 'q', 3, ['a', 'b', 'c'])).toEqual([]);
  });

  it('refuses bad weights, duplicate ids, bad replicas and rings past partitionerRingPointsMax', () => {
    const bad = (f: () => unknown) => expect(f).toThrow(ConclaveError);
    bad(() => buildRing([{ id: 'a', weight: 0 }]));
    bad(() => buildRing([{ id: 'a', weight: Number.NaN }]));
    bad(() => buildRing([{ id: 'a' }, { id: 'a' }]));
    bad(() => ringOwners(buildRing([{ id: 'a' }]), 'x', 0));
    bad(() => buildRing([{ id: 'a', weight: 2 }], partitionerRingPointsMax));
  });
});
