import type { RegisterTests } from '../context.js';

/** Conformance tests of Queue, PriorityQueue and WorkQueue (issue 7); run on every backend. */
export const registerQueueTests: RegisterTests = (_ctx) => {};
