/**
 * Injected bugs are caught: `conclave serve` started through the test-only fault entry
 * (test/harness/fault-entry.ts) with one deliberate defect, the nemesis faults that expose it, and
 * the recorded history must come out 'illegal'. 'unknown' (the checker's time limit) never counts
 * as caught. A seed may miss (the fault schedule is short), so a bounded number of seeds is tried.
 */
import { describe, expect, it } from 'vitest';
import type { TestFault } from '../harness/fault-entry.js';
import { type FaultKind, quorumCrashScenario } from './nemesis.js';
import { describeRun, runOnce } from './run.js';

const seed = Number(process.env.NEMESIS_SEED ?? 17);
/** Seeds tried per defect before the test fails. */
const attemptsMax = 3;

const cases: {
  fault: TestFault;
  kinds: FaultKind[];
  what: string;
  faultMs?: [number, number];
  scenario?: typeof quorumCrashScenario;
  /** Why this case is skipped for now (reported as skipped, never as passed). */
  skip?: string;
}[] = [
  // A follower cut off or slowed down answers from its stale state.
  { fault: 'read-local', kinds: ['isolate', 'pause', 'delay'], what: 'followers answer reads locally' },
  {
    fault: 'leader-read-local',
    kinds: ['freeze-leader'],
    what: 'a deposed leader answers reads locally',
    // Frozen past the clients' 2 s deadline, so a client pinned to the old leader invokes a read
    // after the new leader's writes returned; the old leader, woken up still cut off, answers it
    // from its old state before its check-quorum round makes it step down.
    faultMs: [2500, 3500],
  },
  {
    fault: 'ack-before-fsync',
    kinds: ['kill', 'kill-leader'],
    what: 'a crashed member forgets what it acknowledged',
    scenario: quorumCrashScenario,
    // Came out 'ok' on 3 of 3 seeds on a quiet machine once membership state (learners, conf
    // changes) moved into the WAL/snapshots: a member whose wal/ and snap/ are wiped may no longer
    // restart as the voter this scenario needs. The defect model needs rework before it counts.
    skip: 'the power-loss model (wiping wal/ and snap/) no longer yields a voter with an empty log',
  },
];

describe('injected bugs are caught by the nemesis and the checker (conclave serve)', () => {
  for (const c of cases)
    it.skipIf(c.skip !== undefined)(
      `${c.fault} (${c.what}) → illegal`,
      async () => {
        const results: string[] = [];
        for (let k = 0; k < attemptsMax; k++) {
          const s = await runOnce({
            target: 'served',
            seed: seed + k,
            durationMs: 8000,
            faults: [c.fault],
            kinds: c.kinds,
            faultMs: c.faultMs ?? [800, 1500],
            quietMs: [300, 700],
            ...(c.scenario ? { scenario: c.scenario } : {}),
          });
          console.log(`[${c.fault}] ${describeRun(s)}`);
          results.push(s.check.result);
          if (s.check.result === 'illegal') {
            console.log(`${s.check.report}\n  replay: ${s.replay}`);
            break;
          }
        }
        expect(results).toContain('illegal');
      },
      300_000,
    );
});
