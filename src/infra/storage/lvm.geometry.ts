import type { Logger } from '../logging.js';
import { volumesOf, type LvmCli, type LvVolume } from './lvm.command.js';
import type { VgMetadataHead } from './lvm.mda.js';

export interface VgGeometryOptions {
  readonly lvm: LvmCli;
  /** The committed metadata head on a PV, read past the page cache (lvm.mda.ts). */
  readonly readHead: (pv: string) => Promise<VgMetadataHead>;
  readonly logger: Logger;
}

interface VgEntry {
  readonly vgId: string;
  /** The seqno of the metadata `volumes` was reported from. */
  readonly seqno: number;
  /** A PV of the VG whose metadata area LVM keeps current. */
  readonly mdaPv: string;
  readonly volumes: ReadonlyMap<string, LvVolume>;
}

/**
 * LV geometry and tags per VG, as current as LVM's own metadata. A `pvs` costs ~50 ms;
 * the VG's metadata seqno, read from a PV's metadata area, costs a few sector reads
 * (well under a millisecond) and changes with every change of the VG (lvremove,
 * lvrename, tags, lvextend, pvmove…), on this host or another one sharing the storage.
 * So every lookup reads the seqno and runs `pvs` only when it is not the one the cached
 * report was made at, or cannot be read. One `pvs` refreshes the whole VG.
 *
 * The seqno cached is the one `pvs` reported with the geometry (same metadata read), so
 * an entry can never pair geometry with a seqno it was not read at: racing refreshes
 * may leave an older report, whose seqno then differs from the disk and is refreshed on
 * the next lookup. A VG without a PV whose metadata area is in use (every PV
 * `--metadatacopies 0` or ignored) is not cached: LVM is asked every time.
 */
export class VgGeometry {
  private readonly entries = new Map<string, VgEntry>();

  constructor(private readonly options: VgGeometryOptions) {}

  /** The VG's LVs by name, or null when no VG has that name. Errors of `pvs` propagate. */
  async volumes(vg: string, signal: AbortSignal): Promise<ReadonlyMap<string, LvVolume> | null> {
    const entry = this.entries.get(vg);
    if (entry !== undefined && (await this.isCurrent(vg, entry))) return entry.volumes;
    return this.refresh(vg, signal);
  }

  /** The next lookup asks LVM (the caller found the geometry wrong). */
  forget(vg: string): void {
    this.entries.delete(vg);
  }

  private async isCurrent(vg: string, entry: VgEntry): Promise<boolean> {
    try {
      const head = await this.options.readHead(entry.mdaPv);
      if (head.vgName === vg && head.vgId === entry.vgId && head.seqno === entry.seqno) return true;
      this.options.logger.debug({ vg, pv: entry.mdaPv, cached: entry.seqno, now: head.seqno, nowVg: head.vgName }, 'VG metadata changed; asking LVM');
    } catch (err) {
      this.options.logger.debug({ vg, pv: entry.mdaPv, err }, 'VG metadata area unreadable; asking LVM');
    }
    return false;
  }

  private async refresh(vg: string, signal: AbortSignal): Promise<ReadonlyMap<string, LvVolume> | null> {
    this.entries.delete(vg);
    const segments = await this.options.lvm.segments(vg, signal);
    if (segments.length === 0) return null;
    const volumes = new Map(volumesOf(segments).map((v) => [v.lv, v] as const));
    const first = segments[0];
    const mdaPv = segments.find((s) => (s.pvMdaUsedCount ?? 0) > 0)?.pvName;
    // One report is one metadata read; differing rows would mean a report we misread.
    const oneRead = segments.every((s) => s.vgSeqno === first?.vgSeqno && s.vgUuid === first.vgUuid);
    if (first !== undefined && first.vgSeqno !== null && first.vgUuid !== '' && mdaPv !== undefined && oneRead) {
      this.entries.set(vg, { vgId: first.vgUuid, seqno: first.vgSeqno, mdaPv, volumes });
    } else {
      this.options.logger.debug({ vg }, 'VG has no metadata area to watch; its geometry is not cached');
    }
    return volumes;
  }
}
