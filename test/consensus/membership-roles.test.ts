/**
 * Membership roles in the Raft core, checked directly: a learner never campaigns and its vote is
 * never counted (Raft thesis §4.2.1: non-voting members do not count toward majorities; etcd's
 * learners), and a leader that removes itself hands leadership to an up-to-date voter at once
 * (§3.10 TimeoutNow) rather than leaving the rest without a leader for an election timeout.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { msg, Raft } from '../../backends/raft/consensus/raft.js';
import { MessageType } from '../../backends/raft/consensus/types.js';
import { bytes, TestCluster } from './harness.js';

function elect(c: TestCluster, id: number): void {
  for (const other of c.nodes.keys()) if (other !== id) c.tick(other, 1);
  for (const r of c.nodes.values()) if (r.role !== 'leader') for (let i = 0; i < 10; i++) r.tick();
  c.queue = [];
  c.node(id).campaign();
  c.stabilize();
  expect(c.node(id).role).toBe('leader');
}

/** A 3-voter cluster led by 1, with node 4 added as a learner that has caught up. */
function withLearner(opts: { preVote?: boolean } = {}): TestCluster {
  const c = new TestCluster([1, 2, 3], opts);
  elect(c, 1);
  const storage = new MemoryStorage({ voters: [1, 2, 3], learners: [4] });
  c.storages.set(4, storage);
  c.applied.set(4, []);
  c.readStates.set(4, []);
  c.nodes.set(
    4,
    new Raft({
      id: 4,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage,
      random: () => 0,
      preVote: opts.preVote ?? true,
      checkQuorum: true,
    }),
  );
  c.node(1).proposeConfChange({ type: 'add-learner', nodeId: 4 });
  c.stabilize();
  c.node(1).propose(bytes('x'));
  c.stabilize();
  expect(c.node(1).confState()).toEqual({ voters: [1, 2, 3], learners: [4] });
  expect(c.data(4)).toEqual(['x']);
  return c;
}

describe('membership roles in the Raft core', () => {
  it('a learner never campaigns, even when it hears from no leader for many election timeouts', () => {
    for (const preVote of [true, false]) {
      const c = withLearner({ preVote });
      const term = c.node(4).term;
      c.isolate(4);
      for (let i = 0; i < 50; i++) {
        c.tick(4, 10);
        c.stabilize();
      }
      expect(c.node(4).role).toBe('follower');
      expect(c.node(4).term).toBe(term);
      expect(c.queue.filter((m) => m.from === 4)).toEqual([]);
    }
  });

  it("a learner's vote is not counted: a candidate with one voter's vote and the learner's does not win", () => {
    const c = withLearner({ preVote: false });
    // Voters 2 and 3 are unreachable; voter 1 campaigns and gets only its own vote.
    for (const v of [2, 3]) for (const o of [1, 4]) c.down.add(`${v}-${o}`).add(`${o}-${v}`);
    c.node(1).becomeFollower(c.node(1).term, 0);
    c.node(1).campaign();
    c.flush();
    // Vote requests go to the voters only, never to the learner…
    const asked = c.queue.filter((m) => m.type === MessageType.Vote).map((m) => m.to);
    expect(asked.sort()).toEqual([2, 3]);
    c.stabilize();
    expect(c.node(1).role).toBe('candidate');
    const term = c.node(1).term;
    // …and a granted vote from it (forged) changes nothing: 2 of 4 members, but 1 of 3 voters.
    c.node(1).step(msg({ type: MessageType.VoteResp, from: 4, to: 1, term }));
    c.stabilize();
    expect(c.node(1).role).toBe('candidate');
    // A voter's vote does make a quorum (the check above could fail).
    c.node(1).step(msg({ type: MessageType.VoteResp, from: 2, to: 1, term }));
    c.stabilize();
    expect(c.node(1).role).toBe('leader');
  });

  it('a learner does not count toward the commit quorum', () => {
    const c = withLearner();
    for (const v of [2, 3]) for (const o of [1, 4]) c.down.add(`${v}-${o}`).add(`${o}-${v}`);
    const committed = c.node(1).log.committed;
    c.node(1).propose(bytes('needs a voter'));
    c.stabilize();
    // The learner has the entry, yet it is not committed: only 1 of 3 voters holds it.
    expect(c.node(4).log.lastIndex).toBe(c.node(1).log.lastIndex);
    expect(c.node(1).log.committed).toBe(committed);
    c.heal();
    c.tickAll(1);
    c.stabilize();
    expect(c.node(1).log.committed).toBe(c.node(1).log.lastIndex);
  });

  it('a leader that removes itself hands leadership to an up-to-date voter with no election timeout', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.node(1).propose(bytes('before'));
    c.stabilize();
    c.node(1).proposeConfChange({ type: 'remove', nodeId: 1 });
    // No ticks at all: only messages. Without the hand-off the others wait for their timeout.
    c.stabilize();
    expect(c.node(1).role).toBe('follower');
    const leaders = c.leaders();
    expect(leaders.length).toBe(1);
    expect(leaders[0]).not.toBe(1);
    const lead = c.node(leaders[0]!);
    expect(lead.confState().voters).toEqual([2, 3]);
    lead.propose(bytes('after'));
    c.stabilize();
    for (const id of [2, 3]) expect(c.data(id)).toEqual(['before', 'after']);
  });
});
