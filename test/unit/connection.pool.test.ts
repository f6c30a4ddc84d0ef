import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/infra/logging.js';
import { ConnectionPool, type Lease } from '../../src/infra/libvirt/connection.pool.js';
import type { NativeConnection } from '../../src/infra/libvirt/virt.native.js';

/**
 * The pool's bookkeeping over stand-in connections: libvirtd's per-client limit, a
 * deadline per call, hung connections retired (and closed once their calls returned),
 * a deadline on opening, and a failed connection dropped alone.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fakeConnections(opts: { openDelayMs?: number; failOpen?: boolean } = {}) {
  const opened: { id: number; closed: boolean }[] = [];
  const open = async (): Promise<NativeConnection> => {
    if (opts.openDelayMs !== undefined) await sleep(opts.openDelayMs);
    if (opts.failOpen === true) throw Object.assign(new Error('Failed to connect socket (fake)'), { libvirt: true, code: 38, domain: 7, level: 2 });
    const me = { id: opened.length + 1, closed: false };
    opened.push(me);
    return { close: () => ((me.closed = true), Promise.resolve()) } as unknown as NativeConnection;
  };
  return { opened, open };
}

function pool(conns: ReturnType<typeof fakeConnections>, o: { callTimeoutMs?: number; openTimeoutMs?: number; perConnection?: number } = {}) {
  return new ConnectionPool({
    open: conns.open,
    log: silentLogger(),
    callTimeoutMs: o.callTimeoutMs ?? 1_000,
    openTimeoutMs: o.openTimeoutMs ?? 1_000,
    maxCallsPerConnection: o.perConnection ?? 5,
  });
}

/** A call that waits until released. */
function gate() {
  let release!: () => void;
  const p = new Promise<string>((r) => (release = () => r('late')));
  return { p, release };
}

describe('libvirt connection pool', () => {
  it('keeps calls on one connection within libvirtd`s per-client limit, opening another past it', async () => {
    const conns = fakeConnections();
    const p = pool(conns, { perConnection: 3 }); // two places: one kept below the limit
    const gates = [gate(), gate(), gate()];
    const on: number[] = [];
    const calls = gates.map((g) => p.with('vm1', (lease) => ((on.push(lease.c.id), p.call(lease, 'x', 'read', () => g.p)))));
    await sleep(10);
    expect(on).toEqual([1, 1, 2]);
    for (const g of gates) g.release();
    await Promise.all(calls);
  });

  it('serves one VM per connection at a time: a call never waits behind another VM`s hung call', async () => {
    const conns = fakeConnections();
    const p = pool(conns);
    const g = gate();
    const on: Record<string, number> = {};
    const vm1 = p.with('vm1', (lease) => ((on['vm1'] = lease.c.id), p.call(lease, 'x', 'read', () => g.p)));
    await sleep(5);
    await p.with('vm2', (lease) => Promise.resolve((on['vm2'] = lease.c.id)));
    await p.with(null, (lease) => Promise.resolve((on['list'] = lease.c.id)));
    expect(on['vm1']).toBe(1);
    expect(on['vm2']).toBe(2);
    expect(on['list']).toBe(2); // idle again after vm2
    g.release();
    await vm1;
  });

  it('a hung read fails with TIMEOUT; its place stays taken until it returns; the connection is retired and closed after', async () => {
    const conns = fakeConnections();
    const p = pool(conns, { callTimeoutMs: 30 });
    const g = gate();
    let hungOn: Lease | null = null;
    const read = p.with('vm1', (lease) => ((hungOn = lease), p.call(lease, 'XMLDesc', 'read', () => g.p)));
    await expect(read).rejects.toMatchObject({ code: 'TIMEOUT', retryable: true });
    expect(p.hung).toBe(1);
    // new calls go to a new connection
    const next = await p.with('vm1', (lease) => Promise.resolve(lease.c.id));
    expect(next).toBe(2);
    expect(await p.with(null, (lease) => Promise.resolve(lease.c.id))).toBe(2);
    expect((hungOn as Lease | null)?.c.retiring).toBe(true);
    expect(conns.opened[0]?.closed).toBe(false); // closing it would not stop libvirtd's job
    g.release();
    await sleep(5);
    expect(p.hung).toBe(0);
    expect(conns.opened[0]?.closed).toBe(true);
    expect(p.size).toBe(1);
  });

  it('a hung write is not abandoned: it settles only when its call returns', async () => {
    const conns = fakeConnections();
    const p = pool(conns, { callTimeoutMs: 20 });
    const g = gate();
    let settled = false;
    const write = p.with('vm1', (lease) => p.call(lease, 'updateDeviceFlags', 'write', () => g.p)).then((v) => ((settled = true), v));
    await sleep(60);
    expect(settled).toBe(false);
    expect(p.hung).toBe(1);
    g.release();
    expect(await write).toBe('late');
    expect(p.hung).toBe(0);
  });

  it('opening has a deadline, and a late connection is closed when it lands', async () => {
    const conns = fakeConnections({ openDelayMs: 80 });
    const p = pool(conns, { openTimeoutMs: 20 });
    await expect(p.with(null, () => Promise.resolve(1))).rejects.toMatchObject({ code: 'TIMEOUT', retryable: true });
    await sleep(100);
    expect(conns.opened).toHaveLength(1);
    expect(conns.opened[0]?.closed).toBe(true);
  });

  it('a failed open is retryable infrastructure trouble', async () => {
    const p = pool(fakeConnections({ failOpen: true }));
    await expect(p.with(null, () => Promise.resolve(1))).rejects.toMatchObject({ code: 'INTERNAL', retryable: true });
  });

  it('dropping a failed connection leaves the others alone', async () => {
    const conns = fakeConnections();
    const p = pool(conns, { perConnection: 2 }); // one place per connection
    const g = gate();
    let first: Lease | null = null;
    const busy = p.with('vm1', (lease) => ((first = lease), p.call(lease, 'x', 'read', () => g.p)));
    const second = await p.with('vm2', (lease) => Promise.resolve(lease.c));
    expect(second.id).toBe(2);
    p.drop(second, 'connection error (test)');
    expect((first as Lease | null)?.c.dead).toBe(false);
    expect(conns.opened[1]?.closed).toBe(true);
    g.release();
    await busy;
    expect(await p.with('vm1', (lease) => Promise.resolve(lease.c.id))).toBe(1);
  });
});
