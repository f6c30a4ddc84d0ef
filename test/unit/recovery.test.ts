import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Pdiv } from '../../src/domain/media.js';
import { VmMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type DriveSource } from '../../src/domain/ports.js';
import { RECOVERY_ROWS, decideRecovery } from '../../src/domain/recovery.js';
import { blockPath } from '../fakes/storage.fake.js';
import { ISO_A, ISO_B, makeWorld } from '../support/world.js';

/**
 * One test per row of the design page's "VM recovery flow" (and of vdsm's <change>
 * form): the metadata a crash left, what the drive holds now, which volumes are active
 * → the metadata and activation afterwards. The drive itself is never changed.
 */

const fixture = (name: string) => readFileSync(new URL(`../fixtures/metadata/${name}.xml`, import.meta.url), 'utf8').trim();
const src = (p: Pdiv): DriveSource => ({ type: 'block', path: blockPath(p) });

interface Row {
  row: string;
  metadata: string;
  holds: Pdiv | null;
  active: Pdiv[];
  after: { entries: { state: 'loading' | 'ejecting' | null; pdiv: Pdiv | null }[] };
  activeAfter: Pdiv[];
}

/** ISO_A is the design fixtures' old (or only) CD, ISO_B the one being loaded in a change. */
const changedLoadedB = VmMetadata.parse(fixture('loaded')).markEntry('sdc', ISO_A, 'ejecting').addEntry('sdc', ISO_B, 'loading').clearState('sdc', 'loading').toXml();

const ROWS: Row[] = [
  { row: RECOVERY_ROWS.loadLoaded, metadata: fixture('loading'), holds: ISO_A, active: [ISO_A], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
  { row: RECOVERY_ROWS.loadPrepared, metadata: fixture('loading'), holds: null, active: [ISO_A], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.loadTornDown, metadata: fixture('loading'), holds: null, active: [], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.ejectLoaded, metadata: fixture('ejecting'), holds: ISO_A, active: [ISO_A], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
  { row: RECOVERY_ROWS.ejectPrepared, metadata: fixture('ejecting'), holds: null, active: [ISO_A], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.ejectTornDown, metadata: fixture('ejecting'), holds: null, active: [], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.changeLoadingTornDown, metadata: fixture('changing'), holds: ISO_A, active: [ISO_A], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
  { row: RECOVERY_ROWS.changeHoldsOld, metadata: fixture('changing'), holds: ISO_A, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
  { row: RECOVERY_ROWS.changeHoldsNew, metadata: fixture('changing'), holds: ISO_B, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: ISO_B }] }, activeAfter: [ISO_B] },
  { row: RECOVERY_ROWS.changeHoldsNeither, metadata: fixture('changing'), holds: null, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.changeEjectingPrepared, metadata: changedLoadedB, holds: ISO_B, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: ISO_B }] }, activeAfter: [ISO_B] },
  { row: RECOVERY_ROWS.changeEjectingTornDown, metadata: changedLoadedB, holds: ISO_B, active: [ISO_B], after: { entries: [{ state: null, pdiv: ISO_B }] }, activeAfter: [ISO_B] },
  { row: RECOVERY_ROWS.vdsmLoadDone, metadata: fixture('vdsm-change-loading'), holds: ISO_B, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: ISO_B }] }, activeAfter: [ISO_B] },
  { row: RECOVERY_ROWS.vdsmLoadUndone, metadata: fixture('vdsm-change-loading'), holds: ISO_A, active: [ISO_A, ISO_B], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
  { row: RECOVERY_ROWS.vdsmEjectDone, metadata: fixture('vdsm-change-ejecting'), holds: null, active: [ISO_A], after: { entries: [{ state: null, pdiv: null }] }, activeAfter: [] },
  { row: RECOVERY_ROWS.vdsmEjectUndone, metadata: fixture('vdsm-change-ejecting'), holds: ISO_A, active: [ISO_A], after: { entries: [{ state: null, pdiv: ISO_A }] }, activeAfter: [ISO_A] },
];

describe('VM recovery flow', () => {
  it.each(ROWS)('$row', async (r) => {
    const w = makeWorld();
    w.hv.removeVm(w.vmId);
    w.hv.addVm(w.vmId, { drives: { sdc: r.holds === null ? null : src(r.holds) }, metadata: { [OVIRT_VM_NS.uri]: r.metadata } });
    for (const p of r.active) w.storage.activate(p);
    const before = w.source();

    const decision = decideRecovery({
      metadata: VmMetadata.parse(r.metadata).drive('sdc'),
      source: before,
      isActive: (p) => r.active.some((a) => a.volumeID === p.volumeID),
    });
    expect(decision.row).toBe(r.row);

    const settled = await w.registry.recover(w.vmId, 'sdc');
    expect(settled).toMatchObject({ kind: 'recovered', report: { row: r.row }, error: null });
    expect(w.source()).toEqual(before);
    expect(w.drive()).toEqual({ ...r.after, change: null });
    expect(w.active()).toEqual(r.activeAfter.map((p) => p.volumeID).sort());
    // everything else in the element survives
    if (r.metadata.includes('clusterVersion')) expect(w.metadataXml()).toContain('<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>');
  });

  it('no change in progress: nothing to do', () => {
    const d = decideRecovery({ metadata: VmMetadata.parse(fixture('loaded')).drive('sdc'), source: src(ISO_A), isActive: () => true });
    expect(d).toEqual({ row: RECOVERY_ROWS.nothing, steps: [] });
  });

  it('metadata that matches no row is logged and left alone', async () => {
    // a loading entry beside a loaded one, without the ejecting mark the change flow writes first
    const odd = VmMetadata.parse(fixture('loaded')).addEntry('sdc', ISO_B, 'loading').toXml();
    const w = makeWorld();
    w.hv.removeVm(w.vmId);
    w.hv.addVm(w.vmId, { drives: { sdc: src(ISO_A) }, metadata: { [OVIRT_VM_NS.uri]: odd } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    const settled = await w.registry.recover(w.vmId, 'sdc');
    expect(settled).toMatchObject({ kind: 'recovered', report: { row: RECOVERY_ROWS.unmatched, steps: 0 } });
    expect(w.metadataXml()).toBe(odd);
    expect(w.active()).toHaveLength(2);
  });

  it('a volume another VM holds stays active, and the metadata is still fixed', async () => {
    const w = makeWorld();
    w.hv.removeVm(w.vmId);
    w.hv.addVm(w.vmId, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: fixture('ejecting') } });
    w.storage.activate(ISO_A);
    w.storage.hold(ISO_A);
    const settled = await w.registry.recover(w.vmId, 'sdc');
    expect(settled).toMatchObject({ kind: 'recovered', report: { row: RECOVERY_ROWS.ejectPrepared, warnings: [{ code: 'VOLUME_IN_USE' }] } });
    expect(w.drive().entries).toEqual([{ state: null, pdiv: null }]);
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('a command on a drive with a half-done change recovers first, then runs', async () => {
    const w = makeWorld();
    w.hv.removeVm(w.vmId);
    w.hv.addVm(w.vmId, { drives: { sdc: src(ISO_A) }, metadata: { [OVIRT_VM_NS.uri]: fixture('changing') } });
    w.storage.activate(ISO_A);
    w.storage.activate(ISO_B);
    const e = await w.run(null);
    expect(e).toMatchObject({ kind: 'result', result: { outcome: 'completed', action: 'eject', previous: ISO_A, current: null } });
    expect(w.drive().entries).toEqual([{ state: null, pdiv: null }]);
    expect(w.active()).toEqual([]);
  });
});
