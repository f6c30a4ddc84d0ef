import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import { CdromError } from '../../src/domain/errors.js';
import type { DriveSource } from '../../src/domain/ports.js';
import { JOURNAL_NS, OVIRT_VM_NS } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import type { CommandTicket, FinalExecution } from '../../src/machines/executor.js';
import { VolumeClaims } from '../../src/domain/volume-claims.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage, blockPath } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B, loadedMd } from '../support/world.js';

/**
 * The registry through faults (CONTRACT §4, §9): retries keep their place in the drive's
 * line, a timed-out call holds its drive until it has returned, the drive is reconciled
 * before its next command, and a volume another drive is loading is never torn down.
 */

const RETRY = { limit: 5, baseDelayMs: 5, maxDelayMs: 20 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function host(opts: { stepTimeoutMs?: number; concurrency?: number; retry?: typeof RETRY } = {}) {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage(['/iso']);
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const claims = new VolumeClaims();
  const registry = new DriveRegistry({
    activities: createActivities({ hypervisor: hv, storage, claims }),
    claims,
    concurrency: opts.concurrency ?? 16,
    stepTimeoutMs: opts.stepTimeoutMs ?? 2_000,
    retry: opts.retry ?? RETRY,
    log: silentLogger(),
    idleTtlMs: 0,
  });
  const vm = (holding: typeof ISO_A | null = null): string => {
    const vmId = randomUUID();
    hv.addVm(vmId, {
      drives: { sdc: holding === null ? null : { type: 'block', path: blockPath(holding) } },
      metadata: { [OVIRT_VM_NS.uri]: holding === null ? EMPTY_MD : loadedMd(holding) },
    });
    if (holding !== null) storage.activate(holding);
    return vmId;
  };
  /** Finals in the order they were settled (the order events are published in). */
  const settled: { commandId: string; vmId: string; final: FinalExecution }[] = [];
  const submit = (vmId: string, media: ChangeCdCommand['media'], ticket: Partial<CommandTicket> = {}) => {
    const command: ChangeCdCommand = { type: 'changeCD', version: 1, commandId: randomUUID(), vmId, drive: 'sdc', media };
    const done = registry.submit(command, {
      live: () => true,
      settle: (final) => {
        settled.push({ commandId: command.commandId, vmId, final });
        return Promise.resolve();
      },
      ...ticket,
    });
    return { command, done };
  };
  return { hv, storage, registry, claims, vm, submit, settled };
}

/** updateDevice calls that wait for `release()`; counts the calls and their overlap per VM. */
function gateUpdates(hv: FakeHypervisor, only?: string) {
  const real = hv.updateDevice.bind(hv);
  const waiting: (() => void)[] = [];
  const calls: string[] = [];
  const running = new Map<string, number>();
  let overlap = 0;
  let gated = true;
  hv.updateDevice = async (vmId: string, drive: string, source: DriveSource | null) => {
    calls.push(vmId);
    const n = (running.get(vmId) ?? 0) + 1;
    running.set(vmId, n);
    if (n > 1) overlap += 1;
    try {
      if (gated && (only === undefined || only === vmId)) await new Promise<void>((r) => waiting.push(r));
      await real(vmId, drive, source);
    } finally {
      running.set(vmId, (running.get(vmId) ?? 1) - 1);
    }
  };
  return {
    calls,
    overlap: () => overlap,
    waiting: () => waiting.length,
    release: () => {
      gated = false;
      for (const r of waiting.splice(0)) r();
    },
  };
}

const outcomes = (s: ReturnType<typeof host>['settled']) => s.map((x) => (x.final.kind === 'result' ? `${x.final.result.outcome}:${x.final.result.action}` : 'exhausted'));

describe('registry: retries in place', () => {
  it('a retried command keeps its place: the next command for its drive waits, events stay in order', async () => {
    const h = host();
    const vmId = h.vm();
    h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'connection lost (fake)', { retryable: true }) });
    const load = h.submit(vmId, ISO_A);
    const eject = h.submit(vmId, null);
    await Promise.all([load.done, eject.done]);
    expect(h.settled.map((s) => s.commandId)).toEqual([load.command.commandId, eject.command.commandId]);
    expect(outcomes(h.settled)).toEqual(['completed:load', 'completed:eject']);
    // the chain: the eject's previous is the load's current
    const [first, second] = h.settled.map((s) => (s.final.kind === 'result' ? s.final.result : null));
    expect(second?.previous).toEqual(first?.current);
    expect(h.hv.sourceOf(vmId, 'sdc')).toBeNull();
    expect(h.storage.activeVolumeIds()).toEqual([]);
  });

  it('the backoff holds no concurrency slot: another drive completes meanwhile', async () => {
    const h = host({ concurrency: 1, retry: { limit: 3, baseDelayMs: 300, maxDelayMs: 300 } });
    const [vm1, vm2] = [h.vm(), h.vm()];
    h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'connection lost (fake)', { retryable: true }) });
    const slow = h.submit(vm1, ISO_A);
    await sleep(100); // vm1 is in its backoff now
    const t0 = Date.now();
    const other = h.submit(vm2, ISO_B);
    await other.done;
    expect(Date.now() - t0).toBeLessThan(200);
    expect(h.settled.map((s) => s.vmId)).toEqual([vm2]);
    await slow.done;
    expect(outcomes(h.settled)).toEqual(['completed:load', 'completed:load']);
  });

  it('a spent budget settles exhausted, and the next command reconciles the drive first', async () => {
    const h = host({ retry: { limit: 2, baseDelayMs: 1, maxDelayMs: 1 } });
    const vmId = h.vm();
    for (let i = 0; i < 3; i++) h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'connection lost (fake)', { retryable: true }) });
    const load = h.submit(vmId, ISO_A);
    const next = h.submit(vmId, ISO_B);
    await Promise.all([load.done, next.done]);
    expect(outcomes(h.settled)).toEqual(['exhausted', 'completed:load']);
    const exhausted = h.settled[0]?.final;
    expect(exhausted?.kind === 'exhausted' && exhausted.attempts).toBe(3);
    expect(h.hv.sourceOf(vmId, 'sdc')?.path).toBe(blockPath(ISO_B));
    // the exhausted load left state="loading" for A; the recovery before ISO_B discarded it
    expect(h.hv.metadataOf(vmId, OVIRT_VM_NS.uri)).not.toContain('state=');
    expect(h.storage.activeVolumeIds()).toEqual([ISO_B.volumeID]);
  });

  it('a failed flow whose record could not be written is retried, not answered unrecorded: a repeat gives the same outcome', async () => {
    const h = host();
    const vmId = h.vm();
    h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'QEMU refused the medium (fake)') });
    h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'QEMU refused the medium (fake)') });
    // the journal's second write is the failed record (the first is the pending one)
    h.hv.failNext('setMetadata', { ns: JOURNAL_NS.uri, skip: 1, error: new CdromError('INTERNAL', 'connection lost (fake)', { retryable: true }) });
    const load = h.submit(vmId, ISO_A);
    await load.done;
    const first = h.settled[0]?.final;
    expect(first?.kind === 'result' && [first.result.outcome, first.result.error?.code, first.result.warnings.length]).toEqual(['failed', 'CHANGE_FAILED', 0]);
    // the same command again: answered from the record, the drive is not touched
    const calls = h.hv.calls.updateDevice;
    const again = h.registry.submit(load.command, { live: () => true, settle: (final) => ((h.settled.push({ commandId: load.command.commandId, vmId, final }), Promise.resolve())) });
    await again;
    const repeat = h.settled[1]?.final;
    expect(repeat?.kind === 'result' && [repeat.replayed, repeat.result.outcome, repeat.result.error?.code]).toEqual([true, 'failed', 'CHANGE_FAILED']);
    expect(h.hv.calls.updateDevice).toBe(calls);
    expect(h.hv.sourceOf(vmId, 'sdc')).toBeNull();
  });

  it('a delivery that died is abandoned where it stands, without an outcome', async () => {
    const h = host({ retry: { limit: 5, baseDelayMs: 50, maxDelayMs: 50 } });
    const vmId = h.vm();
    let live = true;
    h.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'connection lost (fake)', { retryable: true }) });
    const load = h.submit(vmId, ISO_A, { live: () => live });
    await sleep(20);
    live = false;
    expect(await load.done).toBe('abandoned');
    expect(h.settled).toEqual([]);
  });
});

