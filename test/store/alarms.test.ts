/**
 * The replicated alarm set (backends/raft/store/alarms.ts): etcd's Activate/Deactivate answers,
 * the `alarm` command's encoding (uint64 member IDs above 2^63 included), the store snapshot
 * carrying the set (with and without an auth section), and the bound on alarms.
 */
import { describe, expect, it } from 'vitest';
import { decodeCommand, encodeCommand } from '../../backends/raft/node/commands.js';
import { AlarmStore, alarmsMax } from '../../backends/raft/store/alarms.js';
import { restoreStore, snapshotStore } from '../../backends/raft/store/snapshot.js';
import { Store } from '../../backends/raft/store/store.js';

const enc = new TextEncoder();
const high = 0xfedc_ba98_7654_3210n; // above 2^63: a uint64 member ID as etcd makes them

describe('alarms', () => {
  it('activate returns the alarm (also when raised already); deactivate returns it once, then nothing', () => {
    const a = new AlarmStore();
    expect(a.activate(high, 'nospace')).toEqual({ memberId: high, alarm: 'nospace' });
    expect(a.activate(high, 'nospace')).toEqual({ memberId: high, alarm: 'nospace' });
    a.activate(5n, 'nospace');
    expect(a.size).toBe(2);
    expect(a.has('nospace')).toBe(true);
    expect(a.has('corrupt')).toBe(false);
    expect(a.list().map((x) => x.memberId)).toEqual([5n, high]);
    expect(a.deactivate(high, 'nospace')).toEqual({ memberId: high, alarm: 'nospace' });
    expect(a.deactivate(high, 'nospace')).toBeUndefined();
    expect(a.deactivate(5n, 'corrupt')).toBeUndefined();
    expect(a.list()).toEqual([{ memberId: 5n, alarm: 'nospace' }]);
  });

  it('the alarm command round-trips, member IDs above 2^63 exactly', () => {
    for (const action of ['activate', 'deactivate'] as const) {
      const c = { id: 'r1', op: 'alarm', action, memberId: high, alarm: 'nospace' } as const;
      expect(decodeCommand(encodeCommand(c))).toEqual(c);
    }
  });

  it('a store snapshot carries the alarms, with or without auth ever changed; none: the section is absent', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('k'), enc.encode('v'));
    const without = snapshotStore(s);
    s.alarms.activate(high, 'nospace');
    s.alarms.activate(7n, 'nospace');
    const withAlarms = snapshotStore(s);
    expect(withAlarms.length).toBeGreaterThan(without.length);
    const r = restoreStore(withAlarms, { minTtlSeconds: 1, nowMs: 0 });
    expect(r.alarms.list()).toEqual(s.alarms.list());
    expect(r.auth.revision).toBe(s.auth.revision);
    expect(new TextDecoder().decode(r.range(enc.encode('k')).kvs[0]!.value)).toBe('v');
    // Cleared again: the snapshot is what it was before any alarm.
    s.alarms.deactivate(high, 'nospace');
    s.alarms.deactivate(7n, 'nospace');
    expect(snapshotStore(s)).toEqual(without);
    expect(restoreStore(without, { minTtlSeconds: 1, nowMs: 0 }).alarms.size).toBe(0);
  });

  it(`at most alarmsMax (${alarmsMax}) alarms; more are refused`, () => {
    const a = new AlarmStore();
    for (let i = 0; i < alarmsMax; i++) a.activate(BigInt(i + 1), 'nospace');
    expect(() => a.activate(BigInt(alarmsMax + 1), 'nospace')).toThrow(/too many alarms/);
    // Raising one already raised is still answered.
    expect(a.activate(1n, 'nospace')).toEqual({ memberId: 1n, alarm: 'nospace' });
  });
});
