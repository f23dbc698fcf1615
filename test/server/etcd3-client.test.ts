/**
 * The `etcd3` npm client (a third-party client with its own .proto files) against the client API
 * served over an embedded 3-member cluster, unchanged: put/get/delete, txn, leases with
 * keep-alive, watch, lock and election.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { waitFor } from '../harness/wait.js';
import { type ServedCluster, serveCluster } from './harness.js';

let cluster: EmbeddedCluster;
let served: ServedCluster;
let client: Etcd3;

describe('etcd3 npm client against the served client API', () => {
  beforeAll(async () => {
    cluster = await startCluster({ nodes: 3 });
    served = await serveCluster(cluster);
    client = new Etcd3({ hosts: served.endpoints });
  });
  afterAll(async () => {
    client?.close();
    await served?.close();
    await cluster?.close();
  });

  it('put, get, getAll, delete', async () => {
    await client.put('e3/a').value('1');
    await client.put('e3/b').value('2');
    expect(await client.get('e3/a').string()).toBe('1');
    expect(await client.getAll().prefix('e3/').strings()).toEqual({ 'e3/a': '1', 'e3/b': '2' });
    expect(await client.getAll().prefix('e3/').count()).toBe(2);
    const del = await client.delete().key('e3/a');
    expect(Number(del.deleted)).toBe(1);
    expect(await client.get('e3/a').string()).toBeNull();
  });

  it('txn: if/then/else', async () => {
    await client.put('e3/t').value('v1');
    const ok = await client.if('e3/t', 'Value', '==', 'v1').then(client.put('e3/t').value('v2')).commit();
    expect(ok.succeeded).toBe(true);
    const no = await client
      .if('e3/t', 'Value', '==', 'v1')
      .then(client.put('e3/t').value('v3'))
      .else(client.get('e3/t'))
      .commit();
    expect(no.succeeded).toBe(false);
    expect(no.responses[0]?.response_range?.kvs[0]?.value.toString()).toBe('v2');
  });

  it('lease: grant, attach, keepaliveOnce, revoke deletes the key', async () => {
    const lease = client.lease(30, { autoKeepAlive: false });
    const id = await lease.grant();
    expect(id).toMatch(/^\d+$/);
    await lease.put('e3/leased').value('x');
    const ka = await lease.keepaliveOnce();
    expect(Number(ka.TTL)).toBe(30);
    expect(await client.get('e3/leased').string()).toBe('x');
    await lease.revoke();
    expect(await client.get('e3/leased').string()).toBeNull();
  });

  it('watch: put and delete events, then cancel', async () => {
    const events: string[] = [];
    const w = await client.watch().key('e3/w').create();
    w.on('put', (kv) => events.push(`put ${kv.value.toString()}`));
    w.on('delete', () => events.push('delete'));
    await client.put('e3/w').value('a');
    await client.delete().key('e3/w');
    await waitFor(() => events.length >= 2, 10_000, 'watch events');
    expect(events).toEqual(['put a', 'delete']);
    await w.cancel();
  });

  it('lock (etcd3 locks are try-locks): a second caller is refused while it is held, then gets it', async () => {
    const l1 = client.lock('e3-lock');
    await l1.acquire();
    await expect(client.lock('e3-lock').acquire()).rejects.toThrow(/Failed to acquire a lock/);
    await l1.release();
    const l2 = client.lock('e3-lock');
    await l2.acquire();
    await l2.release();
  });

  it('election: campaign, leader, observe, resign hands over', async () => {
    const election = client.election('e3-elect');
    const c1 = election.campaign('c1');
    await new Promise<void>((resolve, reject) => {
      c1.on('elected', () => resolve());
      c1.on('error', reject);
    });
    expect(await election.leader()).toBe('c1');
    const observer = await election.observe();
    const seen: (string | undefined)[] = [];
    observer.on('change', (v) => seen.push(v));
    const c2 = client.election('e3-elect').campaign('c2');
    let c2Elected = false;
    c2.on('elected', () => {
      c2Elected = true;
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(c2Elected).toBe(false);
    await c1.resign();
    await waitFor(() => c2Elected, 10_000, 'the second candidate to be elected');
    await waitFor(() => seen.includes('c2'), 10_000, 'the observer to see c2');
    await c2.resign();
    await observer.cancel();
  });
});
