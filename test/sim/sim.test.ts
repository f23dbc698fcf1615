import { describe, expect, it } from 'vitest';
import { Role } from '../../backends/raft/consensus/types.js';
import { runSeed, SimError, Simulation } from './cluster.js';

const SEEDS = Number(process.env.SIM_SEEDS ?? 300);

describe('raft simulator', () => {
  it(`${SEEDS} seeds with network faults, crashes, pauses, restarts, transfers and compaction keep every invariant`, () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = runSeed({ seed, steps: 1200, nodes: seed % 2 === 0 ? 5 : 3 });
      if (r.error)
        failures.push(
          `seed ${seed}: ${r.error.split('\n')[0]} (replay: npm run sim -- --seed ${seed} --steps 1200 --nodes ${seed % 2 === 0 ? 5 : 3})`,
        );
      expect(r.applied).toBeGreaterThan(0);
    }
    expect(failures).toEqual([]);
  }, 240_000);

  it(`${SEEDS} seeds with simulated disks (unsynced writes lost on crash, torn tails, flipped bits on read) keep every invariant; corruption stops the node`, () => {
    const failures: string[] = [];
    let torn = 0;
    let corrupt = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const nodes = seed % 2 === 0 ? 5 : 3;
      const r = runSeed({ seed, steps: 1200, nodes, disk: true });
      torn += r.tornRepairs ?? 0;
      corrupt += r.corruptionsDetected ?? 0;
      if (r.error)
        failures.push(
          `seed ${seed}: ${r.error.split('\n')[0]} (replay: npm run sim -- --seed ${seed} --steps 1200 --nodes ${nodes} --disk)`,
        );
    }
    expect(failures).toEqual([]);
    // The faults really happened: torn tails were repaired and flipped bits were caught.
    expect(torn).toBeGreaterThan(SEEDS / 10);
    expect(corrupt).toBeGreaterThan(SEEDS / 50);
  }, 240_000);

  it('the same seed replays exactly', () => {
    const a = runSeed({ seed: 42, steps: 800 });
    const b = runSeed({ seed: 42, steps: 800 });
    expect(a).toEqual(b);
    expect(runSeed({ seed: 43, steps: 800 })).not.toEqual(a);
  });

  it('the state-machine-safety checker catches a node that applies a different entry', () => {
    let done = false;
    const r = runSeed({
      seed: 7,
      steps: 800,
      tamper: (id, rd) => {
        const e = rd.committed.find((x) => x.data.length > 0);
        if (done || id !== 2 || !e) return rd;
        done = true;
        return {
          ...rd,
          committed: rd.committed.map((x) =>
            x === e ? { ...x, data: new TextEncoder().encode('forged') } : x,
          ),
        };
      },
    });
    expect(r.error).toMatch(/state machine safety|leader completeness/);
  });

  it('the log-matching checker (§5.3) catches a follower holding an entry of the same index and term with other data', () => {
    const sim = new Simulation({ seed: 11, steps: 300, faults: false, confChanges: false });
    for (let i = 0; i < 200; i++) sim.step(false);
    const follower = [...sim.nodes.values()].find((n) => n.raft && n.raft.role !== 'leader')!;
    const log = follower.raft!.log;
    const i = log.lastIndex;
    const e = log.entry(i)!;
    // Same index and term, different command: every other checker is blind to it until applied.
    log.entries[i - log.snapIndex - 1] = { ...e, data: new TextEncoder().encode('forged') };
    let err: unknown;
    try {
      sim.step(false);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SimError);
    expect(String(err)).toMatch(/log matching: node \d+ holds entry \d+ of term \d+/);
  });

  it('the log-matching checker catches an entry whose previous entry differs, though both entries are equal', () => {
    const sim = new Simulation({ seed: 12, steps: 300, faults: false, confChanges: false });
    for (let i = 0; i < 200; i++) sim.step(false);
    const follower = [...sim.nodes.values()].find((n) => n.raft && n.raft.role !== 'leader')!;
    const log = follower.raft!.log;
    // The last entry is kept (a copy: logs change only at their end, so the checker looks at
    // entries that are new objects); the one before it gets another term.
    const i = log.lastIndex - 1;
    const e = log.entry(i)!;
    log.entries[i - log.snapIndex - 1] = { ...e, term: e.term + 1000 };
    log.entries[i - log.snapIndex] = { ...log.entry(i + 1)! };
    expect(() => sim.step(false)).toThrow(/log matching: node \d+ holds entry/);
  });

  it('the commit-safety checker catches a leader whose committed entry changes', () => {
    const sim = new Simulation({ seed: 13, steps: 300, faults: false, confChanges: false });
    for (let i = 0; i < 200; i++) sim.step(false);
    const leader = [...sim.nodes.values()].find((n) => n.raft?.role === 'leader')!;
    const log = leader.raft!.log;
    const i = log.committed;
    const e = log.entry(i)!;
    // Rewrite the committed entry's term and pretend it was never recorded on this node.
    log.entries[i - log.snapIndex - 1] = { ...e, term: e.term + 1 };
    leader.lastCommit = i - 1;
    expect(() => sim.step(false)).toThrow(/commit safety|log matching/);
  });

  it('the election-safety checker (§5.2) catches a second leader in a term, before any Ready reports it', () => {
    const sim = new Simulation({ seed: 14, steps: 300, faults: false, confChanges: false });
    for (let i = 0; i < 200; i++) sim.step(false);
    const leader = [...sim.nodes.values()].find((n) => n.raft?.role === Role.Leader)!;
    const follower = [...sim.nodes.values()].find((n) => n.raft && n.raft.role !== Role.Leader)!;
    // The follower believes it leads the leader's term, and is paused (a process stalled right
    // after it took the role): its Ready is not handled, so only the per-step check can see it.
    follower.pausedUntil = sim.now + 10_000;
    follower.raft!.role = Role.Leader;
    follower.raft!.term = leader.raft!.term;
    expect(() => sim.step(false, false)).toThrow(/election safety: \d+ and \d+ both lead term \d+/);
  });

  it('the state-machine-safety checker catches a snapshot that carries a forged entry', () => {
    let forged = 0;
    const seeds: number[] = [];
    for (let seed = 1; seed <= 40 && seeds.length === 0; seed++) {
      const r = runSeed({
        seed,
        steps: 1200,
        tamper: (_id, rd) => {
          if (!rd.snapshot || rd.snapshot.meta.index < 2) return rd;
          const applied = JSON.parse(new TextDecoder().decode(rd.snapshot.data)) as Array<[number, string]>;
          applied[0] = [applied[0]![0], `${applied[0]![1]}-forged`];
          forged++;
          return {
            ...rd,
            snapshot: { ...rd.snapshot, data: new TextEncoder().encode(JSON.stringify(applied)) },
          };
        },
      });
      if (forged > 0) {
        expect(r.error).toMatch(
          /state machine safety: node \d+ installed a snapshot at \d+ whose entry \d+ is/,
        );
        seeds.push(seed);
      }
    }
    // Some seed sent a snapshot to a lagging node (else this test proved nothing).
    expect(seeds).not.toEqual([]);
  });

  it('the ReadIndex checker catches a read answered with an index below one already committed', () => {
    let done = false;
    const r = runSeed({
      seed: 5,
      steps: 800,
      tamper: (_id, rd) => {
        if (done || rd.readStates.length === 0 || rd.readStates[0]!.index < 3) return rd;
        done = true;
        return { ...rd, readStates: rd.readStates.map((s) => ({ ...s, index: 1 })) };
      },
    });
    expect(r.error).toMatch(/ReadIndex r\d+ returned 1 below acknowledged index/);
  });

  it('the liveness check catches a node that stops applying', () => {
    const r = runSeed({
      seed: 9,
      steps: 400,
      confChanges: false,
      tamper: (id, rd) => (id === 3 ? { ...rd, committed: [] } : rd),
    });
    expect(r.error).toBeDefined();
  });
});
