/**
 * Barrier (etcd experimental recipe): `hold()` raises it (puts the key), `release()` lowers it
 * (deletes the key), `wait()` blocks until it is down. Not tied to a session: a held barrier stays
 * until released.
 */

import { toBytes } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { CallOptions } from '../src/types.js';
import { checkName } from './internal/check.js';
import { waitDelete } from './internal/wait.js';

/**
 * A barrier (etcd's Go `recipe.Barrier`): one key whose presence holds processes back. See the
 * module comment for the layout.
 */
export class Barrier {
  readonly kv: KV;
  readonly key: string;

  constructor(kv: KV, name: string) {
    checkName('Barrier: name', name);
    this.kv = kv;
    this.key = name;
  }

  /** Raises the barrier; false if it was already held. */
  async hold(opts: CallOptions = {}): Promise<boolean> {
    const t = await this.kv.txn(
      {
        compare: [{ key: this.key, target: 'create', result: '=', value: 0 }],
        success: [{ type: 'put', key: this.key, value: '' }],
        failure: [],
      },
      opts,
    );
    return t.succeeded;
  }

  /** Lowers the barrier (deletes its key): every `wait()` resolves. */
  async release(opts: CallOptions = {}): Promise<void> {
    await this.kv.delete(this.key, opts);
  }

  /** Resolves once the barrier is down. */
  async wait(opts: CallOptions = {}): Promise<void> {
    const r = await this.kv.range(this.key, opts);
    if (r.count === 0) return;
    await waitDelete(this.kv, toBytes(this.key), r.revision + 1, opts.signal ?? new AbortController().signal);
  }
}
