/**
 * Child process for exit.test.ts: uses an embedded store and never closes it. The test checks the
 * process ends on its own once its last line ran (and, for a durable store, that what it wrote is
 * there on the next open). Modes:
 * - `memory`: a 3-member memory cluster via `connect('embedded:?nodes=3')`: puts, a Session, a
 *   Mutex locked and unlocked, a watch opened and closed.
 * - `durable <dir>`: a single durable member via `connect({ backend: 'embedded', dataDir })`: puts.
 * - `reopen <dir>`: opens the durable member again and prints what it holds.
 * - `expiry`: a lease with the minimum TTL and a key on it; waits on a watch for the key's deletion
 *   when the lease expires (time must keep passing while a watch is open), prints it, and ends
 *   with the watch still open and then closed by `break`.
 */
import { connect, Mutex, Session } from '../../index.js';
import { toText } from '../../src/keys.js';

const mode = process.argv[2];
if (mode === 'memory') {
  const kv = await connect('embedded:?nodes=3');
  await kv.put('a', '1');
  const session = await Session.create(kv, { ttlSeconds: 5 });
  const lock = await new Mutex(session, 'locks/x').lock();
  await lock.unlock();
  const w = kv.watch('a');
  await w.ready;
  await w.close();
  console.log(`done ${toText((await kv.get('a'))?.value ?? new Uint8Array())}`);
} else if (mode === 'durable') {
  const kv = await connect({ backend: 'embedded', dataDir: process.argv[3]! });
  for (let i = 0; i < 20; i++) await kv.put(`k${i}`, `v${i}`);
  console.log('done');
} else if (mode === 'reopen') {
  const kv = await connect({ backend: 'embedded', dataDir: process.argv[3]! });
  const r = await kv.range('k', { prefix: true });
  console.log(`keys ${r.count} last ${toText((await kv.get('k19'))?.value ?? new Uint8Array())}`);
  await kv.close();
} else if (mode === 'expiry') {
  const kv = await connect('embedded:');
  const lease = await kv.lease.grant(1);
  const put = await kv.put('leased', 'x', { lease: lease.id });
  for await (const batch of kv.watch('leased', { startRevision: put.revision + 1 })) {
    if (batch.events.some((e) => e.type === 'delete')) {
      console.log('expired');
      break;
    }
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}
