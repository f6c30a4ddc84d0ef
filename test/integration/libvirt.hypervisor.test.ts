import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OVIRT_VM_NS, JOURNAL_NS } from '../../src/domain/ports.js';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { loadVirt } from '../../src/infra/libvirt/virt.native.js';
import { hypervisorContract } from '../contract/hypervisor.contract.js';
import { LIBVIRT_URI, TestVms, type TestVm } from '../support/vm.js';

/** libvirtd + QEMU on this host: the contract, then what only the real thing has. */

hypervisorContract('LibvirtHypervisor on QEMU', async () => {
  const vms = await TestVms.open();
  try {
    const vm = await vms.create({ persistent: true });
    const dir = await vms.scratchDir();
    const fileA = await vms.makeIso(dir, 'cdw-a');
    const fileB = await vms.makeIso(dir, 'cdw-b');
    const loop = await vms.attachLoop(await vms.makeIso(dir, 'cdw-blk'));
    const rejected = join(dir, 'not-a-medium');
    await mkdir(rejected, { mode: 0o755 });
    const hypervisor = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
    return {
      hypervisor,
      vmId: vm.uuid,
      fileA: { type: 'file', path: fileA },
      fileB: { type: 'file', path: fileB },
      block: { type: 'block', path: loop },
      missing: { type: 'file', path: join(dir, 'missing.iso') },
      rejected: { type: 'file', path: rejected },
      unknownVmId: randomUUID(),
      teardown: async () => {
        await hypervisor.close();
        await vms.cleanup();
      },
    };
  } catch (err) {
    await vms.cleanup();
    throw err;
  }
});

describe('LibvirtHypervisor specifics', () => {
  let vms: TestVms;
  let transient: TestVm;
  let h: LibvirtHypervisor;
  let iso: string;

  beforeAll(async () => {
    vms = await TestVms.open();
    transient = await vms.create({ persistent: false });
    iso = await vms.makeIso(await vms.scratchDir(), 'cdw-t');
    h = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
  });
  afterAll(async () => {
    await h?.close();
    await vms?.cleanup();
  });

  it('writes metadata into the domain XML under the namespace prefix', async () => {
    const xml = '<cdrom:journal xmlns:cdrom="http://ovirt.org/cdrom-worker/1.0"><cdrom:drive name="sdc"/></cdrom:journal>';
    await h.setMetadata(transient.uuid, JOURNAL_NS, xml);
    const domainXml = await transient.domain.xmlDesc(0);
    expect(domainXml).toContain('<cdrom:journal xmlns:cdrom="http://ovirt.org/cdrom-worker/1.0">');
    expect(domainXml).toContain('<cdrom:drive name="sdc"/>');
    expect(await h.getMetadata(transient.uuid, OVIRT_VM_NS)).toContain('<ovirt-vm:device devtype="disk" name="sdc"');
  });

  it('changes media of a transient domain (live only)', async () => {
    await h.updateDevice(transient.uuid, 'sdc', { type: 'file', path: iso });
    expect(await h.readDrive(transient.uuid, 'sdc')).toEqual({ type: 'file', path: iso });
    await h.updateDevice(transient.uuid, 'sdc', null);
    expect(await h.readDrive(transient.uuid, 'sdc')).toBeNull();
  });

  it('reads every CD-ROM of a domain at once the way readDrive reads one', async () => {
    await h.updateDevice(transient.uuid, 'sdc', { type: 'file', path: iso });
    expect(await h.readDrives(transient.uuid)).toEqual(new Map([['sdc', { type: 'file', path: iso }]]));
    await h.updateDevice(transient.uuid, 'sdc', null);
    expect(await h.readDrives(transient.uuid)).toEqual(new Map([['sdc', null]]));
    expect(await h.readDrive(transient.uuid, 'sdc')).toBeNull();
  });

  it('leaves libvirt and QEMU agreeing after QEMU refused a medium', async () => {
    const dir = await vms.scratchDir();
    const bad = join(dir, 'dir-medium');
    await mkdir(bad, { mode: 0o755 });
    await h.updateDevice(transient.uuid, 'sdc', { type: 'file', path: iso });
    await expect(h.updateDevice(transient.uuid, 'sdc', { type: 'file', path: bad })).rejects.toMatchObject({
      code: 'CHANGE_FAILED',
      message: expect.stringMatching(/QEMU had dropped the old medium; restored, the drive holds file /) as unknown,
    });
    const live = await transient.domain.xmlDesc(0);
    expect(live).not.toContain("tray='open'");
    // QEMU's block layer has the medium again (capacity comes from QEMU, not the XML).
    expect((await transient.domain.getBlockInfo('sdc')).capacity).toBeGreaterThan(0);
  });

  it('reconnects after its connection is closed under it', async () => {
    const before = await h.listDomains();
    // Simulate libvirtd dropping us: close every connection the adapter holds.
    const internal = h as unknown as { pool: { conns: { id: number; conn: { close(): Promise<void> } }[] } };
    const old = [...internal.pool.conns];
    expect(old.length).toBeGreaterThan(0);
    for (const c of old) await c.conn.close();
    const err = await h.listDomains().catch((e: unknown) => e);
    expect(err).toMatchObject({ retryable: true });
    const after = await h.listDomains();
    // the failed connection alone was dropped; the call after it runs on a new one
    expect(internal.pool.conns.map((c) => c.id)).not.toContain(old[0]?.id);
    expect(after.map((d) => d.vmId)).toContain(transient.uuid);
    expect(before.map((d) => d.vmId)).toContain(transient.uuid);
    expect(await h.readDrive(transient.uuid, 'sdc')).toEqual({ type: 'file', path: iso });
  });

  it('exposes libvirt error numbers on the binding', async () => {
    const conn = await loadVirt().open(LIBVIRT_URI, () => undefined, 0, 0);
    try {
      await expect(conn.lookupByUUIDString(randomUUID())).rejects.toMatchObject({ code: loadVirt().constants.VIR_ERR_NO_DOMAIN, libvirt: true });
    } finally {
      await conn.close();
    }
  });
});
