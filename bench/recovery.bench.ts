import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Pdiv } from '../src/domain/media.js';
import { VmMetadata } from '../src/domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS } from '../src/domain/ports.js';
import { LibvirtHypervisor } from '../src/infra/libvirt/libvirt.hypervisor.js';
import { silentLogger } from '../src/infra/logging.js';
import { createStorage } from '../src/infra/storage/index.js';
import { createActivities } from '../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../src/machines/drive.registry.js';
import { Reconciler } from '../src/machines/reconciler.js';
import { FakeHypervisor } from '../test/fakes/hypervisor.fake.js';
import { FakeStorage, blockPath } from '../test/fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B, loadedMd } from '../test/support/world.js';
import { argInt, median, round, runSection, withTimeout, type Cleanup } from './lib/common.js';
import { BenchStorage, BenchVms, LIBVIRT_URI, VM_PREFIX, onlyDomains, takeHostLock } from './lib/real-env.js';

/**
 * Item 3: startup reconciliation (`Reconciler.reconcileAll`) — of 1,000 domains on the
 * fake hypervisor (a tenth with a half-done change), and of 10 real running VMs, each
 * with a CD-ROM holding a volume, some with a half-done change recorded in metadata.
 * The half-done state is written again before every round; the median round counts.
 */

export interface RecoveryResult {
  readonly fake: { domains: number; pending: number; rounds: number; p50Ms: number; maxMs: number; actionsPerRound: number };
  readonly real: { domains: number; pending: number; rounds: number; p50Ms: number; maxMs: number; actionsPerRound: number } | null;
}

const argv = process.argv.slice(2);

function halfDoneMd(holding: Pdiv, next: Pdiv): string {
  // a change crashed after its intent was written: old marked ejecting, new loading
  return VmMetadata.parse(loadedMd(holding)).markEntry('sdc', holding, 'ejecting').addEntry('sdc', next, 'loading').toXml();
}

export async function fakeRecovery(domains: number, rounds: number): Promise<RecoveryResult['fake']> {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage();
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  storage.activate(ISO_A);
  const ids = Array.from({ length: domains }, () => randomUUID());
  const pendingIds = ids.filter((_, i) => i % 10 === 0);
  for (const vmId of ids) hv.addVm(vmId, { drives: { sdc: { type: 'block', path: blockPath(ISO_A) } }, metadata: { [OVIRT_VM_NS.uri]: loadedMd(ISO_A) } });
  const half = halfDoneMd(ISO_A, ISO_B);
  const times: number[] = [];
  let actions = 0;
  for (let r = 0; r < rounds + 1; r++) {
    for (const vmId of pendingIds) await hv.setMetadata(vmId, OVIRT_VM_NS, half);
    const registry = new DriveRegistry({ activities: createActivities({ hypervisor: hv, storage }), concurrency: 16, stepTimeoutMs: 30_000, log: silentLogger() });
    const rec = new Reconciler({ hypervisor: hv, storage, drives: registry, log: silentLogger() });
    const t0 = performance.now();
    const report = await rec.reconcileAll();
    const ms = performance.now() - t0;
    registry.reap(0);
    if (report.failed.length > 0) throw new Error(`fake recovery failed: ${JSON.stringify(report.failed.slice(0, 3))}`);
    if (r > 0) times.push(ms); // round 0 warms the JIT
    actions = report.actions;
  }
  void EMPTY_MD;
  return { domains, pending: pendingIds.length, rounds, p50Ms: round(median(times)), maxMs: round(Math.max(...times)), actionsPerRound: actions };
}

export async function realRecovery(cleanup: Cleanup, domains: number, rounds: number): Promise<NonNullable<RecoveryResult['real']>> {
  await takeHostLock(cleanup, 900_000);
  const st = await BenchStorage.create(2, cleanup);
  const vms = await BenchVms.open(cleanup);
  const made = await Promise.all(Array.from({ length: domains }, () => vms.create(cleanup)));
  const names = new Set(made.map((v) => v.name));
  const hypervisor = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
  cleanup.add('libvirt connection', () => hypervisor.close());
  const storage = createStorage({ storageRoot: st.root, activation: 'loop', lvmFilter: st.domain.lvmFilter, logger: silentLogger() });
  const A = st.pdiv(0);
  const B = st.pdiv(1);
  // every VM holds A (as the worker would have loaded it)
  const prepared = await storage.prepareVolume(A);
  for (const vm of made) {
    await withTimeout(hypervisor.updateDevice(vm.uuid, 'sdc', { type: prepared.diskType, path: prepared.path }), 60_000, `load ${vm.name}`);
  }
  const initial = await hypervisor.getMetadata(made[0]?.uuid ?? '', OVIRT_VM_NS);
  const loaded = VmMetadata.parse(initial).addEntry('sdc', A, 'loading').clearState('sdc', 'loading');
  const loadedXml = loaded.toXml();
  const halfXml = loaded.markEntry('sdc', A, 'ejecting').addEntry('sdc', B, 'loading').toXml();
  const pending = made.filter((_, i) => i % 3 === 0);
  // the scan sees only this run's VMs: a pass over the whole host would recover other engineers' test VMs
  const view = onlyDomains(hypervisor, (n) => n.startsWith(VM_PREFIX) && names.has(n));
  const times: number[] = [];
  let actions = 0;
  for (let r = 0; r < rounds + 1; r++) {
    for (const vm of made) await hypervisor.setMetadata(vm.uuid, OVIRT_VM_NS, pending.includes(vm) ? halfXml : loadedXml);
    // a crash between prepare and update leaves the new volume active too
    await storage.prepareVolume(B);
    const registry = new DriveRegistry({ activities: createActivities({ hypervisor: view, storage }), concurrency: 16, stepTimeoutMs: 30_000, log: silentLogger() });
    const rec = new Reconciler({ hypervisor: view, storage, drives: registry, log: silentLogger() });
    const t0 = performance.now();
    const report = await withTimeout(rec.reconcileAll(), 60_000, 'real reconciliation');
    const ms = performance.now() - t0;
    registry.reap(0);
    if (report.failed.length > 0) throw new Error(`real recovery failed: ${JSON.stringify(report.failed.slice(0, 3))}`);
    if (r > 0) times.push(ms);
    actions = report.actions;
    process.stderr.write(`recovery (real): round ${r} ${ms.toFixed(1)} ms, ${report.actions} actions, ${report.orphansTornDown.length} orphans\n`);
  }
  return { domains, pending: pending.length, rounds, p50Ms: round(median(times)), maxMs: round(Math.max(...times)), actionsPerRound: actions };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('recovery', async (cleanup): Promise<RecoveryResult> => {
    const fake = await fakeRecovery(argInt(argv, 'domains', 1000), argInt(argv, 'rounds', 5));
    process.stderr.write(`recovery (fake): ${JSON.stringify(fake)}\n`);
    const realVms = argInt(argv, 'real-vms', 10);
    const real = realVms > 0 ? await realRecovery(cleanup, realVms, argInt(argv, 'rounds', 5)) : null;
    return { fake, real };
  });
}
