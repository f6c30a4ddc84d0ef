import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadVirt, type NativeEvent } from '../../src/infra/libvirt/virt.native.js';
import { countsBackTo, runNode, waitUntil } from '../support/native.js';
import { LIBVIRT_URI, TestVms, type TestVm } from '../support/vm.js';

/**
 * The addon's native objects live exactly as long as they must: contexts, thread-safe
 * functions and connections are released on every path (failed open, close racing event
 * registration, a partial registration, a worker_thread's env torn down), and errors
 * report the call that failed. `test:///default` (libvirt's in-process test driver) is
 * used where libvirtd adds nothing; `debugCounts()` counts live native objects.
 */

const virt = loadVirt();
const k = virt.constants;
const TEST_URI = 'test:///default';
const NS = 'http://ovirt.org/cdrom-worker/test/native';

describe('native addon: lifetimes and error reports', () => {
  let vms: TestVms;
  let vm: TestVm;

  beforeAll(async () => {
    vms = await TestVms.open();
    vm = await vms.create({ persistent: false });
  });
  afterAll(async () => {
    await vms?.cleanup();
  });

  it('releases the context and thread-safe function of every failed open (1,000 of them)', async () => {
    const start = virt.debugCounts();
    const bogus = 'qemu+unix:///system?socket=/nonexistent/cdw-test-native.sock';
    for (let batch = 0; batch < 20; batch++) {
      const opens = Array.from({ length: 50 }, () => virt.open(bogus, () => undefined, 0, 0));
      const results = await Promise.allSettled(opens);
      expect(results.every((r) => r.status === 'rejected')).toBe(true);
    }
    await countsBackTo(start);
  });

  it('never leaves an event registration behind when close() races registerDomainEvents', async () => {
    const start = virt.debugCounts();
    const outcomes = { registered: 0, refused: 0 };
    const race = async (uri: string): Promise<void> => {
      const conn = await virt.open(uri, () => undefined, 0, 0);
      const register = conn.registerDomainEvents();
      const close = conn.close();
      const [r] = await Promise.allSettled([register, close]);
      if (r.status === 'fulfilled') outcomes.registered += 1;
      else {
        expect(r.reason).toMatchObject({ code: k.VIR_ERR_INVALID_CONN, message: 'connection is closed' });
        outcomes.refused += 1;
      }
      await close;
    };
    for (let i = 0; i < 300; i++) await race(TEST_URI);
    for (let i = 0; i < 100; i++) await race(LIBVIRT_URI);
    // Registered-then-closed and refused-after-close both happen; neither may leak.
    expect(outcomes.registered + outcomes.refused).toBe(400);
    await countsBackTo(start);
  });

  it('undoes a partial event registration and rejects it, so a retry registers everything', async () => {
    const start = virt.debugCounts();
    const events: NativeEvent[] = [];
    const conn = await virt.open(TEST_URI, (e) => events.push(e), 0, 0);
    try {
      virt.debugFailpoint('registerDomainEvents', 2); // lifecycle and tray-change made, device-removed refused
      await expect(conn.registerDomainEvents()).rejects.toMatchObject({ code: k.VIR_ERR_INVALID_ARG, libvirt: true });
      // The retry must register all four, metadata-change included (it used to see the
      // partial set and return at once).
      await conn.registerDomainEvents();
      const dom = await conn.lookupByName('test');
      await dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, '<partial/>', 'cdwn', NS, 0);
      await waitUntil(() => events.some((e) => e.kind === 'metadata-change' && e.nsUri === NS), 2_000, 'the metadata-change event');
      await dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, null, null, NS, 0);
    } finally {
      virt.debugFailpoint('registerDomainEvents', -1);
      await conn.close();
    }
    await countsBackTo(start);
  });

  it("reports isActive's own error from listAllDomains, not a blank internal error", async () => {
    const conn = await virt.open(TEST_URI, () => undefined, 0, 0);
    try {
      virt.debugFailpoint('listAllDomains.isActive', 1); // isActive fails, isPersistent would succeed
      await expect(conn.listAllDomains()).rejects.toMatchObject({
        code: k.VIR_ERR_INVALID_DOMAIN,
        message: expect.stringContaining('virDomainIsActive') as unknown,
      });
      expect((await conn.listAllDomains()).map((d) => d.name)).toContain('test');
    } finally {
      virt.debugFailpoint('listAllDomains.isActive', 0);
      await conn.close();
    }
  });

  it('survives worker_threads that use the addon and exit, with calls and registrations still live', async () => {
    // In a child process: a crash there fails this test instead of killing vitest.
    const script = `
      const { Worker } = require('node:worker_threads');
      const virt = require(ADDON);
      const workerSrc = \`
        const { workerData } = require('node:worker_threads');
        const virt = require(workerData.addon);
        (async () => {
          const conn = await virt.open(workerData.uri, () => {}, 0, 0);
          await conn.registerDomainEvents();
          conn.listAllDomains().catch(() => {});       // still in flight when the env goes
          conn.lookupByName(workerData.vm).catch(() => {});
          if (workerData.exit) process.exit(0);         // else: ends when its calls settle
        })();
      \`;
      (async () => {
        const start = virt.debugCounts();
        const uris = ['test:///default', ${JSON.stringify(LIBVIRT_URI)}];
        for (let i = 0; i < 16; i++) {
          await new Promise((resolve, reject) => {
            const w = new Worker(workerSrc, { eval: true, workerData: { addon: ADDON, uri: uris[i % 2], vm: process.env.VM, exit: i % 4 < 2 } });
            w.on('error', reject);
            w.on('exit', resolve);
          });
        }
        // Events now, on both drivers: they must not reach the dead envs' listeners.
        const conns = await Promise.all(uris.map((u) => virt.open(u, () => {}, 0, 0)));
        const doms = await Promise.all([conns[0].lookupByName('test'), conns[1].lookupByName(process.env.VM)]);
        for (let i = 0; i < 5; i++) {
          for (const d of doms) await d.setMetadata(virt.constants.VIR_DOMAIN_METADATA_ELEMENT, '<w n="' + i + '"/>', 'cdwn', ${JSON.stringify(NS)}, 0);
        }
        for (const d of doms) await d.setMetadata(virt.constants.VIR_DOMAIN_METADATA_ELEMENT, null, null, ${JSON.stringify(NS)}, 0);
        await Promise.all(conns.map((c) => c.close()));
        const deadline = Date.now() + 5000;
        const back = () => { const n = virt.debugCounts(); return n.contexts === start.contexts && n.calls === start.calls && n.tsfns === start.tsfns; };
        while (!back() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        console.log(JSON.stringify({ start, end: virt.debugCounts() }));
      })().catch((e) => { console.error(e); process.exit(3); });
    `;
    const run = await runNode(script, { env: { VM: vm.name }, timeoutMs: 60_000 });
    expect(run.stderr).toBe('');
    expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
    const { start, end } = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as {
      start: ReturnType<typeof virt.debugCounts>;
      end: ReturnType<typeof virt.debugCounts>;
    };
    // The workers' connections were closed for them (their finalizers hand the close to
    // the executor), their calls dropped and their thread-safe functions finalized.
    expect({ contexts: end.contexts, calls: end.calls, tsfns: end.tsfns }).toEqual({ contexts: start.contexts, calls: start.calls, tsfns: start.tsfns });
  });

  it('closes a connection dropped without close() from its finalizer, on the executor', async () => {
    const run = await runNode(
      `
      const virt = require(ADDON);
      (async () => {
        const start = virt.debugCounts();
        const openAndDrop = async () => {
          const conn = await virt.open(process.env.URI, () => {}, 0, 0);
          await conn.registerDomainEvents();   // a live registration holds the connection open
        };
        for (let i = 0; i < 20; i++) await openAndDrop();
        await new Promise((r) => setTimeout(r, 20));
        for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
        const deadline = Date.now() + 5000;
        const back = () => { const n = virt.debugCounts(); return n.connections === start.connections && n.contexts === start.contexts; };
        while (!back() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        process.stdout.write(JSON.stringify({ start, end: virt.debugCounts() }) + '\\n');
      })().catch((e) => { console.error(e); process.exit(3); });
    `,
      { nodeArgs: ['--expose-gc'], env: { URI: LIBVIRT_URI } },
    );
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const { start, end } = JSON.parse(run.stdout.trim()) as { start: Record<string, number>; end: Record<string, number> };
    // Collected, and closed for real: the contexts go only once libvirt dropped every
    // registration, which the close does.
    expect({ connections: end.connections, contexts: end.contexts }).toEqual({ connections: start.connections, contexts: start.contexts });
  });

  it('keeps the process alive while a call is pending, and not for an idle connection', async () => {
    const run = await runNode(`
      const virt = require(ADDON);
      const t0 = Date.now();
      virt.open(${JSON.stringify(TEST_URI)}, () => {}, 0, 0).then((conn) => {
        globalThis.conn = conn;   // open, registered, never closed: must not hold the process
        return conn.registerDomainEvents();
      }).then(() => process.stdout.write('settled\\n'));
      process.on('exit', () => process.stdout.write('exit ' + (Date.now() - t0) + '\\n'));
    `);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^settled\nexit \d+\n$/);
  });
});
