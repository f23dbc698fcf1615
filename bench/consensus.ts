/**
 * `npm run bench -- --consensus` (or `npx tsx bench/consensus.ts [--duration-s S]`): the pure Raft
 * core alone — entries committed per second in a 3-node in-memory cluster with no disk and a
 * perfect network, at proposal batch sizes 1 and 64, and the simulator's speed (simulated seconds
 * per wall second) for a 5-node cluster with faults. Prints JSON lines and a table.
 */
import { MemoryStorage } from '../backends/raft/consensus/memory-storage.js';
import { Raft } from '../backends/raft/consensus/raft.js';
import { type Message, Role } from '../backends/raft/consensus/types.js';
import { runSeed } from '../test/sim/cluster.js';
import { Prng } from '../test/sim/prng.js';

const durIdx = process.argv.indexOf('--duration-s');
const durationMs = (durIdx >= 0 ? Number(process.argv[durIdx + 1]) : 3) * 1000;

function cluster(): Raft[] {
  const voters = [1, 2, 3];
  const rng = new Prng(1);
  return voters.map(
    (id) =>
      new Raft({
        id,
        electionTicks: 10,
        heartbeatTicks: 1,
        storage: new MemoryStorage({ voters, learners: [] }),
        random: () => rng.next(),
        maxInflightMsgs: 256,
      }),
  );
}

/** Drives every node until no node has a Ready; returns entries newly applied on the leader. */
function pump(nodes: Raft[], storages: MemoryStorage[]): number {
  let applied = 0;
  let busy = true;
  while (busy) {
    busy = false;
    const out: Message[] = [];
    for (let i = 0; i < nodes.length; i++) {
      const r = nodes[i]!;
      if (!r.hasReady()) continue;
      busy = true;
      const rd = r.ready();
      storages[i]!.append(rd.entries);
      if (rd.hardState) storages[i]!.setHardState(rd.hardState);
      for (const m of rd.messages) out.push(m);
      if (r.role === Role.Leader) applied += rd.committed.length;
      r.advance(rd);
      // Keep memory flat: compact what has been applied.
      if (r.log.applied - r.log.snapIndex > 10_000) r.compact(r.log.applied, new Uint8Array(0));
    }
    for (const m of out) nodes[m.to - 1]!.step(m);
  }
  return applied;
}

function commitRate(batch: number): { entriesPerSec: number; entries: number; ms: number } {
  const nodes = cluster();
  const storages = nodes.map(() => new MemoryStorage());
  nodes[0]!.campaign();
  pump(nodes, storages);
  const payload = new Uint8Array(256);
  const start = performance.now();
  let entries = 0;
  while (performance.now() - start < durationMs && entries < 50_000_000) {
    for (let i = 0; i < batch; i++) nodes[0]!.propose(payload);
    entries += pump(nodes, storages);
  }
  const ms = performance.now() - start;
  return { entriesPerSec: Math.round((entries / ms) * 1000), entries, ms: Math.round(ms) };
}

function simSpeed(): { simulatedPerWall: number; seeds: number } {
  const start = performance.now();
  let virtualMs = 0;
  let seeds = 0;
  while (performance.now() - start < durationMs && seeds < 10_000)
    virtualMs += runSeed({ seed: ++seeds, nodes: 5, steps: 1000 }).virtualMs;
  return { simulatedPerWall: Math.round(virtualMs / (performance.now() - start)), seeds };
}

const rows: Array<[string, string]> = [];
for (const batch of [1, 64]) {
  const r = commitRate(batch);
  console.log(JSON.stringify({ phase: `consensus-commit-batch${batch}`, ...r }));
  rows.push([
    `commit, batch ${batch} (3 nodes, no disk)`,
    `${r.entriesPerSec.toLocaleString('en-US')} entries/s`,
  ]);
}
const s = simSpeed();
console.log(JSON.stringify({ phase: 'simulator-speed', ...s }));
rows.push(['simulator, 5 nodes with faults', `${s.simulatedPerWall}× real time`]);
console.log('\nmeasure                                   result');
for (const [a, b] of rows) console.log(`${a.padEnd(42)}${b}`);
