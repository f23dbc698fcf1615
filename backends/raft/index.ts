import type { EmbeddedConnectOptions } from '../../src/connect.js';
import type { KV } from '../../src/kv.js';

/** Placeholder until the embedded Raft backend lands (issue 4). */
export async function connectEmbedded(_opts: EmbeddedConnectOptions): Promise<KV> {
  throw new Error('the embedded raft backend is not built yet');
}
