import type { RegisterTests } from '../context.js';

/** Conformance tests of ServiceRegistry and ServiceResolver (issue 7); run on every backend. */
export const registerNamingTests: RegisterTests = (_ctx) => {};
