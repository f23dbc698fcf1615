/**
 * etcd's Maintenance service beyond Status and Alarm (grpc.ts): Snapshot, Defragment, Hash,
 * HashKV and MoveLeader; the snapshot file format that `conclave snapshot restore` reads; and the
 * store hash.
 *
 * Snapshot file (what Maintenance.Snapshot streams and `etcdctl snapshot save` writes):
 *
 *   ["CNCLSNAP"][format u32 LE = 1][header length u32 LE][header JSON][store snapshot][zeros][SHA-256]
 *
 * The header says the Raft index, term and store revision of the snapshot and the data's length;
 * the store snapshot is the member's own encoding (store/snapshot.ts). Zeros pad the file so that
 * its size mod 512 is 32, and the last 32 bytes are the SHA-256 of everything before them: etcd's
 * server ends its snapshot stream with that digest and etcdctl 3.4 refuses a file whose size mod
 * 512 is not 32 ("sha256 checksum not found"). The file is not etcd's bbolt database: etcdctl
 * `snapshot status`/`restore` cannot read it, `conclave snapshot restore` does.
 *
 * The store hash (Hash, HashKV) is CRC-32C over every key's state at a revision (key, value,
 * create and mod revisions, version, lease) and the compacted revision, so members that applied
 * the same log agree at the same revision. etcd hashes its bbolt key space instead (its values
 * are not comparable with these; only agreement between members is the contract).
 */
import { createHash } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { big, type Int64, num } from '../../../src/protocol/codec.js';
import type { KeyValue } from '../../../src/types.js';
import { crc32c } from '../storage/crc32c.js';
import type { Store } from '../store/store.js';
import type { KvHash, MaintenanceAdmin } from './api.js';
import type { GrpcFailure } from './errors.js';
import type { ServiceKit } from './service-kit.js';

export const snapshotMagic = Buffer.from('CNCLSNAP', 'latin1');
export const snapshotFormat = 1;
/** Bytes of store snapshot per Maintenance.Snapshot message (etcd sends 32 KiB chunks). */
export const snapshotChunkBytes = 64 * 1024;
/** Header JSON a snapshot file may have (a bound on what restore parses). */
export const snapshotHeaderBytesMax = 64 * 1024;

export interface SnapshotHeader {
  readonly index: number;
  readonly term: number;
  readonly revision: number;
  readonly dataBytes: number;
  readonly clusterId: string;
  readonly memberId: string;
}

/** The file's bytes before the trailer: magic, format, header, data, padding. */
export function snapshotFileParts(h: SnapshotHeader, data: Uint8Array): { head: Buffer; pad: Buffer } {
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const head = Buffer.alloc(16 + json.length);
  snapshotMagic.copy(head, 0);
  head.writeUInt32LE(snapshotFormat, 8);
  head.writeUInt32LE(json.length, 12);
  json.copy(head, 16);
  const body = head.length + data.length;
  return { head, pad: Buffer.alloc((512 - (body % 512)) % 512) };
}

/** Reads a snapshot file: checks its SHA-256 trailer (unless `skipHashCheck`), magic and lengths. */
export function readSnapshotFile(
  file: Buffer,
  skipHashCheck = false,
): { header: SnapshotHeader; data: Uint8Array } {
  const bad = (why: string) =>
    new ConclaveError(ErrorCode.Corrupt, `not a conclave snapshot file, or a damaged one: ${why}`);
  if (file.length < 16 + 32 || file.length % 512 !== 32) throw bad(`size ${file.length} is not 32 mod 512`);
  const body = file.subarray(0, file.length - 32);
  if (!skipHashCheck) {
    const sum = createHash('sha256').update(body).digest();
    if (!sum.equals(file.subarray(file.length - 32)))
      throw bad(
        'its SHA-256 does not match (use --skip-hash-check only for a file not from etcdctl snapshot save)',
      );
  }
  if (!body.subarray(0, 8).equals(snapshotMagic))
    throw bad('no CNCLSNAP magic (an etcd bbolt snapshot cannot be restored by conclave)');
  const format = body.readUInt32LE(8);
  if (format !== snapshotFormat) throw bad(`format ${format} is not ${snapshotFormat}`);
  const n = body.readUInt32LE(12);
  if (n > snapshotHeaderBytesMax || 16 + n > body.length) throw bad('a header longer than the file');
  let header: SnapshotHeader;
  try {
    header = JSON.parse(body.subarray(16, 16 + n).toString('utf8')) as SnapshotHeader;
  } catch {
    throw bad('its header is not JSON');
  }
  for (const k of ['index', 'term', 'revision', 'dataBytes'] as const)
    if (!Number.isSafeInteger(header[k]) || header[k] < 0) throw bad(`header field ${k}`);
  if (16 + n + header.dataBytes > body.length) throw bad('data longer than the file');
  return { header, data: body.subarray(16 + n, 16 + n + header.dataBytes) };
}

