/**
 * Child process for the crash test (crash.test.ts): opens a durable 3-member embedded cluster in
 * `argv[2]`, prints its recovered state as one JSON line, then writes keys `c/<run>/<i>` with 16
 * in flight, printing `ack <key> <revision>` after each acknowledged put, until it is killed.
 * stdout is a pipe: on Linux, writes to it are synchronous, so a printed ack was acknowledged.
 */
import { EmbeddedKV, startCluster } from '../../backends/raft/embedded.js';
import { toText } from '../../src/keys.js';

const dir = process.argv[2]!;
const run = process.argv[3]!;
const c = await startCluster({
  nodes: 3,
  dataDir: dir,
  segmentBytes: 256 * 1024,
  snapshotEntries: 300,
  log: (m) => process.stderr.write(`${m}\n`),
});
const kv = new EmbeddedKV(c);
const r = await kv.range('c/', { prefix: true, keysOnly: true });
process.stdout.write(`${JSON.stringify({ revision: r.revision, keys: r.kvs.map((x) => toText(x.key)) })}\n`);
let i = 0;
const worker = async () => {
  for (let n = 0; n < 100_000; n++) {
    const key = `c/${run}/${i++}`;
    const res = await kv.put(key, 'x'.repeat(64));
    process.stdout.write(`ack ${key} ${res.revision}\n`);
  }
};
await Promise.all(Array.from({ length: 16 }, worker));
