import { describe } from 'vitest';
import type { RegisterTests } from '../context.js';
import { registerConfigTests } from './config.js';
import { registerCounterStmTests } from './counter-stm.js';
import { registerElectionTests } from './election.js';
import { registerFailoverTests } from './failover.js';
import { registerGroupTests } from './group.js';
import { registerInteropTests } from './interop.js';
import { registerLossTests } from './loss.js';
import { registerMultiLockTests } from './multi-lock.js';
import { registerMutexTests } from './mutex.js';
import { registerNamingTests } from './naming.js';
import { registerPrefixCacheTests } from './prefix-cache.js';
import { registerQueueTests } from './queue.js';
import { registerSyncTests } from './sync.js';
import { registerTopicTests } from './topic.js';
import { registerWorkQueueTests } from './work-queue.js';

/** Recipe conformance tests, run on every backend. */
export const registerRecipes: RegisterTests | undefined = (ctx) => {
  describe('mutex', () => registerMutexTests(ctx));
  describe('election', () => registerElectionTests(ctx));
  describe('rwmutex, semaphore, barriers', () => registerSyncTests(ctx));
  describe('loss and resync', () => registerLossTests(ctx));
  describe('failover', () => registerFailoverTests(ctx));
  describe('interop', () => registerInteropTests(ctx));
  describe('counter and stm', () => registerCounterStmTests(ctx));
  describe('queues', () => registerQueueTests(ctx));
  describe('config', () => registerConfigTests(ctx));
  describe('naming', () => registerNamingTests(ctx));
  describe('topic', () => registerTopicTests(ctx));
  describe('work queue', () => registerWorkQueueTests(ctx));
  describe('multi-lock', () => registerMultiLockTests(ctx));
  describe('prefix cache', () => registerPrefixCacheTests(ctx));
  describe('group and partitioner', () => registerGroupTests(ctx));
};
