/** What the recipe phases share: the Conclave KV they need, or a plain "not available". */
import type { KV } from '../../src/kv.js';
import { NotAvailable, type PhaseContext } from './types.js';

/**
 * The target's full Conclave KV. The `etcd3` baseline client has no queue, work queue or config
 * watcher of its own to compare against, and its adapter implements only the KV subset the KV
 * phases use (no range options, no leases), so those rows are reported as not available.
 */
export function conclaveKvOf(ctx: PhaseContext, recipe: string): KV {
  const { target } = ctx;
  if (target.conclave !== undefined) return target.conclave;
  throw new NotAvailable(
    `${recipe} runs on the Conclave KV; the ${target.client} client has no ${recipe} recipe to compare against`,
  );
}
