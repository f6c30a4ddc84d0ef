import type { Pdiv } from './media.js';
import type { CdState, CdromEntry, DriveMetadata } from './metadata/ovirt-vm.metadata.js';
import type { DriveSource } from './ports.js';

/**
 * The design page's "VM recovery flow" as a pure decision: from what the metadata says
 * was in progress, what libvirt shows in the drive *now*, and which volumes are active,
 * to the steps that finish or discard the recorded change. Recovery never changes what
 * the drive holds; it makes the metadata and the volume activation match it.
 */

export type RecoveryStep =
  | { readonly kind: 'teardown'; readonly pdiv: Pdiv }
  | { readonly kind: 'clear-state'; readonly state: CdState }
  | { readonly kind: 'remove-entry'; readonly state: CdState }
  | { readonly kind: 'commit-change' }
  | { readonly kind: 'discard-change' };

/** One name per row of the design page (and of vdsm's `<change>` form). */
export const RECOVERY_ROWS = {
  nothing: 'no change in progress',
  loadLoaded: 'insert: state=loading, volume prepared, CD is loaded',
  loadPrepared: "insert: state=loading, volume prepared, CD isn't loaded",
  loadTornDown: "insert: state=loading, volume torn down, CD isn't loaded",
  ejectLoaded: 'eject: state=ejecting, volume prepared, CD is loaded',
  ejectPrepared: 'eject: state=ejecting, volume prepared, CD not loaded',
  ejectTornDown: 'eject: state=ejecting, volume torn down, CD not loaded',
  changeLoadingTornDown: 'change: ejecting + loading, loading volume torn down',
  changeHoldsOld: 'change: ejecting + loading, loading volume prepared, CD-ROM still contains ejecting CD',
  changeHoldsNew: 'change: ejecting + loading, loading volume prepared, CD-ROM contains loading CD',
  changeHoldsNeither: 'change: ejecting + loading, CD-ROM holds neither CD',
  changeEjectingPrepared: 'change: ejecting + loaded entry, ejected volume prepared',
  changeEjectingTornDown: 'change: ejecting + loaded entry, ejected volume torn down',
  vdsmLoadDone: 'vdsm <change> loading, CD-ROM contains the new CD',
  vdsmLoadUndone: 'vdsm <change> loading, CD-ROM does not contain the new CD',
  vdsmEjectDone: 'vdsm <change> ejecting, CD-ROM is empty',
  vdsmEjectUndone: 'vdsm <change> ejecting, CD-ROM still holds the CD',
  unmatched: 'metadata matches no recovery row: left alone',
} as const;

export type RecoveryRow = (typeof RECOVERY_ROWS)[keyof typeof RECOVERY_ROWS];

export interface RecoveryDecision {
  readonly row: RecoveryRow;
  readonly steps: readonly RecoveryStep[];
}

export interface RecoveryInput {
  readonly metadata: DriveMetadata;
  /** the drive's source as libvirt reports it now */
  readonly source: DriveSource | null;
  /** whether a volume is active on this host now */
  readonly isActive: (pdiv: Pdiv) => boolean;
}

/** A source names a PDIV volume when its path ends in `<domainID>/images/<imageID>/<volumeID>`. */
export function sourceHolds(source: DriveSource | null, pdiv: Pdiv | null): boolean {
  if (source === null || pdiv === null) return false;
  const tail = `/${pdiv.domainID}/images/${pdiv.imageID}/${pdiv.volumeID}`.toLowerCase();
  return source.path.toLowerCase().endsWith(tail);
}

/** The PDIVs a recovery decision needs activation facts for. */
export function volumesToCheck(metadata: DriveMetadata): Pdiv[] {
  const out: Pdiv[] = [];
  for (const e of metadata.entries) if (e.pdiv !== null) out.push(e.pdiv);
  if (metadata.change?.pdiv) out.push(metadata.change.pdiv);
  return out;
}

