/**
 * Child process for commit-file.test.ts: opens a DiskStorage in `argv[2]` (member 1 of voters
 * 1, 2, 3), saves five put entries durably with commit 2, then a commit-only Ready (commit 5,
 * the shape a follower saves when the leader's next message advances its commit index), prints
 * `saved` and waits to be killed.
 */
import { EntryType } from '../../backends/raft/consensus/types.js';
import { encodeCommand } from '../../backends/raft/node/commands.js';
import { DiskStorage } from '../../backends/raft/storage/disk-storage.js';

const enc = new TextEncoder();
const s = await DiskStorage.open({ dataDir: process.argv[2]!, nodeId: 1, voters: [1, 2, 3] });
const entries = [1, 2, 3, 4, 5].map((index) => ({
  index,
  term: 1,
  type: EntryType.Normal,
  data: encodeCommand({
    id: `c${index}`,
    op: 'put',
    key: enc.encode(`k${index}`),
    value: enc.encode('v'),
    opts: {},
  }),
}));
await s.save({ entries, hardState: { term: 1, vote: 2, commit: 2 } });
const r = s.save({ entries: [], hardState: { term: 1, vote: 2, commit: 5 } });
if (r) throw new Error('a commit-only save must not wait for the disk');
process.stdout.write('saved\n');
setInterval(() => undefined, 60_000);
