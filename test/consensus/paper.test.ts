/**
 * Focused tests of the Raft core, each citing the sentence or figure of the Raft paper (extended
 * version) or Ongaro's dissertation that it checks.
 */
import { describe, expect, it } from 'vitest';
import { ProposalDropped } from '../../backends/raft/consensus/assert.js';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { msg, Raft } from '../../backends/raft/consensus/raft.js';
import { MessageType } from '../../backends/raft/consensus/types.js';
import { bytes, TestCluster } from './harness.js';

/** Makes `id` leader: the others first let their leader lease lapse (§4.2.3), then it campaigns. */
function elect(c: TestCluster, id: number): void {
  for (const other of c.nodes.keys()) if (other !== id) c.tick(other, 1);
  for (const r of c.nodes.values()) if (r.role !== 'leader') for (let i = 0; i < 10; i++) r.tick();
  c.queue = [];
  c.node(id).campaign();
  c.stabilize();
  expect(c.node(id).role).toBe('leader');
}

describe('raft (paper)', () => {
  it('§5.2 "If a follower receives no communication over a period of time called the election timeout, then it assumes there is no viable leader and begins an election"', () => {
    const c = new TestCluster([1, 2, 3]);
    c.tick(1, 10); // node 1's randomized timeout is exactly electionTicks
    c.stabilize();
    expect(c.leaders()).toEqual([1]);
    expect(c.node(2).lead).toBe(1);
    expect(c.node(1).term).toBe(1);
  });

  it('§5.2 election safety: "at most one candidate can win the election for a particular term"', () => {
    const c = new TestCluster([1, 2, 3], { preVote: false });
    c.node(1).campaign();
    c.node(2).campaign();
    c.stabilize();
    const leaders = c.leaders();
    expect(leaders.length).toBeLessThanOrEqual(1);
  });

  it('§5.3 "The leader appends the command to its log as a new entry, then issues AppendEntries RPCs in parallel to each of the other servers"; committed entries apply everywhere in order', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    for (const v of ['a', 'b', 'c']) c.node(1).propose(bytes(v));
    c.stabilize();
    for (const id of [1, 2, 3]) expect(c.data(id)).toEqual(['a', 'b', 'c']);
  });

  it("§5.3 log matching: a follower's conflicting uncommitted entries are overwritten by the leader's", () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.isolate(1);
    c.node(1).propose(bytes('lost-1'));
    c.node(1).propose(bytes('lost-2'));
    c.stabilize();
    c.heal();
    c.isolate(1);
    elect(c, 2);
    c.node(2).propose(bytes('kept'));
    c.stabilize();
    c.heal();
    c.tickAll(1); // node 2 heartbeats; node 1 learns of the newer term
    c.stabilize();
    c.node(2).propose(bytes('after'));
    c.stabilize();
    expect(c.data(1)).toEqual(['kept', 'after']);
    expect(c.node(1).log.lastIndex).toBe(c.node(2).log.lastIndex);
  });

  it('§5.4.1 election restriction: "the voter denies its vote if its own log is more up-to-date than that of the candidate"', () => {
    const c = new TestCluster([1, 2, 3], { preVote: false, checkQuorum: false });
    elect(c, 1);
    c.isolate(3);
    c.node(1).propose(bytes('x'));
    c.stabilize();
    c.heal();
    // Node 3 missed "x"; it cannot win against 1 and 2, whose logs are longer.
    c.node(3).campaign();
    c.stabilize();
    expect(c.node(3).role).not.toBe('leader');
  });

  it('§5.4.2 / Figure 8: "Raft never commits log entries from previous terms by counting replicas"', () => {
    // Node 1 holds an entry of term 1 (index 2) that nobody else has; it wins term 3.
    const voters = [1, 2, 3];
    const ent = (index: number, term: number, data = '') => ({
      index,
      term,
      type: 0 as const,
      data: bytes(data),
    });
    const storages = voters.map(() => new MemoryStorage({ voters, learners: [] }));
    storages[0]!.append([ent(1, 1), ent(2, 1, 'old')]);
    storages[1]!.append([ent(1, 1)]);
    storages[2]!.append([ent(1, 1)]);
    for (const st of storages) st.setHardState({ term: 2, vote: 0, commit: 1 });
    const n1 = new Raft({
      id: 1,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage: storages[0]!,
      random: () => 0,
      preVote: false,
    });
    n1.campaign();
    const vote = (from: number) => n1.step(msg({ type: MessageType.VoteResp, from, to: 1, term: 3 }));
    vote(2);
    expect(n1.role).toBe('leader');
    expect(n1.log.lastIndex).toBe(3); // the no-op of term 3
    const ack = (from: number, index: number) =>
      n1.step(msg({ type: MessageType.AppendResp, from, to: 1, term: 3, index }));
    // A majority (1 and 2) now stores the term-1 entry at index 2 — it must still not be committed.
    ack(2, 2);
    expect(n1.log.committed).toBe(1);
    // Once an entry of the current term is on a majority, it and everything before it commit
    // (the leader counts its own entries once it has persisted them).
    n1.advance(n1.ready());
    expect(n1.log.committed).toBe(1);
    ack(2, 3);
    expect(n1.log.committed).toBe(3);
  });

  it('§8 "a leader must commit an entry of its own term" — a new leader appends an empty entry at once', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    const e = c.node(1).log.entry(c.node(1).log.lastIndex)!;
    expect(e.term).toBe(c.node(1).term);
    expect(e.data.length).toBe(0);
  });

  it('§6.4 ReadIndex: "the leader … needs to commit a blank no-op entry at the start of its term" before serving reads; the read waits for a heartbeat quorum', () => {
    const c = new TestCluster([1, 2, 3]);
    c.node(1).campaign();
    // Deliver votes only; the no-op is not committed yet.
    c.flush();
    const q = c.queue;
    c.queue = [];
    for (const m of q) c.node(m.to).step(m);
    c.flush();
    const votes = c.queue.filter((m) => m.type === MessageType.PreVoteResp);
    c.queue = c.queue.filter((m) => m.type !== MessageType.PreVoteResp);
    for (const m of votes) c.node(m.to).step(m);
    c.stabilize();
    expect(c.leaders()).toEqual([1]);
    c.node(1).readIndex(bytes('r1'));
    c.flush();
    // With the no-op committed, the read is confirmed by a heartbeat round and returns the commit index.
    c.stabilize();
    const rs = c.readStates.get(1)!;
    expect(rs.length).toBe(1);
    expect(rs[0]!.index).toBe(c.node(1).log.committed);
  });

  it("§6.4 a follower forwards ReadIndex to the leader and gets the leader's commit index", () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.node(1).propose(bytes('w'));
    c.stabilize();
    c.node(3).readIndex(bytes('from-3'));
    c.stabilize();
    const rs = c.readStates.get(3)!;
    expect(rs.map((r) => new TextDecoder().decode(r.context))).toEqual(['from-3']);
    expect(rs[0]!.index).toBe(c.node(1).log.committed);
  });

  it('§6.4 ReadIndex batching: 200 reads arriving at once are confirmed by two heartbeat rounds, not 200', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.flush();
    c.queue = [];
    for (let i = 0; i < 200; i++) c.node(1).readIndex(bytes(`r${i}`));
    let heartbeats = 0;
    for (let hop = 0; hop < 20; hop++) {
      c.flush();
      const q = c.queue;
      c.queue = [];
      heartbeats += q.filter((m) => m.type === MessageType.Heartbeat).length;
      for (const m of q) c.node(m.to).step(m);
    }
    const rs = c.readStates.get(1)!;
    expect(rs.map((r) => new TextDecoder().decode(r.context))).toEqual(
      Array.from({ length: 200 }, (_, i) => `r${i}`),
    );
    // r0 starts round 1; r1…r199 arrive while it is in flight and form round 2. Two followers each.
    expect(heartbeats).toBe(4);
  });

  it('§6.4 ReadIndex batching: a read that arrived after a round was sent is not answered by that round, even if the answers arrive later', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.node(1).readIndex(bytes('before'));
    c.flush();
    const round1 = c.queue.filter((m) => m.type === MessageType.Heartbeat);
    expect(round1).toHaveLength(2);
    c.queue = [];
    c.node(1).readIndex(bytes('after'));
    // Both followers answer round 1: only the read sent before it is confirmed.
    for (const m of round1) c.node(m.to).step(m);
    c.flush();
    const answers = c.queue.filter((m) => m.type === MessageType.HeartbeatResp);
    c.queue = c.queue.filter((m) => m.type !== MessageType.HeartbeatResp);
    for (const m of answers) c.node(1).step(m);
    c.flush();
    expect(c.readStates.get(1)!.map((r) => new TextDecoder().decode(r.context))).toEqual(['before']);
    // A duplicate answer to round 1 confirms nothing more either.
    c.node(1).step(answers[0]!);
    c.flush();
    expect(c.readStates.get(1)!).toHaveLength(1);
    c.stabilize();
    expect(c.readStates.get(1)!.map((r) => new TextDecoder().decode(r.context))).toEqual(['before', 'after']);
  });

  it('§6.2 check-quorum: a leader that cannot reach a majority for an election timeout steps down', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.isolate(1);
    c.tick(1, 20);
    c.stabilize();
    expect(c.node(1).role).toBe('follower');
  });

  it('§9.6 pre-vote: a partitioned node that rejoins does not disrupt the leader (its term does not grow)', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    const term = c.node(1).term;
    c.isolate(3);
    c.tick(3, 50);
    c.stabilize();
    expect(c.node(3).term).toBe(term); // pre-votes failed; no term inflation
    c.heal();
    c.tickAll(1);
    c.stabilize();
    expect(c.leaders()).toEqual([1]);
    expect(c.node(1).term).toBe(term);
  });

  it('§4.2.3 disruptive servers: "if a server receives a RequestVote request within the minimum election timeout of hearing from a current leader, it does not update its term or grant its vote"', () => {
    const c = new TestCluster([1, 2, 3], { preVote: false });
    elect(c, 1);
    const term = c.node(2).term;
    c.node(2).step({
      type: MessageType.Vote,
      from: 3,
      to: 2,
      term: term + 5,
      index: 100,
      logTerm: term + 4,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
      hintTerm: 0,
      context: new Uint8Array(0),
    });
    expect(c.node(2).term).toBe(term);
    expect(c.node(2).lead).toBe(1);
  });

  it('§3.10 leadership transfer: the target campaigns at once (TimeoutNow) and wins; proposals are refused meanwhile', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.isolate(3);
    c.node(1).propose(bytes('x'));
    c.stabilize();
    c.heal();
    c.node(1).transferLeader(3); // 3 lags: the leader first catches it up
    expect(() => c.node(1).propose(bytes('refused'))).toThrow(ProposalDropped);
    c.stabilize();
    expect(c.leaders()).toEqual([3]);
    expect(c.data(3)).toEqual(['x']);
  });

  it('§3.10 a transfer that does not finish within an election timeout is abandoned', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.isolate(3);
    c.node(1).transferLeader(3);
    expect(c.node(1).leadTransferee).toBe(3);
    c.tick(1, 10);
    c.stabilize();
    expect(c.node(1).leadTransferee).toBe(0);
    c.node(1).propose(bytes('accepted again'));
  });

  it('§4.1 membership: a learner catches up without voting, is promoted, then a voter is removed — one change at a time', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.node(1).propose(bytes('a'));
    c.stabilize();
    c.node(1).proposeConfChange({ type: 'remove', nodeId: 3 });
    expect(() => c.node(1).proposeConfChange({ type: 'remove', nodeId: 2 })).toThrow(/pending/);
    c.stabilize();
    expect(c.node(1).confState().voters).toEqual([1, 2]);
    c.node(1).proposeConfChange({ type: 'add-learner', nodeId: 3 });
    c.stabilize();
    expect(c.node(1).confState().learners).toEqual([3]);
    c.node(1).proposeConfChange({ type: 'add-voter', nodeId: 3 });
    c.stabilize();
    expect(c.node(1).confState()).toEqual({ voters: [1, 2, 3], learners: [] });
    c.node(1).propose(bytes('b'));
    c.stabilize();
    expect(c.data(3)).toEqual(['a', 'b']);
  });

  it('§4.2.2 removing the leader: it steps down once the change is committed, and the rest elect a new leader', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.node(1).proposeConfChange({ type: 'remove', nodeId: 1 });
    c.stabilize();
    expect(c.node(1).role).toBe('follower');
    for (let i = 0; i < 30; i++) {
      c.tickAll(1);
      c.stabilize();
    }
    const leaders = c.leaders();
    expect(leaders.length).toBe(1);
    expect(leaders[0]).not.toBe(1);
    // The removed node does not disrupt: it never campaigns.
    c.tick(1, 100);
    c.stabilize();
    expect(c.node(1).role).toBe('follower');
  });

  it('a bound on uncommitted bytes at the leader refuses proposals beyond it with a clear error', () => {
    const c = new TestCluster([1, 2, 3], { maxUncommittedEntriesBytes: 1000 });
    elect(c, 1);
    c.isolate(1);
    c.node(1).propose(new Uint8Array(600));
    expect(() => c.node(1).propose(new Uint8Array(600))).toThrow(/uncommitted/);
  });

  it('§7 a follower whose entries were compacted away receives a snapshot, then entries', () => {
    const c = new TestCluster([1, 2, 3]);
    elect(c, 1);
    c.isolate(3);
    for (let i = 0; i < 20; i++) c.node(1).propose(bytes(`v${i}`));
    c.stabilize();
    c.node(1).compact(c.node(1).log.applied, bytes('state'));
    c.heal();
    c.tickAll(1);
    c.stabilize();
    c.node(1).propose(bytes('after'));
    c.stabilize();
    expect(c.storages.get(3)!.snap.data).toEqual(bytes('state'));
    expect(c.node(3).log.committed).toBe(c.node(1).log.committed);
    expect(c.data(3)).toEqual(['after']);
  });
});
