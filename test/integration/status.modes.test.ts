import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { collectStatus, formatStatus } from '../../src/cli/status.command.js';
import { loadConfig } from '../../src/config.js';
import type { Pdiv } from '../../src/domain/media.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { type BlockTestDomain, canUseLoopLvm, useTestStorage } from '../support/storage.js';
import { loadedMd } from '../support/world.js';

/**
 * `cdrom-worker status` from a shell that does not carry the worker's
 * CDROM_LVM_ACTIVATION (the demo runs the worker in loop mode): it must still find a
 * loop-activated volume, and say which mode found it. Real LVM metadata on a loop
 * device; the domain's side is the fake hypervisor (status only reads it).
 */
describe.skipIf(!canUseLoopLvm())('status: volume activation whatever the mode', () => {
  const storage = useTestStorage();
  let block: BlockTestDomain;
  let root: string;

  beforeAll(async () => {
    block = await storage.blockDomain(1);
    root = storage.dir();
  });

  it('a volume the worker activated in loop mode reads "active (loop)" from a status run in the default dm mode', async () => {
    const v = block.volumes[0];
    if (v === undefined) throw new Error('no volume');
    const pdiv: Pdiv = { poolID: randomUUID(), domainID: block.vg, imageID: v.imageID, volumeID: v.volumeID };
    const make = (activation: 'dm' | 'loop') => createStorage({ storageRoot: root, activation, lvmFilter: block.lvmFilter, logger: silentLogger() });
    const worker = make('loop');
    const prepared = await worker.prepareVolume(pdiv);
    try {
      const hv = new FakeHypervisor();
      const vmId = randomUUID();
      hv.addVm(vmId, { name: 'status-vm', drives: { sdc: { type: 'block', path: prepared.path } }, metadata: { [OVIRT_VM_NS.uri]: loadedMd(pdiv) } });
      // the shell's configuration: no CDROM_LVM_ACTIVATION, so dm
      const config = loadConfig({ CDROM_HOST_ID: 'status-host', CDROM_STORAGE_ROOT: root });
      expect(config.lvmActivation).toBe('dm');
      const adapters = { hypervisor: Object.assign(hv, { close: () => Promise.resolve() }), storage: make('dm'), logger: silentLogger() };

      const dmOnly = await collectStatus(config, adapters);
      expect(dmOnly.domains[0]?.drives[0]?.volumes[0]).toMatchObject({ activation: 'inactive', activeVia: null, inDrive: true });
      expect(formatStatus(dmOnly)[0]).toMatch(/checked in dm mode$/);

      const both = await collectStatus(config, adapters, undefined, make('loop'));
      expect(both.modesChecked).toEqual(['dm', 'loop']);
      expect(both.domains[0]?.drives[0]?.volumes[0]).toMatchObject({ activation: 'active', activeVia: 'loop', inDrive: true });
      const lines = formatStatus(both);
      expect(lines[0]).toMatch(/checked in dm and loop mode$/);
      expect(lines.find((l) => l.trim().startsWith('volume ') && l.includes(v.volumeID))).toMatch(/active \(loop\), in drive/);
    } finally {
      await worker.teardownVolume(pdiv);
    }
  });
});
