/**
 * `conclave snapshot restore <file>`: a new member's data dir from a snapshot file taken with
 * `etcdctl snapshot save` (server/maintenance.ts describes the file), with etcdctl 3.4's
 * `snapshot restore` flags: `--name`, `--initial-cluster`, `--initial-cluster-token`,
 * `--initial-advertise-peer-urls`, `--data-dir`, `--skip-hash-check`.
 *
 * As etcd's restore does, the result is a new cluster: member and cluster IDs are derived from the
 * flags (every member of the new cluster restores the same file with the same `--initial-cluster`
 * and token), the store keeps every key and revision of the snapshot, and the Raft state starts
 * afresh: the snapshot is installed at its Raft index in term 1 with the new members as voters, so
 * every member starts from the same state and log position. Leases are kept (their deadlines
 * restart, as at any leader change). The data dir must not exist yet or be empty.
 */
import { readdir, readFile } from 'node:fs/promises';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { bootstrapIdentity, type Identity, parseInitialCluster, writeIdentity } from './server/ids.js';
import { readSnapshotFile } from './server/maintenance.js';
import { DiskStorage } from './storage/disk-storage.js';

export interface RestoreOptions {
  readonly file: string;
  readonly dataDir: string;
  readonly name: string;
  readonly initialCluster: string;
  readonly initialClusterToken: string;
  readonly initialAdvertisePeerUrls: readonly string[];
  readonly skipHashCheck?: boolean;
}

export async function restoreSnapshot(o: RestoreOptions): Promise<{ identity: Identity; revision: number }> {
  const existing = await readdir(o.dataDir).catch(() => [] as string[]);
  if (existing.length > 0)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `data-dir "${o.dataDir}" exists and is not empty: restore into a new directory`,
    );
  const { header, data } = readSnapshotFile(await readFile(o.file), o.skipHashCheck === true);
  const cluster = parseInitialCluster(o.initialCluster);
  const listed = cluster.get(o.name);
  if (!listed)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `--initial-cluster has no member named "${o.name}" (--name); it lists ${[...cluster.keys()].join(', ')}`,
    );
  if ([...listed].sort().join(',') !== [...o.initialAdvertisePeerUrls].sort().join(','))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `--initial-advertise-peer-urls (${o.initialAdvertisePeerUrls.join(',')}) does not match --initial-cluster's URLs for "${o.name}" (${listed.join(',')})`,
    );
  const identity = bootstrapIdentity({
    name: o.name,
    initialCluster: cluster,
    token: o.initialClusterToken,
    clientUrls: [],
  });
  await writeIdentity(o.dataDir, identity);
  const voters = identity.members.map((m) => m.nodeId);
  const storage = await DiskStorage.open({ dataDir: o.dataDir, nodeId: identity.nodeId, voters });
  try {
    const index = Math.max(1, header.index);
    await storage.save({
      hardState: { term: 1, vote: 0, commit: index },
      entries: [],
      snapshot: { meta: { index, term: 1, confState: { voters, learners: [] } }, data },
    });
  } finally {
    await storage.close();
  }
  return { identity, revision: header.revision };
}
