/**
 * Rebuilding a member's log from its WAL records, after the snapshot it restored (pure; shared by
 * the WAL's recovery and the simulator's disk model).
 *
 * Contract: the result is the log that follows the snapshot `(index, term)`: entries
 * `index + 1 …`, contiguous, each a write that was not later overwritten, and only if they
 * continue that snapshot. Records are replayed in the order they were written:
 * - an entry overwrites the log from its index on (Raft truncates a conflicting suffix before it
 *   appends), including entries at or below the snapshot's index, which are not kept but still
 *   truncate what followed them;
 * - a log reset (written after a snapshot received from the leader was saved) empties the log:
 *   what follows continues that snapshot. A reset newer than the snapshot being restored means
 *   its snapshot file is missing or damaged: refused as corruption;
 * - the latest hard state wins; a term that goes back is corruption.
 *
 * Whether the entries after the snapshot continue it is decided as the Raft paper (§7,
 * InstallSnapshot) decides for a follower: if the recovered log has an entry at the snapshot's
 * index with the snapshot's term, the entries after it are kept (Log Matching makes the two
 * prefixes identical); if it has one with another term, the whole log is discarded. The second
 * case is a member that saved a snapshot received from the leader and crashed before the log
 * reset reached its WAL: the newer snapshot is on disk, but the WAL still holds its old,
 * conflicting log (uncommitted entries of an older term). Keeping them would start the member
 * with a log that is not a Raft log. A WAL that starts after the snapshot (its older segments
 * released) has no entry at the snapshot's index; its entries are kept when they start right
 * after it.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { Entry, HardState } from '../consensus/types.js';
import { RecordType, type WalRecord } from './records.js';

export function walCorrupt(file: string, offset: number, what: string): ConclaveError {
  return new ConclaveError(
    ErrorCode.Corrupt,
    `wal: ${what} in ${file} at offset ${offset}; the member refuses to start on a damaged log (restore it from a snapshot or re-add it to the cluster)`,
    { details: { file, offset } },
  );
}

/** The snapshot the log is rebuilt after; `term` undefined: not checked (no snapshot metadata). */
export interface ReplayBase {
  readonly index: number;
  readonly term?: number | undefined;
}

/** Replay state threaded through the segments of one recovery. */
export interface ReplayState {
  hardState: HardState;
  /** Entries after the base index, contiguous. */
  ents: Entry[];
  /** Term of the current entry at the base index (undefined: no record says what it is). */
  termAtBase?: number | undefined;
}

export const newReplayState = (): ReplayState => ({
  hardState: { term: 0, vote: 0, commit: 0 },
  ents: [],
  termAtBase: undefined,
});

/** Replays one segment's parsed records onto `state` (mutated and returned). */
export function replayRecords(
  records: ReadonlyArray<{ rec: WalRecord; offset: number }>,
  base: ReplayBase,
  file: string,
  state: ReplayState,
): ReplayState {
  for (const { rec, offset } of records) {
    if (rec.type === RecordType.HardState) {
      if (rec.hardState.term < state.hardState.term)
        throw walCorrupt(file, offset, 'a hard state whose term went back');
      state.hardState = rec.hardState;
    } else if (rec.type === RecordType.LogReset) {
      if (rec.index > base.index)
        throw walCorrupt(
          file,
          offset,
          `a log reset to snapshot ${rec.index}, newer than the usable snapshot (${base.index}); that snapshot file is missing or damaged`,
        );
      state.ents = [];
      // A reset to the base itself: the log continues exactly that snapshot.
      state.termAtBase = rec.index === base.index ? (base.term ?? rec.term) : undefined;
    } else if (rec.type === RecordType.Entry) {
      appendReplay(state, rec.entry, base, file, offset);
    }
  }
  return state;
}

function appendReplay(state: ReplayState, e: Entry, base: ReplayBase, file: string, offset: number): void {
  if (e.index <= base.index) {
    // Overwrites the log from e.index on: nothing after the base survives it.
    state.ents = [];
    state.termAtBase = e.index === base.index ? e.term : undefined;
    return;
  }
  const ents = state.ents;
  if (ents.length === 0) {
    ents.push(e);
    return;
  }
  const first = ents[0]!.index;
  const last = ents[ents.length - 1]!.index;
  if (e.index > last + 1) throw walCorrupt(file, offset, `entry ${e.index} after ${last} (a gap)`);
  if (e.index <= last) {
    if (e.index < first) {
      state.ents = [e];
      return;
    }
    ents.length = e.index - first;
  }
  ents.push(e);
}

export interface ReplayResult {
  hardState: HardState;
  ents: Entry[];
  /** Entries discarded because they did not continue the snapshot (see the file header). */
  discarded?: { count: number; termAtBase: number };
}

/**
 * Applies the continuation rule (file header) and checks the log starts right after the base.
 * Throws `corrupt` (naming `where`) on a gap between the snapshot and the log.
 */
export function finishReplay(state: ReplayState, base: ReplayBase, where: string): ReplayResult {
  let ents = state.ents;
  let discarded: ReplayResult['discarded'];
  if (
    ents.length > 0 &&
    base.term !== undefined &&
    state.termAtBase !== undefined &&
    state.termAtBase !== base.term
  ) {
    discarded = { count: ents.length, termAtBase: state.termAtBase };
    ents = [];
  }
  if (ents.length > 0 && ents[0]!.index !== base.index + 1)
    throw new ConclaveError(
      ErrorCode.Corrupt,
      `wal: the log in ${where} starts at index ${ents[0]!.index}, but the snapshot ends at ${base.index}; entries are missing`,
    );
  const last = ents.length > 0 ? ents[ents.length - 1]!.index : base.index;
  // The commit index is never below the snapshot (it was applied) nor past the log's end.
  const hs = state.hardState;
  const commit = Math.max(base.index, Math.min(hs.commit, last));
  return { hardState: { ...hs, commit }, ents, ...(discarded ? { discarded } : {}) };
}
