import type { RegisterTests } from '../context.js';

/** Conformance tests of ConfigWatcher / watchConfig / setConfig (issue 7); run on every backend. */
export const registerConfigTests: RegisterTests = (_ctx) => {};
