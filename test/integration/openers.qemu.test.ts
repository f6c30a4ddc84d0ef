import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { readLoopMapping, type LoopMapping } from '../../src/infra/storage/loop-devices.js';
import { loopAttach, loopDetach } from '../../src/infra/storage/loop.native.js';
import { loopDeviceUser, processesHolding } from '../../src/infra/storage/openers.js';
import { qemuPid } from '../support/native.js';
import { canUseLoopLvm } from '../support/storage.js';
import { LIBVIRT_URI, TestVms, type TestVm } from '../support/vm.js';

/**
 * The case the opener check exists for: QEMU, in libvirt's own mount namespace with its
 * own copy of the device node, holding the loop device as a CD-ROM medium. Found by
 * device number, QEMU's pid file first.
 */
describe.skipIf(!canUseLoopLvm())('opener check against a real QEMU holding the loop device', () => {
  let vms: TestVms;
  let vm: TestVm;
  let h: LibvirtHypervisor;
  let device: string | undefined;
  let mapping: LoopMapping;

  beforeAll(async () => {
    vms = await TestVms.open();
    vm = await vms.create({ persistent: false });
    const iso = await vms.makeIso(await vms.scratchDir(), 'cdw-openers');
    device = await loopAttach(iso, 0, 0);
    mapping = (await readLoopMapping(device)) as LoopMapping;
    h = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
  });

  afterAll(async () => {
    await h?.close();
    await vms?.cleanup();
    // The VM is gone, so nobody holds it any more.
    if (device !== undefined) await loopDetach(device);
  });

  it('finds QEMU by pid while the medium is in the drive, nobody once ejected', async () => {
    if (device === undefined) throw new Error('no device');
    await h.updateDevice(vm.uuid, 'sdc', { type: 'block', path: device });
    const pid = await qemuPid(vm.name);
    expect(await processesHolding(mapping.devNo, { firstOnly: true })).toEqual([pid]);
    expect(await processesHolding(mapping.devNo)).toEqual([pid]);
    expect(await loopDeviceUser(mapping, () => Promise.resolve([]))).toBe(`open by pid ${pid}`);
    await h.updateDevice(vm.uuid, 'sdc', null);
    expect(await processesHolding(mapping.devNo)).toEqual([]);
    expect(await loopDeviceUser(mapping, () => Promise.resolve([]))).toBeNull();
  });
});