const u32 = Buffer.alloc(8);
function mix(crc: number, v: number): number {
  u32.writeDoubleLE(v, 0);
  return crc32c(u32, crc);
}

/**
 * Keys hashed per turn of the event loop at most, and value bytes per turn at most (whichever
 * comes first): a hash of a large store is computed in slices, so the member keeps heartbeating
 * and serving meanwhile (a single pass over a million keys held the loop for seconds). One slice
 * of 1,000 small keys takes about a millisecond. (At a past revision a slice also walks over the
 * keys deleted by then, which it does not count.)
 */
export const hashSliceKeysMax = 1000;
export const hashSliceBytesMax = 4 * 1024 * 1024;

/**
 * CRC-32C of every key's state at `revision` (0: current) and the compacted revision, read in
 * slices of at most `hashSliceKeysMax` keys / `hashSliceBytesMax` value bytes, each in its own
 * turn of the event loop. The state at a fixed revision does not change while later writes are
 * applied between slices; a compaction past `revision` meanwhile fails it with `compacted` (as a
 * HashKV of a compacted revision does), which the caller may retry at a newer revision.
 */
export async function hashStore(store: Store, revision: number): Promise<KvHash> {
  const mvcc = store.mvcc;
  const rev = mvcc.checkRevision(revision > 0 ? revision : store.revision);
  const compactRevision = mvcc.compactRev;
  // etcd 3.4 (mvcc kvstore.go HashByRev): a revision at or below the compacted one is refused,
  // the compacted revision itself included (a range read there is still served).
  if (revision > 0 && compactRevision > 0 && revision <= compactRevision)
    throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted', {
      compactRevision,
    });
  let crc = 0;
  let next = '';
  const batch: Array<[string, KeyValue]> = [];
  for (;;) {
    batch.length = 0;
    mvcc.scan(next, '\u0000', rev, (k, kv) => batch.push([k, kv]), hashSliceKeysMax);
    let bytes = 0;
    let i = 0;
    for (; i < batch.length && bytes < hashSliceBytesMax; i++) {
      const kv = batch[i]![1];
      bytes += kv.value.length + kv.key.length;
      crc = mix(crc, kv.key.length);
      crc = crc32c(kv.key, crc);
      crc = mix(crc, kv.value.length);
      crc = crc32c(kv.value, crc);
      crc = mix(crc, kv.createRevision);
      crc = mix(crc, kv.modRevision);
      crc = mix(crc, kv.version);
      crc = mix(crc, Number(kv.lease));
    }
    // Done when the scan came back short and every key of it was hashed.
    if (i === batch.length && batch.length < hashSliceKeysMax) break;
    // The next slice starts at the first key not hashed (keys are latin1 strings: k + "\0" is
    // the next possible key after k).
    next = i < batch.length ? batch[i]![0] : `${batch[i - 1]![0]}\u0000`;
    batch.length = 0;
    await new Promise<void>((r) => setImmediate(r));
    mvcc.checkRevision(rev);
    if (mvcc.compactRev !== compactRevision)
      throw new ConclaveError(
        ErrorCode.Compacted,
        'mvcc: required revision has been compacted (a compaction ran while the hash was computed; retry)',
        { compactRevision: mvcc.compactRev },
      );
  }
  crc = mix(crc, compactRevision);
  return { hash: crc >>> 0, compactRevision, revision: rev };
}

const notServed: GrpcFailure = {
  code: Status.UNIMPLEMENTED,
  details: 'etcdserver: maintenance is not served by this member',
};

/** etcd's texts for maintenance refusals → their codes. */
const failures: ReadonlyArray<readonly [string, Status]> = [
  ['etcdserver: not leader', Status.FAILED_PRECONDITION],
  ['etcdserver: bad leader transferee', Status.FAILED_PRECONDITION],
  ['etcdserver: request timed out, leader transfer took too long', Status.DEADLINE_EXCEEDED],
];

function failureOf(k: ServiceKit, err: unknown): GrpcFailure {
  if (ConclaveError.is(err))
    for (const [text, code] of failures) if (err.message === text) return { code, details: text };
  return k.ctx.failure(err);
}

