import { it } from 'vitest';
import type { RegisterTests } from '../context.js';

/** Conformance tests of Queue, PriorityQueue and WorkQueue (issue 7); run on every backend. Not written yet: listed as todo. */
export const registerQueueTests: RegisterTests = (_ctx) => {
  it.todo('queue — N producers × M consumers, every item delivered exactly once');
  it.todo('work queue — a killed consumer’s item is redelivered after the visibility timeout');
};
