/**
 * A bound on what one response may cost once decoded, checked before decoding it.
 *
 * The receive limit (maxReceiveBytes) bounds the wire size, but protobuf inflates: an empty
 * KeyValue is 2 bytes on the wire and ~200 bytes of objects once decoded and converted, so a
 * hostile or broken server could turn a 16 MiB response into gigabytes. This pass walks the wire
 * format (no allocation), counts the objects decoding would make (every embedded message, every
 * bytes or string field), and refuses the response when wire bytes + objects × decodedObjectBytes
 * exceed the bound (`decodedBytesMax` = 4 × maxReceiveBytes). It also refuses nesting deeper than
 * nestingDepthMax (etcd nests txns inside txns; protobufjs decodes recursively).
 */
import protobuf from 'protobufjs';

/** Bytes counted per decoded object: measured ~200 for a converted empty KeyValue, rounded up. */
export const decodedObjectBytes = 256;
/** Deepest message nesting accepted in a response. */
export const nestingDepthMax = 32;

/** The text that marks the refusal (mapGrpcError recognises it inside grpc-js's parse error). */
export const decodeRefusal = 'would decode into more than';

class Refused extends Error {}

const resolved = new WeakSet<protobuf.Type>();

function count(type: protobuf.Type, r: protobuf.Reader, end: number, depth: number, budget: number): number {
  if (depth > nestingDepthMax) throw new Refused(`messages nested deeper than ${nestingDepthMax}`);
  let objects = 0;
  while (r.pos < end) {
    const tag = r.uint32();
    const wireType = tag & 7;
    if (wireType !== 2) {
      r.skipType(wireType);
      continue;
    }
    const len = r.uint32();
    const start = r.pos;
    if (start + len > end) throw new Refused('a field runs past the end of the message');
    const field = type.fieldsById[tag >>> 3];
    const sub = field?.resolvedType;
    objects += 1;
    if (sub instanceof protobuf.Type) objects += count(sub, r, start + len, depth + 1, budget);
    r.pos = start + len;
    if (objects * decodedObjectBytes > budget) throw new Refused(`over ${budget} bytes`);
  }
  return objects;
}

/**
 * Throws when `buf`, decoded as `type`, would cost more than `budget` bytes (see the module
 * comment). Cheap next to decoding: one pass over the wire bytes without allocating.
 */
export function checkDecodedSize(type: protobuf.Type, buf: Uint8Array, budget: number): void {
  // protobufjs resolves field types lazily (on a type's first encode or decode); the walk needs
  // them now to know which fields hold messages.
  if (!resolved.has(type)) {
    (type.root ?? type).resolveAll();
    resolved.add(type);
  }
  if (buf.length > budget)
    throw new Error(`response of ${buf.length} bytes ${decodeRefusal} ${budget} bytes`);
  try {
    const objects = count(type, protobuf.Reader.create(buf), buf.length, 0, budget - buf.length);
    const estimate = buf.length + objects * decodedObjectBytes;
    if (estimate > budget) throw new Refused(`about ${estimate} bytes`);
  } catch (err) {
    const why = err instanceof Refused ? err.message : err instanceof Error ? err.message : String(err);
    throw new Error(`response of ${buf.length} bytes ${decodeRefusal} ${budget} bytes (${why})`);
  }
}
