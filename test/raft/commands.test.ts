import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type Command,
  commandFormat,
  decodeCommand,
  encodeCommand,
  txnDepthMax,
} from '../../backends/raft/node/commands.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { Compare, Op, Txn } from '../../src/types.js';

// Arbitraries produce commands in decoded form: bytes as Uint8Array, absent fields left out.
const bytes = fc.uint8Array({ maxLength: 40 });
const num = fc.oneof(
  fc.nat(),
  fc.maxSafeNat(),
  fc.integer({ min: -1000, max: 1000 }),
  fc.double({ noNaN: true }),
  fc.constantFrom(0, -0, 2 ** 53),
);
const lease = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const id = fc.string({ maxLength: 30 });

/** An object with some of the given fields (each either present with its value or absent). */
function partial<T extends Record<string, fc.Arbitrary<unknown>>>(fields: T) {
  return fc.record(fields, { requiredKeys: [] });
}

const selector = { end: bytes, prefix: fc.boolean(), fromKey: fc.boolean() };
const putOpts = partial({
  lease,
  prevKv: fc.boolean(),
  ignoreValue: fc.boolean(),
  ignoreLease: fc.boolean(),
});
const delOpts = partial({ ...selector, prevKv: fc.boolean() });
const getOpts = partial({
  ...selector,
  revision: num,
  limit: num,
  sort: partial({
    target: fc.constantFrom('key', 'version', 'create', 'mod', 'value'),
    order: fc.constantFrom('none', 'ascend', 'descend'),
  }),
  keysOnly: fc.boolean(),
  countOnly: fc.boolean(),
  minModRevision: num,
  maxModRevision: num,
  minCreateRevision: num,
  maxCreateRevision: num,
});

const compareArb: fc.Arbitrary<Compare> = fc
  .tuple(
    bytes,
    partial(selector),
    fc.constantFrom('=', '!=', '<', '>'),
    fc.oneof(
      fc.record({ target: fc.constantFrom('version', 'create', 'mod'), value: num }),
      fc.record({ target: fc.constant('value'), value: bytes }),
      fc.record({ target: fc.constant('lease'), value: lease }),
    ),
  )
  .map(([key, sel, result, tv]) => ({ key, ...sel, result, ...tv }) as Compare);

const { txn: txnArb } = fc.letrec<{ txn: Txn; op: Op }>((tie) => ({
  txn: fc.record({
    compare: fc.array(compareArb, { maxLength: 3 }),
    success: fc.array(tie('op'), { maxLength: 3 }),
    failure: fc.array(tie('op'), { maxLength: 3 }),
  }),
  op: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ type: fc.constant('get'), key: bytes, options: getOpts }, { requiredKeys: ['type', 'key'] }),
    fc.record(
      { type: fc.constant('put'), key: bytes, value: bytes, options: putOpts },
      { requiredKeys: ['type', 'key', 'value'] },
    ),
    fc.record(
      { type: fc.constant('delete'), key: bytes, options: delOpts },
      { requiredKeys: ['type', 'key'] },
    ),
    fc.record({ type: fc.constant('txn'), txn: tie('txn') }),
  ) as fc.Arbitrary<Op>,
}));

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  fc.record({ id, op: fc.constant('put'), key: bytes, value: bytes, opts: putOpts }),
  fc.record({ id, op: fc.constant('delete'), key: bytes, opts: delOpts }),
  fc.record({ id, op: fc.constant('txn'), txn: txnArb }),
  fc.record(
    { id, op: fc.constant('compact'), revision: num, opts: partial({ physical: fc.boolean() }) },
    { requiredKeys: ['id', 'op', 'revision'] },
  ),
  fc.record({ id, op: fc.constant('grant'), lease, ttlSeconds: num }),
  fc.record({ id, op: fc.constant('revoke'), lease }),
) as fc.Arbitrary<Command>;

function expectCorrupt(f: () => unknown): void {
  try {
    f();
  } catch (err) {
    expect(ConclaveError.is(err) && err.code === ErrorCode.Corrupt, String(err)).toBe(true);
    return;
  }
  throw new Error('expected a corrupt error');
}

