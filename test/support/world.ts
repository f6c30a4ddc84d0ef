import { randomUUID } from 'node:crypto';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import type { Media, Pdiv } from '../../src/domain/media.js';
import { VmMetadata, type DriveMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import type { Execution } from '../../src/domain/outcome.js';
import { OVIRT_VM_NS, type DriveSource } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import type { Failpoints } from '../../src/infra/failpoints.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { VolumeClaims } from '../../src/domain/volume-claims.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage, blockPath } from '../fakes/storage.fake.js';

/** The design page's ids: ISO A is its example volume, B another ISO on the same domain. */
export const POOL = '13345997-b94f-42dd-b8ef-a1392f65cebf';
export const DOMAIN = '88252cf6-381e-48f0-8795-a294a32c7149';
export const ISO_A: Pdiv = { poolID: POOL, domainID: DOMAIN, imageID: '89f05c7d-b961-4935-993f-514499024515', volumeID: '626a493f-5214-4337-b580-96a1ce702c2a' };
export const ISO_B: Pdiv = { poolID: POOL, domainID: DOMAIN, imageID: '3c2d5e4a-1b2c-4d5e-8f90-0a1b2c3d4e5f', volumeID: '7a8b9c0d-1e2f-4a5b-9c6d-7e8f9a0b1c2d' };
export const ISO_MISSING: Pdiv = { poolID: POOL, domainID: DOMAIN, imageID: '00000000-1b2c-4d5e-8f90-0a1b2c3d4e5f', volumeID: '00000000-1e2f-4a5b-9c6d-7e8f9a0b1c2d' };

export const EMPTY_MD = `<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>
<ovirt-vm:device devtype="disk" name="sdc"/>
</ovirt-vm:vm>`;

/** Metadata with `sdc` holding `pdiv`, written the way the design page shows it. */
export function loadedMd(p: Pdiv): string {
  return `<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>
<ovirt-vm:device devtype="disk" name="sdc">
<ovirt-vm:domainID>${p.domainID}</ovirt-vm:domainID>
<ovirt-vm:imageID>${p.imageID}</ovirt-vm:imageID>
<ovirt-vm:poolID>${p.poolID}</ovirt-vm:poolID>
<ovirt-vm:volumeID>${p.volumeID}</ovirt-vm:volumeID>
</ovirt-vm:device>
</ovirt-vm:vm>`;
}

export interface World {
  readonly hv: FakeHypervisor;
  readonly storage: FakeStorage;
  readonly registry: DriveRegistry;
  readonly vmId: string;
  run(media: Media | null, opts?: { commandId?: string; drive?: string; vmId?: string }): Promise<Execution>;
  command(media: Media | null, opts?: { commandId?: string; drive?: string; vmId?: string }): ChangeCdCommand;
  drive(): DriveMetadata;
  metadataXml(): string | null;
  source(): DriveSource | null;
  active(): string[];
}

/** A VM with CD-ROM `sdc`, holding `holding` (null: empty), over the fakes. */
export function makeWorld(opts: { holding?: Pdiv | null; failpoints?: Failpoints; stepTimeoutMs?: number; concurrency?: number; idleTtlMs?: number } = {}): World {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage(['/iso']);
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const vmId = randomUUID();
  const holding = opts.holding ?? null;
  hv.addVm(vmId, {
    drives: { sdc: holding === null ? null : { type: 'block', path: blockPath(holding) } },
    metadata: { [OVIRT_VM_NS.uri]: holding === null ? EMPTY_MD : loadedMd(holding) },
  });
  if (holding !== null) storage.activate(holding);
  const claims = new VolumeClaims();
  const activities = createActivities({ hypervisor: hv, storage, failpoints: opts.failpoints, claims });
  const registry = new DriveRegistry({ activities, claims, concurrency: opts.concurrency ?? 16, stepTimeoutMs: opts.stepTimeoutMs ?? 5_000, log: silentLogger(), idleTtlMs: opts.idleTtlMs ?? 0 });
  const command = (media: Media | null, o: { commandId?: string; drive?: string; vmId?: string } = {}): ChangeCdCommand => ({
    type: 'changeCD',
    version: 1,
    commandId: o.commandId ?? randomUUID(),
    vmId: o.vmId ?? vmId,
    drive: o.drive ?? 'sdc',
    media,
  });
  return {
    hv,
    storage,
    registry,
    vmId,
    command,
    run: (media, o) => registry.execute(command(media, o)),
    drive: () => VmMetadata.parse(hv.metadataOf(vmId, OVIRT_VM_NS.uri)).drive('sdc'),
    metadataXml: () => hv.metadataOf(vmId, OVIRT_VM_NS.uri),
    source: () => hv.sourceOf(vmId, 'sdc'),
    active: () => storage.activeVolumeIds(),
  };
}

/** The settled result of an execution, failing the test if it asked for a retry. */
export function resultOf(e: Execution) {
  if (e.kind !== 'result') throw new Error(`expected a result, got retry: ${e.error.code} ${e.error.message}`);
  return e.result;
}
