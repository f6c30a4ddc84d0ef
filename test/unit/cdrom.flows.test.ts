import { describe, expect, it } from 'vitest';
import { CdromError } from '../../src/domain/errors.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { blockPath } from '../fakes/storage.fake.js';
import { ISO_A, ISO_B, ISO_MISSING, makeWorld, resultOf } from '../support/world.js';

/**
 * One test per step outcome and per "if failed" branch of the design page's three flows.
 * Each asserts the end state: what the drive holds (the fake's XML view), the drive's
 * metadata entries, the active volumes, and the result.
 */

const MD = OVIRT_VM_NS.uri;
const entry = (p: typeof ISO_A, state: 'loading' | 'ejecting' | null = null) => ({ state, pdiv: p });
const EMPTY_ENTRY = { state: null, pdiv: null };

describe('VM with empty tray, insert CD', () => {
  it('loads the CD: state=loading written, volume prepared, CD loaded, state removed', async () => {
    const w = makeWorld();
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', previous: null, current: ISO_A, warnings: [], error: null });
    expect(w.source()).toEqual({ type: 'block', path: blockPath(ISO_A) });
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
    expect(w.metadataXml()).toContain('<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>');
  });

  it('add drive spec with state="loading" fails: nothing changes, the flow fails', async () => {
    const w = makeWorld();
    w.hv.failNext('setMetadata', { ns: MD });
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'failed', action: 'load', previous: null, current: null, error: { code: 'INTERNAL' } });
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([]);
  });

  it('prepare fails: remove drive spec, fail the flow with the original error', async () => {
    const w = makeWorld();
    w.storage.failNext('prepare');
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'failed', action: 'load', current: null, error: { code: 'PREPARE_FAILED', retryable: false } });
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([]);
  });

  it('prepare fails and removing the drive spec fails too: the error is logged, the original error fails the flow', async () => {
    const w = makeWorld();
    w.storage.failNext('prepare');
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(ISO_A));
    expect(r.error?.code).toBe('PREPARE_FAILED');
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'loading')], change: null });
    expect(w.source()).toBeNull();
  });

  it('a missing volume fails with VOLUME_NOT_FOUND and leaves the empty drive spec', async () => {
    const w = makeWorld();
    const r = resultOf(await w.run(ISO_MISSING));
    expect(r).toMatchObject({ outcome: 'failed', action: 'load', error: { code: 'VOLUME_NOT_FOUND' } });
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([]);
  });

  it('loading into the VM fails: tear down the volume, remove the drive spec, fail with the original error', async () => {
    const w = makeWorld();
    w.hv.failNext('updateDevice');
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'failed', action: 'load', current: null, error: { code: 'CHANGE_FAILED' } });
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([]);
  });

  it('loading fails and the teardown fails too: logged, the drive spec is still removed', async () => {
    const w = makeWorld();
    w.hv.failNext('updateDevice');
    w.storage.failNext('teardown');
    const r = resultOf(await w.run(ISO_A));
    expect(r.error?.code).toBe('CHANGE_FAILED');
    expect(r.warnings.map((x) => x.code)).toEqual(['TEARDOWN_FAILED']);
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('removing state fails: log the error and succeed', async () => {
    const w = makeWorld();
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', current: ISO_A, error: null });
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'loading')], change: null });
  });

  it('a legacy path loads the old way: no PDIV and no state in the metadata', async () => {
    const w = makeWorld();
    const r = resultOf(await w.run({ path: '/iso/tools.iso' }));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', current: { path: '/iso/tools.iso' } });
    expect(w.source()).toEqual({ type: 'file', path: '/iso/tools.iso' });
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
  });

  it('a legacy path outside the ISO directories fails with PATH_NOT_ALLOWED', async () => {
    const w = makeWorld();
    const r = resultOf(await w.run({ path: '/etc/shadow' }));
    expect(r).toMatchObject({ outcome: 'failed', error: { code: 'PATH_NOT_ALLOWED' } });
    expect(w.source()).toBeNull();
  });
});

