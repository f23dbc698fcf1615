import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { msg, Raft } from '../../backends/raft/consensus/raft.js';
import { type Entry, EntryType, type Message, MessageType } from '../../backends/raft/consensus/types.js';

const entry = (index: number): Entry => ({
  term: 1,
  index,
  type: EntryType.Normal,
  data: new TextEncoder().encode(`e${index}`),
});

describe('raft Ready contract', () => {
  it('§7 a snapshot stepped while an earlier Ready is still being persisted leaves advance of that Ready harmless (the driver keeps stepping messages during an fsync)', () => {
    const voters = [1, 2, 3];
    const r = new Raft({
      id: 3,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage: new MemoryStorage({ voters, learners: [] }),
      random: () => 0,
    });
    r.step(
      msg({
        type: MessageType.Append,
        from: 1,
        to: 3,
        term: 1,
        entries: [entry(1), entry(2), entry(3)],
        commit: 3,
      }),
    );
    const rd = r.ready();
    expect(rd.committed.map((e) => e.index)).toEqual([1, 2, 3]);
    // While rd is being persisted, the leader's snapshot at 10 arrives (the follower fell behind).
    r.step(
      msg({
        type: MessageType.Snapshot,
        from: 1,
        to: 3,
        term: 1,
        snapshot: {
          meta: { index: 10, term: 1, confState: { voters, learners: [] } },
          data: new Uint8Array(1),
        },
      }),
    );
    expect(() => r.advance(rd)).not.toThrow();
    const rd2 = r.ready();
    expect(rd2.snapshot?.meta.index).toBe(10);
    r.advance(rd2);
    expect(r.log.applied).toBe(10);
    expect(r.log.committed).toBe(10);
    // The log continues after the snapshot.
    r.step(
      msg({
        type: MessageType.Append,
        from: 1,
        to: 3,
        term: 1,
        index: 10,
        logTerm: 1,
        entries: [entry(11)],
        commit: 11,
      }),
    );
    expect(r.ready().committed.map((e) => e.index)).toEqual([11]);
  });

  it('§7 a newer snapshot stepped while a Ready carrying an older one is being persisted is handed out in the next Ready, not lost', () => {
    const voters = [1, 2, 3];
    const r = new Raft({
      id: 3,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage: new MemoryStorage({ voters, learners: [] }),
      random: () => 0,
    });
    const snap = (index: number): Message =>
      msg({
        type: MessageType.Snapshot,
        from: 1,
        to: 3,
        term: 1,
        snapshot: { meta: { index, term: 1, confState: { voters, learners: [] } }, data: new Uint8Array(1) },
      });
    r.step(snap(10));
    const rd = r.ready();
    expect(rd.snapshot?.meta.index).toBe(10);
    r.step(snap(20));
    r.advance(rd);
    const rd2 = r.ready();
    expect(rd2.snapshot?.meta.index).toBe(20);
    r.advance(rd2);
    expect(r.hasReady()).toBe(false);
    expect(r.log.lastIndex).toBe(20);
  });
});
