import { describe } from 'vitest';
import type { RegisterTests } from '../context.js';
import { registerElectionTests } from './election.js';
import { registerFailoverTests } from './failover.js';
import { registerInteropTests } from './interop.js';
import { registerLossTests } from './loss.js';
import { registerMutexTests } from './mutex.js';
import { registerSyncTests } from './sync.js';

/** Recipe conformance tests (issues 6 and 7), run on every backend. */
export const registerRecipes: RegisterTests | undefined = (ctx) => {
  describe('mutex', () => registerMutexTests(ctx));
  describe('election', () => registerElectionTests(ctx));
  describe('rwmutex, semaphore, barriers', () => registerSyncTests(ctx));
  describe('loss and resync', () => registerLossTests(ctx));
  describe('failover', () => registerFailoverTests(ctx));
  describe('interop', () => registerInteropTests(ctx));
};
