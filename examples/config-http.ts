/**
 * Config hot reload in an HTTP service: `npx tsx examples/config-http.ts` (add `--serve` to keep
 * the server running; `CONCLAVE_ENDPOINTS=host:port` to use a real etcd).
 *
 * The service reads its settings from one prefix with `watchConfig` (a zod schema gives the typed
 * `current`), answers every request from `watcher.current`, and never restarts: an operator's
 * multi-key update is applied atomically between two requests, and an invalid update is rejected
 * (the service keeps serving the last valid config and reports why). Without `--serve`, a short
 * scripted operator session runs against the live server and the program exits 0.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { type ConfigChange, type ConfigWatcher, type KV, setConfig, watchConfig } from '../index.js';
import { openTarget } from './target.js';

export const ServiceConfig = z.object({
  greeting: z.string().min(1),
  maxItems: z.number().int().min(1).max(100),
  maintenance: z.boolean().default(false),
});
export type ServiceConfig = z.infer<typeof ServiceConfig>;

const catalog = ['anchor', 'beacon', 'compass', 'drift', 'ember', 'fathom', 'gale', 'harbor'];

/** The HTTP service: every response is computed from the watcher's current, validated config. */
export function startService(watcher: ConfigWatcher<ServiceConfig>): Promise<Server> {
  const server = createServer((req, res) => {
    const cfg = watcher.current; // one consistent snapshot for the whole request
    res.setHeader('x-config-revision', String(watcher.currentRevision));
    if (cfg.maintenance) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('down for maintenance\n');
      return;
    }
    if (req.url === '/items') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify({ greeting: cfg.greeting, items: catalog.slice(0, cfg.maxItems) })}\n`);
      return;
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function get(url: string): Promise<string> {
  const r = await fetch(url);
  return `${r.status} rev ${r.headers.get('x-config-revision')} ${(await r.text()).trim()}`;
}

/** The next change of the given type, skipping others (bounded wait). */
async function next<T>(
  it: AsyncIterator<ConfigChange<T>>,
  type: ConfigChange<T>['type'],
): Promise<ConfigChange<T>> {
  const deadline = AbortSignal.timeout(10_000);
  while (!deadline.aborted) {
    const r = await it.next();
    if (r.done) throw new Error('the config watcher closed');
    if (r.value.type === type) return r.value;
  }
  throw new Error(`no ${type} change within 10 s`);
}

/** The scripted operator session; returns the lines it printed (the test reads them too). */
export async function runScenario(kv: KV, prefix: string, log: (line: string) => void): Promise<void> {
  (await setConfig(kv, prefix, { greeting: 'hello', maxItems: 3 })).unwrap();
  await using watcher = await watchConfig(kv, prefix, { schema: ServiceConfig });
  const changes = watcher.changes();
  const server = await startService(watcher);
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/items`;
  try {
    log(`service up at ${url}, config revision ${watcher.currentRevision}`);
    log(`GET /items → ${await get(url)}`);

    // An operator changes two keys in one txn, guarded by the revision they read.
    const seen = watcher.revision;
    const w = await setConfig(
      kv,
      prefix,
      { greeting: 'ahoy', maxItems: 5 },
      { ifRevision: seen, ifKeys: watcher.keys },
    );
    const update = await next(changes, 'update');
    log(
      `update at revision ${update.revision} (txn ${w.unwrap().revision}): ${[...update.changedKeys].sort().join(' and ')} changed together`,
    );
    log(`GET /items → ${await get(url)}`);

    // A second operator still holding the old revision is refused instead of overwriting.
    const stale = await setConfig(kv, prefix, { greeting: 'hi', maxItems: 2 }, { ifRevision: seen });
    log(
      `stale write guarded by revision ${seen}: ${stale.isErr() ? `refused (${stale.error.reason})` : 'applied!'}`,
    );

    // An invalid value: the service keeps the last valid config and says why.
    await kv.put(`${prefix}maxItems`, '-5');
    const rejected = await next(changes, 'rejected');
    const issues = rejected.result.isErr() ? rejected.result.error.issues : [];
    log(
      `rejected revision ${rejected.revision}: ${issues.map((i) => `${i.path?.map(String).join('.')}: ${i.message}`).join('; ')}`,
    );
    log(`GET /items → ${await get(url)}`);

    // Fixing it, and switching on maintenance mode, take effect at once.
    await kv.put(`${prefix}maxItems`, '4');
    await next(changes, 'update');
    log(`GET /items → ${await get(url)}`);
    await kv.put(`${prefix}maintenance`, 'true');
    await next(changes, 'update');
    log(`GET /items → ${await get(url)}`);
  } finally {
    await changes.return(undefined);
    await new Promise((r) => server.close(r));
  }
}

async function main(): Promise<void> {
  const target = await openTarget();
  const prefix = `examples/config-http/${Date.now().toString(36)}/`;
  console.log(`Config hot reload on ${target.label}`);
  try {
    if (process.argv.includes('--serve')) {
      (await setConfig(target.kv, prefix, { greeting: 'hello', maxItems: 3 })).unwrap();
      const watcher = await watchConfig(target.kv, prefix, { schema: ServiceConfig });
      const server = await startService(watcher);
      const { port } = server.address() as AddressInfo;
      console.log(`serving http://127.0.0.1:${port}/items; config keys under ${prefix} (Ctrl-C to stop)`);
      for await (const c of watcher) console.log(`${c.type} at revision ${c.revision}`);
      return;
    }
    await runScenario(target.kv, prefix, (line) => console.log(`  ${line}`));
    console.log('Done.');
  } finally {
    await target.kv.delete(prefix, { prefix: true }).catch(() => undefined);
    await target.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(`config-http failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      process.exit(1);
    },
  );
}
