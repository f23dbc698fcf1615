/**
 * The baseline client path: the third-party `etcd3` npm client behind the phases' KV subset
 * (BenchKV). It calls the client's raw gRPC stubs (`client.kv.put/range/txn`) — the thinnest path
 * the library offers, so the baseline is not slowed by its builders — and its WatchBuilder for
 * watches (one multiplexed watch stream per client, like Conclave's).
 *
 * Only what the phases use is implemented; anything else throws, so a phase cannot silently
 * measure something the adapter does not do.
 */
import { Etcd3, type IKeyValue, type IRequestOp, type Watcher } from 'etcd3';
import { prefixEnd, toBytes } from '../../src/keys.js';
import { limits } from '../../src/limits.js';
import type { Compare, KeyValue, Op, TxnResult, Watch, WatchBatch, WatchEvent } from '../../src/types.js';
import { BatchQueue } from './batch-queue.js';
import type { BenchKV } from './types.js';

const buf = (b: Uint8Array | string): Buffer => {
  const u = toBytes(b);
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
};

function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key,
    value: kv.value,
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: BigInt(kv.lease),
  };
}

const compareResults = { '=': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;

function toCompare(c: Compare) {
  if (c.end !== undefined || c.prefix || c.fromKey)
    throw new Error('etcd3 adapter: range compares unsupported');
  const base = { key: buf(c.key), result: compareResults[c.result] };
  switch (c.target) {
    case 'mod':
      return { ...base, target: 'Mod' as const, mod_revision: c.value };
    case 'version':
      return { ...base, target: 'Version' as const, version: c.value };
    case 'create':
      return { ...base, target: 'Create' as const, create_revision: c.value };
    case 'value':
      return { ...base, target: 'Value' as const, value: buf(c.value) };
    default:
      throw new Error(`etcd3 adapter: compare target ${c.target} unsupported`);
  }
}

function toRequestOp(op: Op): IRequestOp {
  if (op.type === 'put' && op.options === undefined) {
    return { request_put: { key: buf(op.key), value: buf(op.value) } };
  }
  if (op.type === 'get' && op.options === undefined) return { request_range: { key: buf(op.key) } };
  throw new Error(`etcd3 adapter: txn op ${op.type} with options unsupported`);
}

export class Etcd3Adapter implements BenchKV {
  readonly client: Etcd3;

  constructor(endpoints: readonly string[]) {
    const hosts = endpoints.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`));
    this.client = new Etcd3({ hosts });
  }

  async put(key: Uint8Array | string, value: Uint8Array | string): Promise<{ revision: number }> {
    const res = await this.client.kv.put({ key: buf(key), value: buf(value) });
    return { revision: Number(res.header.revision) };
  }

  async get(key: Uint8Array | string, opts?: { serializable?: boolean }): Promise<KeyValue | undefined> {
    const res = await this.client.kv.range({ key: buf(key), serializable: opts?.serializable ?? false });
    const kv = res.kvs[0];
    return kv === undefined ? undefined : toKeyValue(kv);
  }

  async delete(key: Uint8Array | string, opts?: { prefix?: boolean }) {
    const k = toBytes(key);
    const res = await this.client.kv.deleteRange({
      key: buf(k),
      ...(opts?.prefix ? { range_end: buf(prefixEnd(k)) } : {}),
    });
    return { revision: Number(res.header.revision), deleted: Number(res.deleted), prevKvs: [] };
  }

  async txn(t: { compare: Compare[]; success: Op[]; failure: Op[] }): Promise<TxnResult> {
    const res = await this.client.kv.txn({
      compare: t.compare.map(toCompare),
      success: t.success.map(toRequestOp),
      failure: t.failure.map(toRequestOp),
    });
    // The phases read only `succeeded` and `revision`; responses are not translated.
    return { succeeded: res.succeeded, revision: Number(res.header.revision), responses: [] };
  }

  watch(key: Uint8Array | string, opts?: { prefix?: boolean; signal?: AbortSignal }): Watch {
    const queue = new BatchQueue(limits.watchBufferBatchesMax);
    const builder = this.client.watch();
    if (opts?.prefix) builder.prefix(buf(key));
    else builder.key(buf(key));
    const created = builder.create();
    let watcher: Watcher | undefined;
    const ready = created.then((w) => {
      watcher = w;
      w.on('data', (res) => {
        const events: WatchEvent[] = res.events.map((e) => ({
          type: e.type === 'Put' ? 'put' : 'delete',
          kv: toKeyValue(e.kv),
        }));
        queue.push({ events, revision: Number(res.header.revision) } satisfies WatchBatch);
      });
      w.on('error', (err) => queue.fail(err));
      // The revision etcd registered the watch at (its created response's header).
      return w.lastRevision() ?? 0;
    });
    ready.catch((err) => queue.fail(err));
    const close = async (): Promise<void> => {
      queue.end();
      await ready.catch(() => undefined);
      await watcher?.cancel();
    };
    opts?.signal?.addEventListener('abort', () => void close(), { once: true });
    return {
      ready,
      close,
      [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator](),
      [Symbol.asyncDispose]: close,
    };
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
