/**
 * Rebuilding the log after a snapshot (backends/raft/storage/replay.ts): the entries
 * after the snapshot are kept only when they continue it (Raft §7: "If existing log entry has same
 * index and term as snapshot's last included entry, retain log entries following it"; otherwise
 * the log is discarded). The case that matters is a member that saved a snapshot received from
 * the leader and crashed before the WAL's log reset was written (found by the disk simulation,
 * seeds 2063/2700/4799/9101: the member restarted with the newer snapshot followed by its old,
 * conflicting entries).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Entry } from '../../backends/raft/consensus/types.js';
import { DiskStorage } from '../../backends/raft/storage/disk-storage.js';
import { RecordType, type WalRecord } from '../../backends/raft/storage/records.js';
import {
  finishReplay,
  newReplayState,
  type ReplayBase,
  replayRecords,
} from '../../backends/raft/storage/replay.js';
import { Snapshotter } from '../../backends/raft/storage/snapshots.js';
import { Wal } from '../../backends/raft/storage/wal.js';
import { ConclaveError } from '../../src/errors.js';

const ent = (index: number, term: number): Entry => ({
  index,
  term,
  type: 0,
  data: new TextEncoder().encode(`v${index}@${term}`),
});
const e = (index: number, term: number): WalRecord => ({ type: RecordType.Entry, entry: ent(index, term) });
const reset = (index: number, term: number): WalRecord => ({ type: RecordType.LogReset, index, term });
const hs = (term: number, commit: number): WalRecord => ({
  type: RecordType.HardState,
  hardState: { term, vote: 0, commit },
});

function replay(recs: WalRecord[], base: ReplayBase) {
  const st = replayRecords(
    recs.map((rec, offset) => ({ rec, offset })),
    base,
    'test.wal',
    newReplayState(),
  );
  const r = finishReplay(st, base, 'test');
  return { ...r, log: r.ents.map((x) => `${x.index}@${x.term}`) };
}

const seq = (from: number, to: number, term: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => e(from + i, term));

describe('replay after a snapshot', () => {
  it('keeps the entries after a snapshot taken from its own log (same term at its index)', () => {
    const r = replay([...seq(1, 10, 1), hs(1, 8)], { index: 8, term: 1 });
    expect(r.log).toEqual(['9@1', '10@1']);
    expect(r.discarded).toBeUndefined();
    expect(r.hardState.commit).toBe(8);
  });

  it('discards an old log that a received snapshot replaced before its log reset was written', () => {
    // The member had 1..10 of term 1 (commit 4); the leader of term 2 sent snapshot (8, term 2).
    const r = replay([...seq(1, 10, 1), hs(1, 4)], { index: 8, term: 2 });
    expect(r.log).toEqual([]);
    expect(r.discarded).toEqual({ count: 2, termAtBase: 1 });
    expect(r.hardState.commit).toBe(8);
  });

  it('keeps what follows the log reset of a received snapshot', () => {
    const r = replay([...seq(1, 10, 1), reset(8, 2), ...seq(9, 12, 2), hs(2, 11)], { index: 8, term: 2 });
    expect(r.log).toEqual(['9@2', '10@2', '11@2', '12@2']);
    expect(r.discarded).toBeUndefined();
    expect(r.hardState.commit).toBe(11);
  });

  it('an entry rewritten at or below the snapshot index truncates what followed it', () => {
    // 1..10 of term 1, then the leader of term 2 overwrote from 7: entries 7..9 of term 2.
    const r = replay([...seq(1, 10, 1), ...seq(7, 9, 2)], { index: 8, term: 2 });
    expect(r.log).toEqual(['9@2']);
  });

  it('keeps a log that starts right after the snapshot (older segments released)', () => {
    expect(replay(seq(9, 11, 3), { index: 8, term: 3 }).log).toEqual(['9@3', '10@3', '11@3']);
  });

  it('refuses a gap between the snapshot and the log, and a reset newer than the snapshot', () => {
    expect(() => replay(seq(10, 11, 3), { index: 8, term: 3 })).toThrow(/starts at index 10.*ends at 8/);
    expect(() => replay([...seq(1, 3, 1), reset(9, 2)], { index: 8, term: 2 })).toThrow(ConclaveError);
  });

  it('without a snapshot term nothing is discarded (the check needs the snapshot metadata)', () => {
    expect(replay(seq(1, 10, 1), { index: 8 }).log).toEqual(['9@1', '10@1']);
  });
});

describe('recovery of a member that crashed between a received snapshot and its log reset', () => {
  const root = mkdtempSync(join(tmpdir(), 'conclave-replay-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('starts with the snapshot and no stale entries, and the discard is durable', async () => {
    const dataDir = join(root, 'm1');
    const logs: string[] = [];
    const opts = { dataDir, nodeId: 1, voters: [1, 2, 3], log: (m: string) => logs.push(m) };
    const s1 = await DiskStorage.open(opts);
    await s1.save({
      entries: Array.from({ length: 10 }, (_, i) => ent(i + 1, 1)),
      hardState: { term: 1, vote: 1, commit: 4 },
    });
    await s1.close();
    // The crash window: the received snapshot's file is in place, the WAL's log reset is not.
    const snap = {
      meta: { index: 8, term: 2, confState: { voters: [1, 2, 3], learners: [] } },
      data: new TextEncoder().encode('state at 8'),
    };
    const snaps = new Snapshotter(join(dataDir, 'snap'));
    await snaps.init();
    await snaps.save(snap);

    const s2 = await DiskStorage.open(opts);
    expect(s2.snapshot().meta).toMatchObject({ index: 8, term: 2 });
    expect(s2.lastIndex()).toBe(8);
    expect(logs.some((m) => /2 entries after snapshot 8 .*discarded/.test(m))).toBe(true);
    // The member then takes entries 9..11 of term 2 from the leader and restarts again: they stay.
    await s2.save({
      entries: [ent(9, 2), ent(10, 2), ent(11, 2)],
      hardState: { term: 2, vote: 0, commit: 10 },
    });
    await s2.close();
    const s3 = await DiskStorage.open(opts);
    expect(s3.lastIndex()).toBe(11);
    expect(s3.term(9)).toBe(2);
    expect(s3.hardState.commit).toBe(10);
    await s3.close();
  });

  it('a WAL opened with the snapshot term keeps a log that continues it', async () => {
    const dir = join(root, 'w1');
    const { wal } = await Wal.open({ dir, nodeId: 1 }, 0);
    await wal.save([...seq(1, 10, 1), hs(1, 8)]);
    await wal.close();
    const { wal: again, recovery } = await Wal.open({ dir, nodeId: 1 }, 8, 1);
    expect(recovery.entries.map((x) => x.index)).toEqual([9, 10]);
    await again.close();
  });
});