describe('VM with loaded CD, eject CD', () => {
  it('ejects: state=ejecting, CD ejected, volume torn down, drive spec emptied', async () => {
    const w = makeWorld({ holding: ISO_A });
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'completed', action: 'eject', previous: ISO_A, current: null, warnings: [] });
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([]);
  });

  it('writing state="ejecting" fails: nothing changes, the flow fails', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('setMetadata', { ns: MD });
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'failed', action: 'eject', current: ISO_A });
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('ejecting fails: remove the state attribute, fail with the original error', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('updateDevice');
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'failed', action: 'eject', previous: ISO_A, current: ISO_A, error: { code: 'CHANGE_FAILED' } });
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('ejecting fails and removing the state fails too: logged, original error', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('updateDevice');
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(null));
    expect(r.error?.code).toBe('CHANGE_FAILED');
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'ejecting')], change: null });
  });

  it('teardown refused because another VM uses the volume: log and succeed', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.storage.hold(ISO_A);
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'completed', action: 'eject', current: null, error: null });
    expect(r.warnings.map((x) => x.code)).toEqual(['VOLUME_IN_USE']);
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('teardown fails with anything else: the metadata stops naming the volume, the flow fails TEARDOWN_FAILED with the drive empty', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.storage.failNext('teardown');
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'failed', action: 'eject', previous: ISO_A, current: null, error: { code: 'TEARDOWN_FAILED' } });
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [EMPTY_ENTRY], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('removing the drive spec fails: log the error and succeed', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'completed', action: 'eject', current: null });
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.source()).toBeNull();
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'ejecting')], change: null });
    expect(w.active()).toEqual([]);
  });
});

describe('VM with loaded CD, change CD', () => {
  it('changes: old marked ejecting, new added loading, prepared, loaded, state removed, old torn down and removed', async () => {
    const w = makeWorld({ holding: ISO_A });
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'completed', action: 'change', previous: ISO_A, current: ISO_B, warnings: [] });
    expect(w.source()).toEqual({ type: 'block', path: blockPath(ISO_B) });
    expect(w.drive()).toEqual({ entries: [entry(ISO_B)], change: null });
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });

  it('writing the ejecting/loading specs fails: nothing changes, the flow fails', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('setMetadata', { ns: MD });
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'failed', action: 'change', current: ISO_A });
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('prepare fails: remove state="ejecting", remove the new drive spec, fail with the original error', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.storage.failNext('prepare');
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'failed', action: 'change', previous: ISO_A, current: ISO_A, error: { code: 'PREPARE_FAILED' } });
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('loading the new CD fails: tear down the new volume, remove its spec, remove state="ejecting", fail', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('updateDevice');
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'failed', action: 'change', current: ISO_A, error: { code: 'CHANGE_FAILED' } });
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID]);
  });

  it('loading fails and restoring the specs fails: logged, original error, old CD still in the drive', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('updateDevice');
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(ISO_B));
    expect(r.error?.code).toBe('CHANGE_FAILED');
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.source()?.path).toBe(blockPath(ISO_A));
    expect(w.active()).toEqual([ISO_A.volumeID]);
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'ejecting'), entry(ISO_B, 'loading')], change: null });
  });

  it('removing state="loading" fails: log the error and continue', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('setMetadata', { ns: MD, skip: 1 });
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'completed', action: 'change', current: ISO_B });
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.drive()).toEqual({ entries: [entry(ISO_B, 'loading')], change: null });
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });

  it('tearing down the old volume fails: log the error and continue', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.storage.failNext('teardown');
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'completed', action: 'change', current: ISO_B, error: null });
    expect(r.warnings.map((x) => x.code)).toEqual(['TEARDOWN_FAILED']);
    expect(w.drive()).toEqual({ entries: [entry(ISO_B)], change: null });
    expect(w.active()).toEqual([ISO_A.volumeID, ISO_B.volumeID].sort());
  });

  it('the old volume is used by another VM: log and continue', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.storage.hold(ISO_A);
    const r = resultOf(await w.run(ISO_B));
    expect(r.outcome).toBe('completed');
    expect(r.warnings.map((x) => x.code)).toEqual(['VOLUME_IN_USE']);
    expect(w.active()).toEqual([ISO_A.volumeID, ISO_B.volumeID].sort());
  });

  it('removing the old drive spec fails: log the error and succeed', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('setMetadata', { ns: MD, skip: 2 });
    const r = resultOf(await w.run(ISO_B));
    expect(r).toMatchObject({ outcome: 'completed', action: 'change', current: ISO_B });
    expect(r.warnings.map((x) => x.code)).toEqual(['METADATA_FAILED']);
    expect(w.drive()).toEqual({ entries: [entry(ISO_A, 'ejecting'), entry(ISO_B)], change: null });
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });
});

