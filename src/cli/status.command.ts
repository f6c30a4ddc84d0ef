import type { Command } from 'commander';
import type { Config } from '../config.js';
import { toCdromError } from '../domain/errors.js';
import { isPdiv, type Media, type Pdiv } from '../domain/media.js';
import { OVIRT_VM_NS, type DriveSource, type StoragePort, type VolumeActivation } from '../domain/ports.js';
import { configOrExit } from './common.js';
import { openHostAdapters, type HostAdapters } from './recover.command.js';

/**
 * `cdrom-worker status`: every domain's CD-ROMs on this host — what the drive holds
 * (libvirt's source, named by the metadata's PDIV when it names it), the metadata's
 * pending `state` if any, and whether each volume the metadata names is active here.
 */

interface StatusOptions {
  vm?: string;
  json?: boolean;
  verbose?: boolean;
}

export interface VolumeStatus {
  readonly pdiv: Pdiv;
  /** the metadata entry's state, or `change:<state>` for vdsm's `<change>` form */
  readonly state: string | null;
  readonly activation: VolumeActivation | 'unknown';
  /** the activation mode that found it active (`dm` or `loop`); null when neither did */
  readonly activeVia: 'dm' | 'loop' | null;
  /** whether the drive's source is this volume */
  readonly inDrive: boolean;
}

export interface DriveStatus {
  readonly drive: string;
  readonly source: DriveSource | null;
  /** what the drive holds, in the command's media form (PDIV when the metadata names it) */
  readonly media: Media | null;
  /** the pending change's state(s), null when no flow is in progress */
  readonly state: string | null;
  readonly volumes: readonly VolumeStatus[];
}

export interface DomainStatus {
  readonly vmId: string;
  readonly name: string;
  readonly active: boolean;
  readonly drives: readonly DriveStatus[];
  readonly error: string | null;
}

export interface HostStatus {
  readonly hostId: string;
  /** the activation modes checked, configured one first (CDROM_LVM_ACTIVATION) */
  readonly modesChecked: readonly ('dm' | 'loop')[];
  readonly domains: readonly DomainStatus[];
}

/**
 * `other`: storage in the other activation mode. A volume activated in loop mode is not
 * active to device-mapper and the other way round, and `status` is typically run from a
 * shell that does not carry the worker's CDROM_LVM_ACTIVATION: it asks both, and says
 * which one found the volume.
 */
export async function collectStatus(config: Config, adapters: HostAdapters, onlyVm?: string, other?: StoragePort): Promise<HostStatus> {
  const [{ VmMetadata }, { currentMedia }, { sourceHolds }] = await Promise.all([
    import('../domain/metadata/ovirt-vm.metadata.js'),
    import('../machines/cdrom.activities.js'),
    import('../domain/recovery.js'),
  ]);
  const { hypervisor, storage } = adapters;
  const domains: DomainStatus[] = [];
  const all = (await hypervisor.listDomains())
    .filter((d) => onlyVm === undefined || d.vmId.toLowerCase() === onlyVm.toLowerCase())
    .sort((a, b) => a.name.localeCompare(b.name));
  for (const d of all) {
    try {
      const md = VmMetadata.parse(await hypervisor.getMetadata(d.vmId, OVIRT_VM_NS));
      const drives: DriveStatus[] = [];
      for (const drive of await hypervisor.listCdroms(d.vmId)) {
        const source = await hypervisor.readDrive(d.vmId, drive);
        const dm = md.drive(drive);
        const named: { pdiv: Pdiv; state: string | null }[] = [];
        for (const e of dm.entries) if (e.pdiv !== null) named.push({ pdiv: e.pdiv, state: e.state });
        if (dm.change?.pdiv) named.push({ pdiv: dm.change.pdiv, state: `change:${dm.change.state}` });
        const volumes: VolumeStatus[] = [];
        for (const n of named) {
          let activation: VolumeActivation | 'unknown' = await storage.volumeActivation(n.pdiv).catch(() => 'unknown' as const);
          let activeVia: VolumeStatus['activeVia'] = activation === 'active' ? config.lvmActivation : null;
          if (activation !== 'active' && other !== undefined) {
            const there = await other.volumeActivation(n.pdiv).catch(() => 'unknown' as const);
            if (there === 'active') {
              activation = 'active';
              activeVia = otherMode(config.lvmActivation);
            }
          }
          volumes.push({ pdiv: n.pdiv, state: n.state, activation, activeVia, inDrive: sourceHolds(source, n.pdiv) });
        }
        const states = [...dm.entries.map((e) => e.state), dm.change === null ? null : `change:${dm.change.state}`].filter((s) => s !== null);
        drives.push({ drive, source, media: currentMedia(source, dm), state: states.length === 0 ? null : states.join(','), volumes });
      }
      domains.push({ vmId: d.vmId, name: d.name, active: d.active, drives, error: null });
    } catch (err) {
      domains.push({ vmId: d.vmId, name: d.name, active: d.active, drives: [], error: toCdromError(err).message });
    }
  }
  return { hostId: config.hostId, modesChecked: other === undefined ? [config.lvmActivation] : [config.lvmActivation, otherMode(config.lvmActivation)], domains };
}

