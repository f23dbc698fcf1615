/**
 * The leader counts its own entries toward a commit only once it has persisted them (Raft thesis
 * §10.2.1): the node loop sends a leader's appends before its own write is durable, so the
 * leader's in-memory log is not a durable copy.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { msg, Raft } from '../../backends/raft/consensus/raft.js';
import { type Message, MessageType } from '../../backends/raft/consensus/types.js';

const message = (type: Message['type'], from: number, term: number, index = 0): Message =>
  msg({ type, from, to: 1, term, index });

/** Node 1 of {1, 2, 3} elected in term 1 (its candidacy persisted); returns it with its first leader Ready not yet persisted. */
function newLeader(): { n1: Raft; storage: MemoryStorage } {
  const voters = [1, 2, 3];
  const storage = new MemoryStorage({ voters, learners: [] });
  const n1 = new Raft({
    id: 1,
    electionTicks: 10,
    heartbeatTicks: 1,
    storage,
    random: () => 0,
    preVote: false,
  });
  n1.campaign();
  const cand = n1.ready();
  storage.save(cand);
  n1.advance(cand);
  n1.step(message(MessageType.VoteResp, 2, 1));
  expect(n1.role).toBe('leader');
  expect(n1.log.lastIndex).toBe(1); // its no-op, not persisted yet
  return { n1, storage };
}

describe('raft: the leader counts itself once persisted', () => {
  it('an entry acknowledged by one follower is not committed while the leader has not persisted it', () => {
    const { n1, storage } = newLeader();
    const rd = n1.ready();
    expect(rd.entries.map((e) => e.index)).toEqual([1]);
    // Follower 2 persisted it; the leader's own write is still in flight: one durable copy of three.
    n1.step(message(MessageType.AppendResp, 2, 1, 1));
    expect(n1.log.committed).toBe(0);
    // The leader's write completes: two durable copies, a majority.
    storage.save(rd);
    n1.advance(rd);
    expect(n1.log.committed).toBe(1);
    // And it tells the followers (the new commit index goes out in appends).
    const after = n1.ready();
    expect(after.messages.some((m) => m.type === MessageType.Append && m.commit === 1)).toBe(true);
  });

  it('two followers that persisted an entry commit it without the leader', () => {
    const { n1 } = newLeader();
    n1.ready();
    n1.step(message(MessageType.AppendResp, 2, 1, 1));
    n1.step(message(MessageType.AppendResp, 3, 1, 1));
    expect(n1.log.committed).toBe(1);
  });

  it('a single voter commits its entries when its write completes', () => {
    const storage = new MemoryStorage({ voters: [1], learners: [] });
    const n1 = new Raft({ id: 1, electionTicks: 10, heartbeatTicks: 1, storage, random: () => 0 });
    n1.campaign();
    for (let i = 0; i < 5 && n1.role !== 'leader'; i++) {
      const rd = n1.ready();
      storage.save(rd);
      n1.advance(rd);
    }
    expect(n1.role).toBe('leader');
    n1.propose(new Uint8Array([1]));
    const rd = n1.ready();
    expect(rd.entries.length).toBeGreaterThan(0);
    expect(n1.log.committed).toBeLessThan(n1.log.lastIndex);
    storage.save(rd);
    n1.advance(rd);
    expect(n1.log.committed).toBe(n1.log.lastIndex);
  });
});
