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

  it('decoded bytes are copies: they do not share memory with the log entry', () => {
    const data = encodeCommand({
      id: 'x',
      op: 'put',
      key: new Uint8Array([1]),
      value: new Uint8Array([2]),
      opts: {},
    });
    const c = decodeCommand(data) as Extract<Command, { op: 'put' }>;
    expect(c.value.buffer).not.toBe(data.buffer);
    data.fill(0);
    expect([...c.key, ...c.value]).toEqual([1, 2]);
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
