/**
 * The Watch service writes event responses pre-encoded (server/watch.ts): each event encoded once
 * and shared by every watch of the revision, the header once per revision. The bytes must be
 * exactly what encoding the response object gives, for every shape of event and watch ID.
 */
import { describe, expect, it } from 'vitest';
import {
  encodedEvent,
  watchResponseBytes,
  watchResponseSerializer,
} from '../../backends/raft/server/watch.js';
import { eventToPb, wire64 } from '../../backends/raft/server/wire.js';
import { root } from '../../src/protocol/codec.js';
import type { KeyValue, WatchEvent } from '../../src/types.js';

const WatchResponse = root.lookupType('etcdserverpb.WatchResponse');
const ResponseHeader = root.lookupType('etcdserverpb.ResponseHeader');
const enc = (s: string) => new TextEncoder().encode(s);

function kv(key: string, value: string, rev: number, lease = 0n): KeyValue {
  return { key: enc(key), value: enc(value), createRevision: 2, modRevision: rev, version: rev - 1, lease };
}

const header = {
  clusterId: wire64(0xcdf818194e3a8c32n, true),
  memberId: wire64(0x8e9e05c52164694dn, true),
  revision: 1234567,
  raftTerm: 9,
};

const events: WatchEvent[][] = [
  [{ type: 'put', kv: kv('a', 'x'.repeat(256), 5) }],
  [{ type: 'put', kv: kv('b', '', 6, 0x7fff_ffff_ffff_ffffn) }],
  [{ type: 'delete', kv: { ...kv('c', '', 7), value: new Uint8Array(0), createRevision: 0, version: 0 } }],
  [
    { type: 'put', kv: kv('d', 'new', 8), prevKv: kv('d', 'old', 7) },
    { type: 'delete', kv: kv('e', '', 8), prevKv: kv('e', 'gone', 3) },
    { type: 'put', kv: kv('f'.repeat(200), 'v'.repeat(70_000), 8) },
  ],
];

describe('watch responses written pre-encoded', () => {
  it('are byte for byte the encoded response object, for watch IDs 0, small, multi-byte and large', () => {
    const h = ResponseHeader.encode(header).finish();
    for (const evs of events)
      for (const id of [0, 1, 127, 128, 300, 2 ** 31, 2 ** 40 + 7]) {
        const got = watchResponseBytes(h, id, evs);
        const want = WatchResponse.encode({
          header,
          watchId: id || undefined,
          events: evs.map(eventToPb),
        }).finish();
        expect(Buffer.from(got!).equals(Buffer.from(want)), `watch ${id}, ${evs.length} events`).toBe(true);
        // And it decodes back to the same response.
        const back = WatchResponse.toObject(WatchResponse.decode(got!), { longs: String, bytes: Buffer });
        expect(Number(back.watchId ?? 0)).toBe(id);
        expect(back.events).toHaveLength(evs.length);
      }
  });

  it('encode an event once for every watch that receives it', () => {
    const ev: WatchEvent = { type: 'put', kv: kv('k', 'v', 3) };
    expect(encodedEvent(ev)).toBe(encodedEvent(ev));
    expect(encodedEvent({ ...ev })).not.toBe(encodedEvent(ev));
  });

  it('are refused for a watch ID they cannot write (encoded the ordinary way instead)', () => {
    const h = ResponseHeader.encode(header).finish();
    expect(watchResponseBytes(h, -1, events[0]!)).toBeUndefined();
    expect(watchResponseBytes(h, 2 ** 60, events[0]!)).toBeUndefined();
  });

  it('pass through the stream serializer as they are; response objects are encoded', () => {
    const ser = watchResponseSerializer(WatchResponse);
    const b = Buffer.from([1, 2, 3]);
    expect(ser(b)).toBe(b);
    const o = { header, watchId: 4, created: true };
    expect(ser(o).equals(Buffer.from(WatchResponse.encode(o).finish()))).toBe(true);
  });
});