describe('registry: a hung call holds its drive', () => {
  it('no second call on the drive until the hung one returned; other VMs go on; then everything agrees', async () => {
    const h = host({ stepTimeoutMs: 50 });
    const [vm1, vm2] = [h.vm(), h.vm()];
    const gate = gateUpdates(h.hv);
    const load = h.submit(vm1, ISO_A);
    const eject = h.submit(vm1, null);
    await sleep(150); // the update timed out (50 ms); retries have come due meanwhile
    expect(h.registry.hungCalls).toBe(1);
    expect(gate.calls.filter((v) => v === vm1)).toHaveLength(1);
    expect(h.settled).toEqual([]);
    // a background recovery does not wait for the held drive
    const skipped = await h.registry.recover(vm1, 'sdc', { skipIfHeld: true });
    expect(skipped).toMatchObject({ kind: 'recovered', error: { code: 'TIMEOUT' } });

    // another VM is not held up (its update is gated too: let it through alone)
    const other = h.submit(vm2, ISO_B);
    await sleep(20);
    expect(gate.waiting()).toBe(2);
    gate.release(); // the hung call lands now, late
    await Promise.all([load.done, eject.done, other.done]);

    expect(h.registry.hungCalls).toBe(0);
    expect(gate.overlap()).toBe(0);
    const vm1Events = h.settled.filter((s) => s.vmId === vm1);
    expect(outcomes(vm1Events)).toEqual(['completed:load', 'completed:eject']);
    // the late landing is the load's change: it was recognised, not made again
    expect(gate.calls.filter((v) => v === vm1)).toHaveLength(2); // the load once, the eject once
    expect(h.hv.sourceOf(vm1, 'sdc')).toBeNull();
    expect(h.hv.metadataOf(vm1, OVIRT_VM_NS.uri)).not.toContain('state=');
    expect(h.hv.sourceOf(vm2, 'sdc')?.path).toBe(blockPath(ISO_B));
    expect(h.storage.activeVolumeIds()).toEqual([ISO_B.volumeID]);
  });

  it("another drive's eject leaves a volume active while a hung change is loading it (CONTRACT §5 v1.1)", async () => {
    const h = host({ stepTimeoutMs: 50 });
    const holder = h.vm(ISO_A);
    const loader = h.vm();
    const gate = gateUpdates(h.hv, loader);
    const load = h.submit(loader, ISO_A); // prepares A, then hangs in updateDevice
    await sleep(100);
    expect(gate.waiting()).toBe(1);
    expect(h.registry.hungCalls).toBe(1);
    expect(h.claims.claimedByOthers(ISO_A)).toBe(true);
    const eject = h.submit(holder, null);
    await eject.done;
    const ejected = h.settled.find((s) => s.vmId === holder)?.final;
    expect(ejected?.kind === 'result' && ejected.result.outcome).toBe('completed');
    expect(ejected?.kind === 'result' && ejected.result.warnings.map((w) => w.code)).toEqual(['VOLUME_IN_USE']);
    expect(h.storage.activeVolumeIds()).toEqual([ISO_A.volumeID]);

    gate.release();
    await load.done;
    const loaded = h.settled.find((s) => s.vmId === loader)?.final;
    expect(loaded?.kind === 'result' && `${loaded.result.outcome}:${loaded.result.action}`).toBe('completed:load');
    expect(h.hv.sourceOf(loader, 'sdc')?.path).toBe(blockPath(ISO_A));
    expect(h.storage.activeVolumeIds()).toEqual([ISO_A.volumeID]);
    expect(h.claims.size).toBe(0);
  });
});
