import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { Reconciler } from '../../src/machines/reconciler.js';
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
    const r = await reconcilerFor(w).reconcileAll();
    expect(r.domains).toBe(3);
    expect(r.failed.map((f) => f.vmId)).toEqual([broken]);
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
});
