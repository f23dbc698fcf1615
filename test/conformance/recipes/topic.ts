import { it } from 'vitest';
import type { RegisterTests } from '../context.js';

/** Conformance tests of Topic (issue 7); run on every backend. Not written yet: listed as todo. */
export const registerTopicTests: RegisterTests = (_ctx) => {
  it.todo('topic — a durable subscriber resumes without gaps or repeats');
};
