import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadVirt, type NativeConnection } from '../../src/infra/libvirt/virt.native.js';
import { LibvirtProxy, qemuPid, waitUntil } from '../support/native.js';
import { LIBVIRT_URI, TestVms, type TestVm } from '../support/vm.js';

/**
 * libvirt calls run on the addon's own threads, never on the libuv pool: calls hung on a
 * VM whose QEMU is stopped (SIGSTOP) hold threads of the addon's executor while fs (libuv
 * pool) and calls on another VM go on as before; once QEMU runs again they settle and the
 * idle threads retire. Measured here before the executor (AsyncWorker, UV_THREADPOOL_SIZE
 * 4): with 6 such calls hung, `fs.promises.readFile` did not complete until SIGCONT.
 */

const virt = loadVirt();
const k = virt.constants;
const SELF = fileURLToPath(import.meta.url);

function cdromXml(iso: string | null): string {
  const source = iso === null ? '' : `<source file='${iso}'/>`;
  return `<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>${source}<target dev='sdc' bus='sata'/><readonly/></disk>`;
}

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await p;
  return { value, ms: Math.round(performance.now() - t0) };
}

describe('native addon: the executor', () => {
  let vms: TestVms;
  let hungVm: TestVm;
  let otherVm: TestVm;
  let iso: string;

  beforeAll(async () => {
    vms = await TestVms.open();
    hungVm = await vms.create({ persistent: false });
    otherVm = await vms.create({ persistent: false });
    iso = await vms.makeIso(await vms.scratchDir(), 'cdw-exec');
  });
  afterAll(async () => {
    await vms?.cleanup();
  });

  it('validates its settings and reports them', () => {
    const saved = virt.configureExecutor();
    try {
      expect(saved).toEqual({ maxThreads: expect.any(Number) as unknown, idleTimeoutMs: expect.any(Number) as unknown });
      expect(() => virt.configureExecutor({ maxThreads: 0 })).toThrow(RangeError);
      expect(() => virt.configureExecutor({ maxThreads: 1.5 })).toThrow(RangeError);
      expect(() => virt.configureExecutor({ idleTimeoutMs: -1 })).toThrow(RangeError);
      expect(virt.configureExecutor({ maxThreads: 7 })).toEqual({ maxThreads: 7, idleTimeoutMs: saved.idleTimeoutMs });
      const stats = virt.executorStats();
      expect(Object.keys(stats).sort()).toEqual(['busy', 'idle', 'queued', 'threads']);
      expect(stats.threads).toBe(stats.busy + stats.idle);
    } finally {
      virt.configureExecutor(saved);
    }
  });

  it('past the cap, calls wait and run in arrival order', async () => {
    const saved = virt.configureExecutor();
    const conn = await virt.open('test:///default', () => undefined, 0, 0);
    try {
      virt.configureExecutor({ maxThreads: 1 });
      await waitUntil(() => virt.executorStats().threads <= 1, 2_000, 'threads above the cap to retire');
      const order: number[] = [];
      let peakThreads = 0;
      const calls = Array.from({ length: 20 }, (_, i) =>
        conn.listAllDomains().then(() => {
          order.push(i);
          peakThreads = Math.max(peakThreads, virt.executorStats().threads);
        }),
      );
      await Promise.all(calls);
      expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i));
      expect(peakThreads).toBe(1);
      // Raising the cap with nothing queued starts no thread.
      virt.configureExecutor({ maxThreads: saved.maxThreads });
      expect(virt.executorStats().threads).toBe(1);
    } finally {
      virt.configureExecutor(saved);
      await conn.close();
    }
  });

  it('reports the control state of a domain', async () => {
    expect(await hungVm.domain.getControlInfo()).toEqual({ state: k.VIR_DOMAIN_CONTROL_OK, details: 0, stateTime: 0 });
  });

  it('keeps fs and other VMs going while calls on a stopped QEMU hang, on threads of its own', async () => {
    const uvThreads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const hungCount = uvThreads + 2;
    const saved = virt.configureExecutor();
    virt.configureExecutor({ idleTimeoutMs: 300 });
    // libvirtd serves at most 5 calls at once per client: the hung calls get connections of
    // their own (3 each), the other VM another one, getControlInfo goes through vms.conn.
    const conns: NativeConnection[] = [];
    for (let i = 0; i < Math.ceil(hungCount / 3) + 1; i++) conns.push(await virt.open(LIBVIRT_URI, () => undefined, 0, 0));
    const other = conns.pop() as NativeConnection;
    const hungDoms = await Promise.all(conns.map((c) => c.lookupByUUIDString(hungVm.uuid)));
    const otherDom = await other.lookupByUUIDString(otherVm.uuid);
    const pid = await qemuPid(hungVm.name);
    const hung: Promise<unknown>[] = [];
    let stopped = false;
    try {
      process.kill(pid, 'SIGSTOP');
      stopped = true;
      hung.push(hungDoms[0]!.updateDeviceFlags(cdromXml(iso), k.VIR_DOMAIN_AFFECT_LIVE));
      // The change is in QEMU's monitor, waiting for an answer that does not come.
      await waitUntil(async () => (await hungVm.domain.getControlInfo()).state === k.VIR_DOMAIN_CONTROL_OCCUPIED, 5_000, 'the monitor to be occupied');
      for (let i = 1; i < hungCount; i++) hung.push(hungDoms[Math.floor(i / 3)]!.getBlockInfo('sdc'));
      let settledEarly = 0;
      for (const p of hung) p.then(() => (settledEarly += 1), () => (settledEarly += 1));
      await waitUntil(() => virt.executorStats().busy >= hungCount, 5_000, `${hungCount} busy threads`);

      // The libuv pool is free: a burst of fs calls completes at once.
      const fsBurst = await timed(Promise.all(Array.from({ length: 2 * uvThreads }, () => readFile(SELF))));
      expect(fsBurst.ms).toBeLessThan(1_000);
      // Another VM over another connection: changed and ejected as if nothing happened.
      const otherChange = await timed(
        (async () => {
          await otherDom.updateDeviceFlags(cdromXml(iso), k.VIR_DOMAIN_AFFECT_LIVE);
          await otherDom.updateDeviceFlags(cdromXml(null), k.VIR_DOMAIN_AFFECT_LIVE);
        })(),
      );
      expect(otherChange.ms).toBeLessThan(2_000);
      const during = virt.executorStats();
      expect(during.busy).toBeGreaterThanOrEqual(hungCount);
      const control = await hungVm.domain.getControlInfo();
      expect(control.state).toBe(k.VIR_DOMAIN_CONTROL_OCCUPIED);
      expect(control.stateTime).toBeGreaterThan(0);

      // At the cap, calls wait (FIFO) for a thread instead of starting one.
      // (The cap is the hung calls: `during` may count a thread still finishing a call.)
      virt.configureExecutor({ maxThreads: hungCount });
      await waitUntil(() => virt.executorStats().threads === hungCount, 2_000, 'threads above the cap to retire');
      let queuedDone = false;
      const queued = otherDom.xmlDesc(0).then((xml) => ((queuedDone = true), xml));
      expect(virt.executorStats().queued).toBe(1);
      await new Promise((r) => setTimeout(r, 100));
      expect(queuedDone).toBe(false);
      virt.configureExecutor({ maxThreads: saved.maxThreads });
      // One queued call, one new thread (not one per free slot up to the new cap).
      expect(virt.executorStats().threads).toBe(hungCount + 1);
      expect(await queued).toContain(otherVm.uuid);
      expect(settledEarly).toBe(0);

      const t0 = performance.now();
      process.kill(pid, 'SIGCONT');
      stopped = false;
      const results = await Promise.allSettled(hung);
      const settleMs = Math.round(performance.now() - t0);
      expect(results.map((r) => r.status)).toEqual(hung.map(() => 'fulfilled'));
      expect(settleMs).toBeLessThan(5_000);
      // Every thread came free, and idle ones retire.
      await waitUntil(() => virt.executorStats().threads === 0, 5_000, 'idle threads to retire');
      expect((await hungVm.domain.getControlInfo()).state).toBe(k.VIR_DOMAIN_CONTROL_OK);
      process.stdout.write(
        `native.executor: ${hungCount} hung calls; fs burst ${fsBurst.ms} ms; other VM change+eject ${otherChange.ms} ms; ` +
          `stats during ${JSON.stringify(during)}; settled ${settleMs} ms after SIGCONT\n`,
      );
    } finally {
      if (stopped) process.kill(pid, 'SIGCONT');
      await Promise.allSettled(hung);
      await Promise.allSettled([...conns, other].map((c) => c.close()));
      virt.configureExecutor(saved);
    }
  });

  it('leaves threads blocked on a libvirtd that stopped answering behind, and serves other connections', async () => {
    const proxy = await LibvirtProxy.start();
    const saved = virt.configureExecutor();
    virt.configureExecutor({ idleTimeoutMs: 300 });
    const calls: Promise<unknown>[] = [];
    let conn: NativeConnection | undefined;
    try {
      conn = await virt.open(proxy.uri, () => undefined, 0, 0); // no keepalive: it waits for good
      proxy.stop();
      const n = 10; // twice libvirtd's max_client_requests: all still wait on our side
      for (let i = 0; i < n; i++) calls.push(conn.listAllDomains());
      await waitUntil(() => virt.executorStats().busy >= n, 5_000, `${n} busy threads`);
      const fsBurst = await timed(Promise.all(Array.from({ length: 8 }, () => readFile(SELF))));
      expect(fsBurst.ms).toBeLessThan(1_000);
      const elsewhere = await timed(otherVm.domain.xmlDesc(0)); // over vms.conn, straight to libvirtd
      expect(elsewhere.value).toContain(otherVm.uuid);
      expect(elsewhere.ms).toBeLessThan(2_000);
      proxy.cont();
      expect((await Promise.allSettled(calls)).map((r) => r.status)).toEqual(calls.map(() => 'fulfilled'));
      await waitUntil(() => virt.executorStats().threads === 0, 5_000, 'idle threads to retire');
    } finally {
      proxy.cont();
      await Promise.allSettled(calls);
      await conn?.close();
      await proxy.close();
      virt.configureExecutor(saved);
    }
  });
});
