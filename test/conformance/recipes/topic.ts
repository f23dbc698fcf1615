import type { RegisterTests } from '../context.js';

/** Conformance tests of Topic (issue 7); run on every backend. */
export const registerTopicTests: RegisterTests = (_ctx) => {};
