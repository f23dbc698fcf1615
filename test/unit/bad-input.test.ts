/**
 * Bad input to public functions: each is refused with a ConclaveError carrying the documented
 * code (never a TypeError), the process is unharmed, and nothing is written. Oversized writes are
 * pinned on every backend by the conformance suite (test/conformance/limits.ts).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster } from '../../backends/raft/embedded.js';
import {
  Barrier,
  ConclaveError,
  Counter,
  connect,
  DoubleBarrier,
  Election,
  type KV,
  MultiLock,
  Mutex,
  PriorityQueue,
  Queue,
  RWMutex,
  resolveService,
  Semaphore,
  ServiceRegistry,
  Session,
  setConfig,
  stm,
  Topic,
  WorkQueue,
  watchConfig,
} from '../../index.js';

let kv: KV;
let session: Session;

beforeAll(async () => {
  kv = await connect('embedded:');
  session = await Session.create(kv, { ttlSeconds: 5 });
});
afterAll(async () => {
  await session.close();
  await kv.close();
});

/** The call fails (synchronously or not) with a ConclaveError of `code` whose message matches. */
async function refused(call: () => unknown, code: string, message: RegExp): Promise<void> {
  let err: unknown;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected the call to fail').toBeInstanceOf(ConclaveError);
  expect((err as ConclaveError).code).toBe(code);
  expect((err as Error).message).toMatch(message);
  // No message ends in an empty fragment ("…: " or "note: ").
  expect((err as Error).message).not.toMatch(/:\s*$/);
}

describe('bad input', () => {
  it('an empty recipe name is invalid-argument for every recipe, and nothing is written', async () => {
    const before = (await kv.status()).revision;
    const schema = {
      '~standard': { version: 1 as const, vendor: 't', validate: (v: unknown) => ({ value: v }) },
    };
    const cases: Array<[string, () => unknown]> = [
      ['Mutex', () => new Mutex(session, '')],
      ['RWMutex', () => new RWMutex(session, '')],
      ['Semaphore', () => new Semaphore(session, '', 2)],
      ['Election', () => new Election(session, '')],
      ['Barrier', () => new Barrier(kv, '')],
      ['DoubleBarrier', () => new DoubleBarrier(session, '', 2)],
      ['Queue', () => new Queue(kv, '')],
      ['PriorityQueue', () => new PriorityQueue(kv, '')],
      ['WorkQueue', () => new WorkQueue(session, '')],
      ['Topic', () => new Topic(kv, '')],
      ['Counter', () => new Counter(kv, '')],
      ['MultiLock', () => new MultiLock(session, ['a', ''])],
      ['watchConfig', () => watchConfig(kv, '', { schema })],
      ['setConfig', () => setConfig(kv, '', {})],
      [
        'ServiceRegistry.register',
        () => new ServiceRegistry().register(session, '', { id: 'i1', addr: 'h:1' }),
      ],
      ['resolveService', () => resolveService(kv, '')],
      ['stm', () => stm(kv, undefined as unknown as () => Promise<void>)],
    ];
    for (const [what, call] of cases) {
      await refused(call, 'invalid-argument', /must|name|prefix|fn/).catch((err: unknown) => {
        throw new Error(`${what}: ${String(err)}`);
      });
    }
    expect((await kv.status()).revision).toBe(before);
  });

  it('arguments of the wrong type are invalid-argument, not TypeError', async () => {
    await refused(() => kv.put(42 as unknown as string, 'v'), 'invalid-argument', /key/);
    await refused(() => kv.get('k', 'x' as never), 'invalid-argument', /options/);
    await refused(
      () => kv.range('a', { prefix: true, fromKey: true }),
      'invalid-argument',
      /prefix|fromKey|end/,
    );
    await refused(() => new Semaphore(session, 'sem', 0), 'invalid-argument', /permits/);
    expect(await kv.get('k')).toBeUndefined();
  });

  describe('a data directory held by another process', () => {
    let dir = '';
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'conclave-locked-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('is refused with locked, naming the process; its files are left alone', async () => {
      // The lock of a live process that is not this one: our parent's pid.
      const member = join(dir, 'member-1');
      await startCluster({ dataDir: dir }).then((c) => c.close());
      await writeFile(join(member, 'LOCK'), `${process.ppid}\n`);
      await refused(() => startCluster({ dataDir: dir }), 'locked', new RegExp(`process ${process.ppid}`));
      await refused(
        () => connect({ backend: 'embedded', dataDir: dir }),
        'locked',
        /in use by process .*one directory holds one member/,
      );
      expect(await readFile(join(member, 'LOCK'), 'utf8')).toBe(`${process.ppid}\n`);
      const e = await startCluster({ dataDir: dir }).catch((err: ConclaveError) => err);
      expect((e as ConclaveError).retryable).toBe(false);
    });

    it('is refused with locked when another member of this process holds it', async () => {
      const other = await mkdtemp(join(tmpdir(), 'conclave-locked-'));
      const c = await startCluster({ dataDir: other });
      try {
        await refused(() => startCluster({ dataDir: other }), 'locked', /another member of this process/);
        // The first owner is unharmed.
        await c.kv.put('still', 'here');
        expect((await c.kv.get('still'))?.value).toBeDefined();
      } finally {
        await c.close();
        await rm(other, { recursive: true, force: true });
      }
    });
  });
});
