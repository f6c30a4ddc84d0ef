import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OVIRT_VM_NS, type DriveSource } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import type { Settlement } from '../../src/machines/cdrom.machine.js';
import { Reconciler, type DrivesReader } from '../../src/machines/reconciler.js';
import type { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { blockPath } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B, loadedMd, makeWorld } from '../support/world.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/metadata/${name}.xml`, import.meta.url), 'utf8').trim();

function reconcilerFor(w: ReturnType<typeof makeWorld>) {
  return new Reconciler({ hypervisor: w.hv, storage: w.storage, drives: w.registry, log: silentLogger() });
}

describe('reconciler', () => {
  it('recovers every CD-ROM of every running domain, and a broken domain does not block the others', async () => {
    const w = makeWorld();
    const broken = randomUUID();
    const halfLoaded = randomUUID();
    w.hv.addVm(halfLoaded, { drives: { sdc: { type: 'block', path: blockPath(ISO_B) } }, metadata: { [OVIRT_VM_NS.uri]: fixture('changing') } });
    w.hv.addVm(broken, { metadata: { [OVIRT_VM_NS.uri]: '<not-xml' } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    // what cdrom_recovery_failures_total counts
    const failures: { vmId: string; drive: string | null }[] = [];
    const r = await new Reconciler({ hypervisor: w.hv, storage: w.storage, drives: w.registry, log: silentLogger(), observeFailure: (f) => failures.push(f) }).reconcileAll();
    expect(r.domains).toBe(3);
    expect(r.failed.map((f) => f.vmId)).toEqual([broken]);
    expect(failures).toEqual([{ vmId: broken, drive: null }]);
    const md = (await w.hv.getMetadata(halfLoaded, OVIRT_VM_NS)) ?? '';
    expect(md).not.toContain('state=');
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });

  it('tears down orphan volumes no drive holds and no metadata names, and keeps the rest', async () => {
    const w = makeWorld();
    const holder = randomUUID();
    w.hv.addVm(holder, { drives: { sdc: { type: 'block', path: blockPath(ISO_A) } }, metadata: { [OVIRT_VM_NS.uri]: loadedMd(ISO_A) } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B); // left behind by a failed eject
    const r = await reconcilerFor(w).reconcileAll();
    expect(r.orphansTornDown.map((p) => p.volumeID)).toEqual([ISO_B.volumeID]);
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('never reaps a volume a flow in progress has prepared', async () => {
    const w = makeWorld();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const update = w.hv.updateDevice.bind(w.hv);
    w.hv.updateDevice = async (...args) => {
      await gate;
      return update(...args);
    };
    const command = w.run(ISO_B);
    await new Promise((r) => setTimeout(r, 20));
    expect(w.active()).toEqual([ISO_B.volumeID]);
    const pass = reconcilerFor(w).reconcileAll();
    await new Promise((r) => setTimeout(r, 20));
    release();
    const [e, r] = await Promise.all([command, pass]);
    expect(e).toMatchObject({ kind: 'result', result: { outcome: 'completed' } });
    expect(r.orphansTornDown).toEqual([]);
    expect(w.active()).toEqual([ISO_B.volumeID]);
    expect(w.source()?.path).toBe(blockPath(ISO_B));
  });

  it('does not count a volume this pass has recovered away as an orphan', async () => {
    // The list of active volumes is taken when the pass starts; the recovery of the
    // half-done change tears A down before the orphan check runs.
    const w = makeWorld();
    const changed = randomUUID();
    w.hv.addVm(changed, { drives: { sdc: { type: 'block', path: blockPath(ISO_B) } }, metadata: { [OVIRT_VM_NS.uri]: fixture('changing') } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    const r = await reconcilerFor(w).reconcileAll();
    expect(r.failed).toEqual([]);
    expect(r.actions).toBeGreaterThan(0);
    expect(r.orphansTornDown).toEqual([]);
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });

  it.each([false, true])('does not reap a volume a drive holds although no metadata names it (one read per domain: %s)', async (oneRead) => {
    const w = makeWorld();
    const holder = randomUUID();
    w.hv.addVm(holder, { drives: { sdc: { type: 'block', path: blockPath(ISO_A) } }, metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    const reads = w.hv.calls.readDrive;
    const hypervisor = oneRead ? withReadDrives(w.hv) : w.hv;
    const r = await new Reconciler({ hypervisor, storage: w.storage, drives: w.registry, log: silentLogger() }).reconcileAll();
    expect(r.orphansTornDown.map((p) => p.volumeID)).toEqual([ISO_B.volumeID]);
    expect(w.active()).toEqual([ISO_A.volumeID]);
    // the reaper reads what both domains' drives hold: one readDrive each, or none
    expect(w.hv.calls.readDrive - reads).toBe(oneRead ? 0 : 2);
  });

  it('keeps reading domains while a drive recovery is waiting', async () => {
    const w = makeWorld();
    const stuck = randomUUID();
    w.hv.addVm(stuck, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: fixture('ejecting') } });
    for (let i = 0; i < 5; i++) w.hv.addVm(randomUUID(), { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let started = 0;
    const drives = {
      recover: async (vmId: string, drive: string): Promise<Settlement> => {
        started += 1;
        await gate;
        return w.registry.recover(vmId, drive);
      },
    };
    const reads = w.hv.calls.getMetadata;
    const pass = new Reconciler({ hypervisor: w.hv, storage: w.storage, drives, log: silentLogger(), parallel: 1 }).reconcileAll();
    await new Promise((r) => setTimeout(r, 20));
    // one domain at a time, and yet all 7 were read while the recovery waits
    expect(started).toBe(1);
    expect(w.hv.calls.getMetadata - reads).toBe(7);
    release();
    const r = await pass;
    expect(r).toMatchObject({ domains: 7, drives: 7, failed: [] });
    expect(await w.hv.getMetadata(stuck, OVIRT_VM_NS)).not.toContain('state=');
  });

  it('with a domain filter, recovers only the domains whose name matches', async () => {
    const w = makeWorld();
    const mine = randomUUID();
    const theirs = randomUUID();
    w.hv.addVm(mine, { name: 'cdw-e2e-1', drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: fixture('ejecting') } });
    w.hv.addVm(theirs, { name: 'other-vm', drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: fixture('ejecting') } });
    const rec = new Reconciler({ hypervisor: w.hv, storage: w.storage, drives: w.registry, log: silentLogger(), domainFilter: /^cdw-e2e-/ });
    const r = await rec.reconcileAll();
    expect(r.domains).toBe(1);
    expect(await w.hv.getMetadata(mine, OVIRT_VM_NS)).not.toContain('state=');
    expect(await w.hv.getMetadata(theirs, OVIRT_VM_NS)).toContain('state="ejecting"');
  });

  it('reconciles 1,000 domains', async () => {
    const w = makeWorld();
    for (let i = 0; i < 1000; i++) w.hv.addVm(randomUUID(), { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    const r = await reconcilerFor(w).reconcileAll();
    expect(r.domains).toBe(1001);
    expect(r.failed).toEqual([]);
  });

  it('a domain that starts is reconciled', async () => {
    const w = makeWorld();
    const vm = randomUUID();
    w.hv.addVm(vm, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: fixture('ejecting') } });
    const rec = reconcilerFor(w);
    rec.start();
    w.hv.emit({ kind: 'lifecycle', vmId: vm, event: 'started' });
    await new Promise((r) => setTimeout(r, 50));
    rec.stop();
    const md = (await w.hv.getMetadata(vm, OVIRT_VM_NS)) ?? '';
    expect(md).toContain('<ovirt-vm:device devtype="disk" name="sdc"/>');
    expect(md).toContain('<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>');
  });

  it('reconciles every domain after the hypervisor connection came back (events were missed)', async () => {
    const w = makeWorld();
    const r = reconcilerFor(w);
    r.start();
    try {
      const halfLoaded = randomUUID();
      w.hv.addVm(halfLoaded, { drives: { sdc: { type: 'block', path: blockPath(ISO_B) } }, metadata: { [OVIRT_VM_NS.uri]: fixture('changing') } });
      w.storage.activate(ISO_A);
      w.storage.activate(ISO_B);
      w.hv.emit({ kind: 'reconnected' });
      for (let i = 0; i < 100 && ((await w.hv.getMetadata(halfLoaded, OVIRT_VM_NS)) ?? '').includes('state='); i++) await new Promise((res) => setTimeout(res, 10));
      expect((await w.hv.getMetadata(halfLoaded, OVIRT_VM_NS)) ?? '').not.toContain('state=');
      expect(w.active()).toEqual([ISO_B.volumeID]);
    } finally {
      r.stop();
    }
  });

  it('a pass requested while one runs is followed by a pass that reads after the request', async () => {
    const w = makeWorld();
    const r = reconcilerFor(w);
    const first = r.reconcileAll();
    const vm = randomUUID();
    w.hv.addVm(vm, { drives: { sdc: { type: 'block', path: blockPath(ISO_B) } }, metadata: { [OVIRT_VM_NS.uri]: fixture('changing') } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    const after = r.reconcileAfter();
    expect(after).not.toBe(first);
    await first;
    const report = await after;
    expect(report.domains).toBe(2);
    expect((await w.hv.getMetadata(vm, OVIRT_VM_NS)) ?? '').not.toContain('state=');
  });
});

/** The fake with the optional one-read DrivesReader the libvirt adapter has. */
function withReadDrives(hv: FakeHypervisor): FakeHypervisor & DrivesReader {
  return Object.assign(Object.create(hv) as FakeHypervisor, {
    async readDrives(vmId: string): Promise<ReadonlyMap<string, DriveSource | null>> {
      const drives = await hv.listCdroms(vmId);
      return new Map(drives.map((d) => [d, hv.sourceOf(vmId, d)]));
    },
  });
}