describe('decisions and errors around the flows', () => {
  it('the drive already holds the requested CD: action none, nothing touched', async () => {
    const w = makeWorld({ holding: ISO_A });
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'completed', action: 'none', previous: ISO_A, current: ISO_A });
    expect(w.hv.calls.updateDevice).toBe(0);
    expect(w.storage.calls.prepare).toBe(0);
  });

  it('eject of an empty drive: action none', async () => {
    const w = makeWorld();
    const r = resultOf(await w.run(null));
    expect(r).toMatchObject({ outcome: 'completed', action: 'none', previous: null, current: null });
  });

  it('an unknown VM fails with VM_NOT_FOUND; an unknown drive with DRIVE_NOT_FOUND', async () => {
    const w = makeWorld();
    expect(resultOf(await w.run(ISO_A, { vmId: '9a9a9a9a-0c7e-4f0e-8d52-1d0d7a3f5e90' })).error?.code).toBe('VM_NOT_FOUND');
    expect(resultOf(await w.run(ISO_A, { drive: 'hdd' })).error?.code).toBe('DRIVE_NOT_FOUND');
  });

  it('the same commandId again answers with the first outcome and does not touch the drive', async () => {
    const w = makeWorld();
    const first = resultOf(await w.run(ISO_A, { commandId: 'c0c0c0c0-6f43-4a43-9d0e-3b8a7b0f2a11' }));
    await w.run(ISO_B);
    const calls = w.hv.calls.updateDevice;
    const again = await w.run(ISO_A, { commandId: 'c0c0c0c0-6f43-4a43-9d0e-3b8a7b0f2a11' });
    expect(again.kind === 'result' && again.replayed).toBe(true);
    expect(resultOf(again)).toEqual(first);
    expect(w.hv.calls.updateDevice).toBe(calls);
    expect(w.source()?.path).toBe(blockPath(ISO_B));
  });

  it('a failed command repeated answers failed again without retrying the change', async () => {
    const w = makeWorld();
    w.storage.failNext('prepare');
    const id = 'c1c1c1c1-6f43-4a43-9d0e-3b8a7b0f2a11';
    const first = resultOf(await w.run(ISO_A, { commandId: id }));
    expect(resultOf(await w.run(ISO_A, { commandId: id }))).toEqual(first);
    expect(w.storage.calls.prepare).toBe(1);
  });

  it('libvirt unreachable during the change: retry, and the next attempt recovers and completes once', async () => {
    const w = makeWorld({ holding: ISO_A });
    w.hv.failNext('updateDevice', { error: new CdromError('INTERNAL', 'cannot recv data: Connection reset by peer', { retryable: true }) });
    const id = 'c2c2c2c2-6f43-4a43-9d0e-3b8a7b0f2a11';
    const first = await w.run(ISO_B, { commandId: id });
    expect(first).toMatchObject({ kind: 'retry', attempt: { action: 'change', previous: ISO_A, current: ISO_A } });
    expect(w.drive().entries.some((e) => e.state !== null)).toBe(true);
    const second = resultOf(await w.run(ISO_B, { commandId: id }));
    expect(second).toMatchObject({ outcome: 'completed', action: 'change', previous: ISO_A, current: ISO_B });
    expect(w.drive()).toEqual({ entries: [entry(ISO_B)], change: null });
    expect(w.active()).toEqual([ISO_B.volumeID]);
  });

  it('a redelivered command whose change is already in the drive completes with the first action, changing nothing', async () => {
    const w = makeWorld();
    const id = 'c3c3c3c3-6f43-4a43-9d0e-3b8a7b0f2a11';
    // The first attempt dies right after the drive took the CD (the final write fails for good).
    w.hv.failNext('setMetadata', { ns: 'http://ovirt.org/cdrom-worker/1.0', skip: 1, error: new CdromError('INTERNAL', 'gone', { retryable: true }) });
    expect((await w.run(ISO_A, { commandId: id })).kind).toBe('retry');
    const calls = w.hv.calls.updateDevice;
    const r = resultOf(await w.run(ISO_A, { commandId: id }));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', previous: null, current: ISO_A });
    expect(w.hv.calls.updateDevice).toBe(calls);
    expect(w.drive()).toEqual({ entries: [entry(ISO_A)], change: null });
  });

  it('a commit step that hangs is logged like its failure and the command completes', async () => {
    const w = makeWorld({ stepTimeoutMs: 50 });
    const set = w.hv.setMetadata.bind(w.hv);
    let writes = 0;
    w.hv.setMetadata = (vmId, ns, xml) => (ns.uri === OVIRT_VM_NS.uri && ++writes === 2 ? new Promise(() => undefined) : set(vmId, ns, xml));
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', current: ISO_A });
    expect(r.warnings.map((x) => x.code)).toEqual(['TIMEOUT']);
  });

  it('a recovery that hangs settles with TIMEOUT instead of blocking the drive', async () => {
    const w = makeWorld({ stepTimeoutMs: 50 });
    w.hv.readDrive = () => new Promise(() => undefined);
    expect(await w.registry.recover(w.vmId, 'sdc')).toMatchObject({ kind: 'recovered', report: null, error: { code: 'TIMEOUT' } });
  });

  it('a step that hangs times out: TIMEOUT, retryable', async () => {
    const w = makeWorld({ stepTimeoutMs: 50 });
    w.storage.prepareVolume = () => new Promise(() => undefined);
    const e = await w.run(ISO_A);
    expect(e).toMatchObject({ kind: 'retry', error: { code: 'TIMEOUT', retryable: true } });
  });
});