describe('raft commands — binary encoding', () => {
  it('every command shape (put, delete, nested txns, compact, grant, revoke) round-trips exactly', () => {
    fc.assert(
      fc.property(commandArb, (c) => {
        const data = encodeCommand(c);
        expect(data[0]).toBe(commandFormat);
        // structuredClone: fast-check builds null-prototype records; decoded objects are plain.
        expect(decodeCommand(data)).toStrictEqual(structuredClone(c));
      }),
      { numRuns: 2000 },
    );
  });

  it("a member's published attributes round-trip (member ID as its uint64, JSON text)", () => {
    for (const memberId of [0n, 1n, 0x7fff_ffff_ffff_ffffn, 0xc61f_33e9_8087_dec2n, 2n ** 64n - 1n]) {
      const c: Command = {
        id: 'p1',
        op: 'attributes',
        memberId,
        attributes: JSON.stringify({ name: 'n0', clientUrls: ['http://127.0.0.1:2379'] }),
      };
      expect(decodeCommand(encodeCommand(c))).toEqual(c);
    }
  });

  it('string keys and values decode as their UTF-8 bytes (what the store would apply)', () => {
    const enc = new TextEncoder();
    const c = decodeCommand(
      encodeCommand({
        id: 'é-1',
        op: 'txn',
        txn: {
          compare: [{ key: 'k☃', target: 'value', result: '=', value: 'v\u{1F600}', end: '\0' }],
          success: [{ type: 'put', key: 'a', value: 'ü' }],
          failure: [{ type: 'delete', key: 'p/', options: { prefix: true } }],
        },
      }),
    );
    expect(c).toStrictEqual({
      id: 'é-1',
      op: 'txn',
      txn: {
        compare: [
          {
            key: enc.encode('k☃'),
            end: enc.encode('\0'),
            target: 'value',
            result: '=',
            value: enc.encode('v\u{1F600}'),
          },
        ],
        success: [{ type: 'put', key: enc.encode('a'), value: enc.encode('ü') }],
        failure: [{ type: 'delete', key: enc.encode('p/'), options: { prefix: true } }],
      },
    });
  });

  it('decoded bytes are plain views into the entry: nothing is copied', () => {
    const data = encodeCommand({
      id: 'x',
      op: 'put',
      key: new Uint8Array([1]),
      value: new Uint8Array([2, 3]),
      opts: {},
    });
    // Also through a Buffer (and at an offset): the views are plain Uint8Arrays, whose `slice` copies.
    const backing = Buffer.alloc(data.length + 5);
    backing.set(data, 5);
    for (const input of [data, backing.subarray(5)]) {
      const c = decodeCommand(input) as Extract<Command, { op: 'put' }>;
      expect(c.value.buffer).toBe(input.buffer);
      expect(c.key.buffer).toBe(input.buffer);
      expect(Object.getPrototypeOf(c.value)).toBe(Uint8Array.prototype);
      expect(c.value.byteOffset).toBeGreaterThanOrEqual(input.byteOffset);
      expect(c.value.byteOffset + c.value.length).toBeLessThanOrEqual(input.byteOffset + input.length);
      expect([...c.key, ...c.value]).toEqual([1, 2, 3]);
    }
  });

  it('empty and large values, and keys and values that share one buffer, round-trip', () => {
    const shared = new Uint8Array(1 << 20);
    for (let i = 0; i < shared.length; i++) shared[i] = (i * 31) & 0xff;
    const ops: Op[] = [
      { type: 'put', key: new Uint8Array(0), value: new Uint8Array(0) },
      { type: 'put', key: shared.subarray(0, 10), value: shared.subarray(5, 5 + 300_000) },
      { type: 'put', key: shared.subarray(10, 11), value: shared },
      { type: 'put', key: shared.subarray(3, 3), value: shared.subarray(7, 8) },
      { type: 'delete', key: shared.subarray(0, 4), options: { end: shared.subarray(0, 5) } },
    ];
    const c = decodeCommand(
      encodeCommand({ id: 'big', op: 'txn', txn: { compare: [], success: ops, failure: [] } }),
    ) as Extract<Command, { op: 'txn' }>;
    // Compared as bytes (deep equality of MiB-long arrays element by element is very slow).
    const hex = (b: unknown) => Buffer.from(b as Uint8Array).toString('hex');
    const shape = (o: Op) => ({
      type: o.type,
      key: o.type !== 'txn' ? hex(o.key) : '',
      value: o.type === 'put' ? hex(o.value) : '',
      end: o.type === 'delete' ? hex(o.options?.end) : '',
    });
    expect(c.txn.success.map(shape)).toEqual(ops.map(shape));
    // Each decoded array is its own window: none overlaps another.
    const windows = c.txn.success
      .flatMap((o) => [
        o.type !== 'txn' ? (o.key as Uint8Array) : undefined,
        o.type === 'put' ? (o.value as Uint8Array) : undefined,
      ])
      .filter((b): b is Uint8Array => b !== undefined && b.length > 0)
      .map((b) => [b.byteOffset, b.byteOffset + b.length] as const)
      .sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < windows.length; i++)
      expect(windows[i]![0]).toBeGreaterThanOrEqual(windows[i - 1]![1]);
    // Plain single-key commands too.
    for (const value of [new Uint8Array(0), shared]) {
      const p = decodeCommand(
        encodeCommand({ id: 'p', op: 'put', key: shared.subarray(1, 3), value, opts: { prevKv: true } }),
      ) as Extract<Command, { op: 'put' }>;
      expect(Buffer.compare(p.value, value)).toBe(0);
      expect([...p.key]).toEqual([...shared.subarray(1, 3)]);
    }
  });

  it('string ids and keys round-trip as UTF-8 around the short-ASCII path bounds (32/33 bytes decoding, 127/128 encoding) and with a late non-ASCII character', () => {
    const enc = new TextEncoder();
    const strings = [
      '',
      'a',
      '3-12345',
      'é',
      'a'.repeat(126) + 'é',
      'a'.repeat(127),
      'a'.repeat(128),
      'a'.repeat(127) + 'é',
      'a'.repeat(300),
      '\u007f'.repeat(127),
      '\u0080',
      'abcé',
      'a'.repeat(30) + 'é',
      'a'.repeat(31) + 'é',
      'a'.repeat(32),
      'a'.repeat(33),
      '\u007f'.repeat(20),
      '☃'.repeat(50),
      'x\u{1F600}y',
    ];
    for (const str of strings) {
      // Txn ops take keys and values as strings (Bytes); a top-level put takes bytes.
      const c = decodeCommand(
        encodeCommand({
          id: str,
          op: 'txn',
          txn: { compare: [], success: [{ type: 'put', key: str, value: `${str}!` }], failure: [] },
        }),
      ) as Extract<Command, { op: 'txn' }>;
      expect(c.id).toBe(str);
      const put = c.txn.success[0] as Extract<Op, { type: 'put' }>;
      expect([...(put.key as Uint8Array)]).toEqual([...enc.encode(str)]);
      expect([...(put.value as Uint8Array)]).toEqual([...enc.encode(`${str}!`)]);
    }
  });

  it('every truncation of a valid command, and trailing bytes, fail corrupt', () => {
    fc.assert(
      fc.property(commandArb, (c) => {
        const data = encodeCommand(c);
        for (let n = 0; n < data.length; n++) expectCorrupt(() => decodeCommand(data.subarray(0, n)));
        const longer = new Uint8Array(data.length + 1);
        longer.set(data);
        expectCorrupt(() => decodeCommand(longer));
      }),
      { numRuns: 200 },
    );
  });

  it('a JSON command from an older data directory fails corrupt with a message that says so', () => {
    const json = new TextEncoder().encode('{"id":"1-1","op":"put","key":{"$b":"YQ=="}}');
    expect(() => decodeCommand(json)).toThrow(/JSON command written by an older Conclave/);
    expectCorrupt(() => decodeCommand(json));
  });

  it('lease ids outside int64 and txns nested deeper than the bound are refused at encode time', () => {
    expect(() => encodeCommand({ id: 'x', op: 'revoke', lease: 2n ** 63n })).toThrow(RangeError);
    let t: Txn = { compare: [], success: [], failure: [] };
    for (let i = 0; i <= txnDepthMax + 1; i++)
      t = { compare: [], success: [{ type: 'txn', txn: t }], failure: [] };
    expect(() => encodeCommand({ id: 'x', op: 'txn', txn: t })).toThrow(RangeError);
  });
});