const otherMode = (m: 'dm' | 'loop'): 'dm' | 'loop' => (m === 'dm' ? 'loop' : 'dm');

function describe(m: Media | null): string {
  if (m === null) return 'empty';
  if (isPdiv(m)) return `pdiv ${m.poolID}/${m.domainID}/${m.imageID}/${m.volumeID}`;
  return `path ${m.path}`;
}

export function formatStatus(s: HostStatus): string[] {
  const lines: string[] = [`host ${s.hostId}: ${s.domains.length} domain(s); volume activation checked in ${s.modesChecked.join(' and ')} mode`];
  for (const d of s.domains) {
    lines.push(`${d.name} ${d.vmId} ${d.active ? 'running' : 'shut off'}`);
    if (d.error !== null) lines.push(`  error: ${d.error}`);
    if (d.error === null && d.drives.length === 0) lines.push('  no CD-ROM');
    for (const dr of d.drives) {
      lines.push(`  ${dr.drive}: ${describe(dr.media)}${dr.source !== null ? ` (${dr.source.type} ${dr.source.path})` : ''}${dr.state !== null ? `  state=${dr.state}` : ''}`);
      for (const v of dr.volumes) {
        const flags = [v.activeVia !== null ? `${v.activation} (${v.activeVia})` : v.activation, v.inDrive ? 'in drive' : 'not in drive', v.state !== null ? `state=${v.state}` : null].filter((x) => x !== null);
        lines.push(`    volume ${v.pdiv.domainID}/${v.pdiv.volumeID}: ${flags.join(', ')}`);
      }
    }
  }
  return lines;
}

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description("show every domain's CD-ROMs on this host: media, pending state, volume activation")
    .option('--vm <uuid>', 'only this domain')
    .option('--json', 'print the status as JSON')
    .option('--verbose', 'log at CDROM_LOG_LEVEL on stderr (default: warnings only)')
    .addHelpText(
      'after',
      [
        '',
        'For each CD-ROM: the media (the PDIV the metadata names for the source libvirt shows, else the bare',
        'path), the metadata `state` while a change is in progress, and for each volume the metadata names',
        'whether it is active on this host and whether it is the one in the drive. Read-only.',
        'Configuration: the CDROM_* variables of `run` (libvirt URI, storage root, LVM activation mode).',
      ].join('\n'),
    )
    .action(async (o: StatusOptions) => {
      const config = configOrExit();
      const adapters = await openHostAdapters(config, o.verbose === true);
      try {
        const { createStorage } = await import('../infra/storage/index.js');
        const other = createStorage({ storageRoot: config.storageRoot, activation: otherMode(config.lvmActivation), isoDirs: config.isoDirs, logger: adapters.logger });
        const status = await collectStatus(config, adapters, o.vm, other);
        if (o.json) console.log(JSON.stringify(status, null, 2));
        else for (const line of formatStatus(status)) console.log(line);
      } finally {
        await adapters.hypervisor.close();
      }
    });
}