/** Registers Snapshot, Defragment, Hash, HashKV and MoveLeader. */
export function registerMaintenance(k: ServiceKit): void {
  const { ctx, backend } = k;
  const admin: MaintenanceAdmin | undefined = backend.maintenance;

  const run = async <R>(
    call: grpc.ServerUnaryCall<unknown, object>,
    cb: grpc.sendUnaryData<object>,
    work: (a: MaintenanceAdmin) => Promise<R> | R,
    toBody: (r: R) => object,
    adminOnly = true,
  ): Promise<void> => {
    if (!k.admit(call, cb)) return;
    if (!admin) return k.fail(cb, notServed);
    // etcd 3.4 (authMaintenanceServer): Defragment, Hash and HashKV need the root role; MoveLeader
    // does not.
    if (adminOnly) {
      const denied = ctx.authGate?.maintenanceAdmin(call);
      if (denied) return k.fail(cb, denied);
    }
    ctx.inflight++;
    try {
      cb(null, toBody(await work(admin)));
    } catch (err) {
      k.fail(cb, failureOf(k, err));
    } finally {
      ctx.inflight--;
    }
  };

  k.unary(
    '/etcdserverpb.Maintenance/Defragment',
    k.type('DefragmentRequest'),
    k.type('DefragmentResponse'),
    ((call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) =>
      run(
        call,
        cb,
        (a) => a.defragment(),
        () => ({ header: ctx.currentHeader() }),
      )) as never,
  );

  k.unary('/etcdserverpb.Maintenance/Hash', k.type('HashRequest'), k.type('HashResponse'), ((
    call: grpc.ServerUnaryCall<object, object>,
    cb: grpc.sendUnaryData<object>,
  ) =>
    run(
      call,
      cb,
      (a) => a.hashKv(0),
      (h) => ({ header: ctx.header(h.revision), hash: h.hash }),
    )) as never);

  k.unary('/etcdserverpb.Maintenance/HashKV', k.type('HashKVRequest'), k.type('HashKVResponse'), ((
    call: grpc.ServerUnaryCall<{ revision?: Int64 }, object>,
    cb: grpc.sendUnaryData<object>,
  ) =>
    run(
      call,
      cb,
      (a) => a.hashKv(Math.max(0, num(call.request.revision))),
      // A store never compacted answers -1, as etcd's (its compacted revision starts at -1).
      (h) => ({
        header: ctx.header(h.revision),
        hash: h.hash,
        compactRevision: h.compactRevision === 0 ? -1 : h.compactRevision,
      }),
    )) as never);

  k.unary(
    '/etcdserverpb.Maintenance/MoveLeader',
    k.type('MoveLeaderRequest'),
    k.type('MoveLeaderResponse'),
    ((call: grpc.ServerUnaryCall<{ targetID?: Int64 }, object>, cb: grpc.sendUnaryData<object>) =>
      run(
        call,
        cb,
        (a) => a.moveLeader(big(call.request.targetID, true)),
        () => ({ header: ctx.currentHeader() }),
        false,
      )) as never,
  );

  const resType = k.type('SnapshotResponse');
  k.server.register(
    '/etcdserverpb.Maintenance/Snapshot',
    ((call: grpc.ServerWritableStream<object, object>) => {
      void streamSnapshot(k, admin, call);
    }) as grpc.UntypedHandleCall,
    k.encoder(resType),
    k.decoder(k.type('SnapshotRequest')),
    'serverStream',
  );
}

/**
 * Streams a snapshot file in chunks, waiting for the stream to drain between them (one buffer of
 * the store is held; the wire is chunked), and ends with the SHA-256 of everything sent.
 */
async function streamSnapshot(
  k: ServiceKit,
  admin: MaintenanceAdmin | undefined,
  call: grpc.ServerWritableStream<object, object>,
): Promise<void> {
  const failWith = (f: GrpcFailure): void => {
    call.emit('error', { code: f.code, details: f.details });
  };
  if (!admin) return failWith(notServed);
  const denied = k.ctx.authGate?.maintenanceAdmin(call);
  if (denied) return failWith(denied);
  let snap: Awaited<ReturnType<MaintenanceAdmin['snapshot']>>;
  try {
    snap = await admin.snapshot();
  } catch (err) {
    return failWith(failureOf(k, err));
  }
  const info = k.backend.info;
  const { head, pad } = snapshotFileParts(
    {
      index: snap.index,
      term: snap.term,
      revision: snap.revision,
      dataBytes: snap.data.length,
      clusterId: info.clusterId.toString(16),
      memberId: info.memberId.toString(16),
    },
    snap.data,
  );
  const sha = createHash('sha256');
  const parts: Uint8Array[] = [head];
  for (let off = 0; off < snap.data.length; off += snapshotChunkBytes)
    parts.push(snap.data.subarray(off, Math.min(snap.data.length, off + snapshotChunkBytes)));
  parts.push(pad);
  let remaining = head.length + snap.data.length + pad.length + 32;
  let closed = false;
  call.on('cancelled', () => {
    closed = true;
  });
  for (const p of parts) {
    if (closed) return;
    if (p.length === 0) continue;
    sha.update(p);
    remaining -= p.length;
    const ok = call.write({ header: k.ctx.currentHeader(), remainingBytes: remaining, blob: p });
    if (!ok) await new Promise<void>((r) => call.once('drain', () => r()));
  }
  if (closed) return;
  call.write({ header: k.ctx.currentHeader(), remainingBytes: 0, blob: sha.digest() });
  call.end();
}
