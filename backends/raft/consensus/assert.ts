/** Invariant assertions for the consensus core: a failure is a bug, never an input error. */
export class RaftInvariantError extends Error {
  override readonly name = 'RaftInvariantError';
}

export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new RaftInvariantError(`raft invariant violated: ${message}`);
}

/** Raised (not thrown as an invariant) when a proposal cannot be accepted right now. */
export class ProposalDropped extends Error {
  override readonly name = 'ProposalDropped';
  constructor(
    readonly reason:
      | 'no-leader'
      | 'transferring'
      | 'uncommitted-bytes'
      | 'conf-change-pending'
      | 'not-member'
      | 'learner-behind',
    message: string,
  ) {
    super(message);
  }
}
