import { CdromError } from '../../domain/errors.js';
import type { CommandRunner, CommandResult } from './command.runner.js';

/** One PV segment as `pvs --segments` reports it; free space has an empty `lvName`. */
export interface PvSegment {
  readonly pvName: string;
  readonly peStart: number;
  readonly segStart: number;
  readonly segSize: number;
  readonly extentSize: number;
  readonly vgName: string;
  readonly lvName: string;
  readonly lvTags: readonly string[];
  readonly lvAttr: string;
  /** The VG metadata's sequence number this report was read at (null: not reported). */
  readonly vgSeqno: number | null;
  readonly vgUuid: string;
  /** Metadata areas on this PV that LVM keeps current (null: not reported). */
  readonly pvMdaUsedCount: number | null;
}

/** A logical volume where it lies on its PV, in bytes: what loop activation maps. */
export interface LvVolume {
  readonly vg: string;
  readonly lv: string;
  readonly tags: readonly string[];
  readonly attr: string;
  readonly pv: string;
  readonly offset: number;
  readonly size: number;
  /** False when the LV is not one contiguous range of one PV (loop cannot map it). */
  readonly contiguous: boolean;
}

export interface LvmCliOptions {
  readonly runner: CommandRunner;
  /** `devices { filter }` entries such as `a|^/dev/sdb$|`, `r|.*|`; none: LVM's own config. */
  readonly filter?: readonly string[];
  /** Loop mode: LVM must not try to talk to a device-mapper this kernel lacks. */
  readonly disableActivation: boolean;
  readonly commandTimeoutMs: number;
}

/** Filter entries go into a quoted LVM config string, so quotes and newlines are refused. */
const FILTER_ENTRY_RE = /^[ar]([|/#@!%^]).+\1$/;

export function validateLvmFilter(filter: readonly string[]): void {
  for (const entry of filter) {
    if (!FILTER_ENTRY_RE.test(entry) || /["\n\\]/.test(entry)) {
      throw new CdromError('INTERNAL', `invalid LVM filter entry ${JSON.stringify(entry)}`);
    }
  }
}

/** `retry_deactivation = 0`: an open LV is refused at once instead of after ~5 s of retries. */
export function lvmConfig(filter: readonly string[] | undefined, disableActivation: boolean): string {
  const parts: string[] = [];
  if (filter !== undefined && filter.length > 0) {
    parts.push(`devices { filter = [ ${filter.map((f) => `"${f}"`).join(', ')} ] }`);
  }
  parts.push('activation { retry_deactivation = 0 }');
  if (disableActivation) parts.push('global { activation = 0 }');
  return parts.join(' ');
}

export const LVM_ENV: Readonly<Record<string, string>> = { LVM_SUPPRESS_FD_WARNINGS: '1' };

// vg_seqno comes from the same metadata read as the geometry: a cache keyed on it can
// never label geometry with a seqno it was not read at.
const SEGMENT_FIELDS = 'pv_name,pe_start,pvseg_start,pvseg_size,vg_extent_size,vg_name,lv_name,lv_tags,lv_attr,vg_seqno,vg_uuid,pv_mda_used_count';

function bytes(value: unknown, field: string): number {
  const n = typeof value === 'string' ? Number(value.replace(/B$/, '')) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw new CdromError('INTERNAL', `unexpected LVM ${field} ${JSON.stringify(value)}`);
  return n;
}

function countOrNull(value: unknown): number | null {
  const n = typeof value === 'string' && value !== '' ? Number(value) : NaN;
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/** Parses `pvs --segments --reportformat json --units b` output. */
export function parsePvSegments(stdout: string): PvSegment[] {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch (err) {
    throw new CdromError('INTERNAL', 'LVM printed a report that is not JSON', { cause: err });
  }
  const report = (doc as { report?: Array<{ pvseg?: unknown[] }> }).report;
  const rows = Array.isArray(report) ? report.flatMap((r) => (Array.isArray(r.pvseg) ? r.pvseg : [])) : [];
  return rows.map((raw) => {
    const row = raw as Record<string, unknown>;
    return {
      pvName: text(row.pv_name),
      peStart: bytes(row.pe_start, 'pe_start'),
      segStart: bytes(row.pvseg_start, 'pvseg_start'),
      segSize: bytes(row.pvseg_size, 'pvseg_size'),
      extentSize: bytes(row.vg_extent_size, 'vg_extent_size'),
      vgName: text(row.vg_name),
      lvName: text(row.lv_name),
      lvTags: text(row.lv_tags).split(',').filter(Boolean),
      lvAttr: text(row.lv_attr),
      vgSeqno: countOrNull(row.vg_seqno),
      vgUuid: text(row.vg_uuid),
      pvMdaUsedCount: countOrNull(row.pv_mda_used_count),
    };
  });
}

/** Groups segments per LV; adjacent segments on one PV merge into one range. */
export function volumesOf(segments: readonly PvSegment[]): LvVolume[] {
  const byLv = new Map<string, PvSegment[]>();
  for (const seg of segments) {
    if (seg.lvName === '') continue;
    const key = `${seg.vgName}/${seg.lvName}`;
    byLv.set(key, [...(byLv.get(key) ?? []), seg]);
  }
  const out: LvVolume[] = [];
  for (const segs of byLv.values()) {
    const sorted = [...segs].sort((a, b) => a.segStart - b.segStart);
    const first = sorted[0];
    if (first === undefined) continue;
    let contiguous = true;
    let extents = 0;
    for (const seg of sorted) {
      if (seg.pvName !== first.pvName || seg.segStart !== first.segStart + extents) contiguous = false;
      extents += seg.segSize;
    }
    out.push({
      vg: first.vgName,
      lv: first.lvName,
      tags: first.lvTags,
      attr: first.lvAttr,
      pv: first.pvName,
      offset: first.peStart + first.segStart * first.extentSize,
      size: extents * first.extentSize,
      contiguous,
    });
  }
  return out;
}

/** The LVM command line, spelled once: config, environment, timeout, error wording. */
export class LvmCli {
  readonly config: string;

  constructor(private readonly options: LvmCliOptions) {
    if (options.filter !== undefined) validateLvmFilter(options.filter);
    this.config = lvmConfig(options.filter, options.disableActivation);
  }

  run(command: 'pvs' | 'lvs' | 'lvchange', args: readonly string[], signal?: AbortSignal): Promise<CommandResult> {
    return this.options.runner(command, ['--config', this.config, ...args], {
      env: LVM_ENV,
      signal,
      timeoutMs: this.options.commandTimeoutMs,
    });
  }

  /** Segments of one VG (empty when no such VG), or of every VG the filter lets LVM see. */
  async segments(vg: string | null, signal?: AbortSignal): Promise<PvSegment[]> {
    const args = ['--segments', '--units', 'b', '--nosuffix', '--reportformat', 'json', '-o', SEGMENT_FIELDS];
    // Selecting (rather than naming the VG) makes a missing VG an empty report, not an
    // error whose wording we would have to parse.
    args.push('-S', vg === null ? 'vg_name!=""' : `vg_name=${vg}`);
    const { stdout } = await this.run('pvs', args, signal);
    return parsePvSegments(stdout);
  }
}

