/**
 * The conformance suite against the Raft store's state machine alone (LocalKV: one Store, no
 * replication). The embedded Raft cluster runs the same suite through consensus (raft-embedded.test.ts).
 */
import { LocalKV } from '../../backends/raft/store/local-kv.js';
import { runConformance } from '../conformance/index.js';

let shared: LocalKV | undefined;

/** Clients share one store; closing a client must not close the store. */
function client(): LocalKV {
  const s = shared!;
  const view = Object.create(s) as LocalKV;
  let closed = false;
  return new Proxy(view, {
    get(_target, prop, receiver) {
      if (prop === 'close' || prop === Symbol.asyncDispose) {
        return async () => {
          closed = true;
        };
      }
      const v = Reflect.get(s, prop, receiver === view ? s : receiver);
      if (typeof v === 'function') {
        return (...args: unknown[]) => {
          if (closed && prop !== 'close')
            return Promise.reject(
              Object.assign(new Error('the store client is closed'), {
                name: 'ConclaveError',
                code: 'closed',
              }),
            );
          return (v as (...a: unknown[]) => unknown).apply(s, args);
        };
      }
      return v;
    },
  });
}

runConformance({
  name: 'raft store (local, unreplicated)',
  supports: {},
  minTtlSeconds: 1,
  async setup() {
    shared = new LocalKV({ minTtlSeconds: 1, expiryCheckMs: 50 });
  },
  async teardown() {
    await shared?.close();
  },
  factory: async () => client(),
});