export function decideRecovery(input: RecoveryInput): RecoveryDecision {
  const { metadata, source, isActive } = input;
  if (metadata.change !== null) return decideVdsmChange(input);

  const loading = metadata.entries.filter((e) => e.state === 'loading');
  const ejecting = metadata.entries.filter((e) => e.state === 'ejecting');
  const loaded = metadata.entries.filter((e) => e.state === null && e.pdiv !== null);
  if (loading.length === 0 && ejecting.length === 0) return { row: RECOVERY_ROWS.nothing, steps: [] };
  const pending = [...loading, ...ejecting];
  if (loading.length > 1 || ejecting.length > 1 || pending.some((e) => e.pdiv === null)) return unmatched();

  const held = (e: CdromEntry): boolean => sourceHolds(source, e.pdiv);
  const active = (e: CdromEntry): boolean => e.pdiv !== null && isActive(e.pdiv);
  const [load] = loading;
  const [eject] = ejecting;

  if (load !== undefined && eject === undefined) {
    if (loaded.length > 0) return unmatched();
    if (held(load)) return { row: RECOVERY_ROWS.loadLoaded, steps: [{ kind: 'clear-state', state: 'loading' }] };
    return active(load)
      ? { row: RECOVERY_ROWS.loadPrepared, steps: [teardown(load), { kind: 'remove-entry', state: 'loading' }] }
      : { row: RECOVERY_ROWS.loadTornDown, steps: [{ kind: 'remove-entry', state: 'loading' }] };
  }

  if (eject !== undefined && load === undefined) {
    if (loaded.length > 1) return unmatched();
    if (loaded.length === 1) {
      // The change flow after the new CD's state was removed: the new one is in the drive.
      if (held(eject) || !sourceHolds(source, loaded[0]?.pdiv ?? null)) return unmatched();
      return active(eject)
        ? { row: RECOVERY_ROWS.changeEjectingPrepared, steps: [teardown(eject), { kind: 'remove-entry', state: 'ejecting' }] }
        : { row: RECOVERY_ROWS.changeEjectingTornDown, steps: [{ kind: 'remove-entry', state: 'ejecting' }] };
    }
    if (held(eject)) return { row: RECOVERY_ROWS.ejectLoaded, steps: [{ kind: 'clear-state', state: 'ejecting' }] };
    // The drive is empty: the metadata must stop naming the ejected volume (CONTRACT 8).
    return active(eject)
      ? { row: RECOVERY_ROWS.ejectPrepared, steps: [teardown(eject), { kind: 'remove-entry', state: 'ejecting' }] }
      : { row: RECOVERY_ROWS.ejectTornDown, steps: [{ kind: 'remove-entry', state: 'ejecting' }] };
  }

  if (load === undefined || eject === undefined || loaded.length > 0) return unmatched();
  if (held(load)) {
    return {
      row: RECOVERY_ROWS.changeHoldsNew,
      steps: [...(active(eject) ? [teardown(eject)] : []), { kind: 'remove-entry', state: 'ejecting' }, { kind: 'clear-state', state: 'loading' }],
    };
  }
  if (held(eject)) {
    return active(load)
      ? {
          row: RECOVERY_ROWS.changeHoldsOld,
          steps: [teardown(load), { kind: 'remove-entry', state: 'loading' }, { kind: 'clear-state', state: 'ejecting' }],
        }
      : {
          row: RECOVERY_ROWS.changeLoadingTornDown,
          steps: [{ kind: 'remove-entry', state: 'loading' }, { kind: 'clear-state', state: 'ejecting' }],
        };
  }
  // Neither CD is in the drive (QEMU refused the new source and left the tray empty):
  // nothing the metadata names is in use by this drive any more.
  return {
    row: RECOVERY_ROWS.changeHoldsNeither,
    steps: [
      ...(active(load) ? [teardown(load)] : []),
      ...(active(eject) ? [teardown(eject)] : []),
      { kind: 'remove-entry', state: 'loading' },
      { kind: 'remove-entry', state: 'ejecting' },
    ],
  };
}

function decideVdsmChange({ metadata, source, isActive }: RecoveryInput): RecoveryDecision {
  const change = metadata.change;
  if (change === null) return unmatched();
  const current = metadata.entries.find((e) => e.state === null)?.pdiv ?? null;
  const teardownIfActive = (p: Pdiv | null): RecoveryStep[] => (p !== null && isActive(p) ? [{ kind: 'teardown', pdiv: p }] : []);
  if (change.state === 'loading') {
    if (change.pdiv === null) return unmatched();
    if (sourceHolds(source, change.pdiv)) {
      return { row: RECOVERY_ROWS.vdsmLoadDone, steps: [...teardownIfActive(current), { kind: 'commit-change' }] };
    }
    return { row: RECOVERY_ROWS.vdsmLoadUndone, steps: [...teardownIfActive(change.pdiv), { kind: 'discard-change' }] };
  }
  if (source === null) {
    return { row: RECOVERY_ROWS.vdsmEjectDone, steps: [...teardownIfActive(current), { kind: 'commit-change' }] };
  }
  return { row: RECOVERY_ROWS.vdsmEjectUndone, steps: [{ kind: 'discard-change' }] };
}

function teardown(e: CdromEntry): RecoveryStep {
  return { kind: 'teardown', pdiv: e.pdiv as Pdiv };
}

function unmatched(): RecoveryDecision {
  return { row: RECOVERY_ROWS.unmatched, steps: [] };
}
