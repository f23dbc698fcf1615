import { it } from 'vitest';
import type { RegisterTests } from '../context.js';

/** Conformance tests of Counter and stm (issue 7); run on every backend. Not written yet: listed as todo. */
export const registerCounterStmTests: RegisterTests = (_ctx) => {
  it.todo('counter — concurrent adds lose no update');
  it.todo('stm — each isolation level allows or prevents its anomaly as etcd’s');
};
