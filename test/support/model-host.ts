import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import type { Media } from '../../src/domain/media.js';
import { VmMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import type { ChangeResult } from '../../src/domain/outcome.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { sourceHolds } from '../../src/domain/recovery.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { Reconciler } from '../../src/machines/reconciler.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage } from '../fakes/storage.fake.js';
import { FaultPlan, ProcessGate } from './fault-gate.js';
import { EMPTY_MD, ISO_A, ISO_B } from './world.js';

/**
 * The model test's host (test/unit/cdrom.model.test.ts): `drives` VMs with CD-ROM `sdc`
 * over the fakes, which outlive the worker, and the worker process of the moment, whose
 * every port call goes through a ProcessGate so that a planned fault can land anywhere.
 */

interface Process {
  readonly gate: ProcessGate;
  readonly registry: DriveRegistry;
  readonly reconciler: Reconciler;
}

/** One host: the fakes (what survives the worker) and the worker process of the moment. */
export class ModelHost {
  readonly hv = new FakeHypervisor();
  readonly storage = new FakeStorage(['/iso']);
  readonly vmIds: readonly string[];
  readonly plan = new FaultPlan();
  proc: Process;
  crashes = 0;
  retries = 0;

  constructor(drives: number) {
    this.vmIds = Array.from({ length: drives }, () => randomUUID());
    this.storage.addVolume(ISO_A);
    this.storage.addVolume(ISO_B);
    for (const vmId of this.vmIds) this.hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    // A volume is in use while a drive on this host holds it: QEMU has its device open.
    this.storage.openedBy((p) => this.vmIds.some((vmId) => sourceHolds(this.hv.sourceOf(vmId, 'sdc'), p)));
    this.proc = this.start();
  }

  private start(): Process {
    const gate = new ProcessGate(this.plan);
    const hypervisor = gate.hypervisor(this.hv);
    const storage = gate.storage(this.storage);
    const activities = createActivities({ hypervisor, storage });
    // No step deadline fires during a run: a dead process's steps never settle.
    const registry = new DriveRegistry({ activities, concurrency: 4, stepTimeoutMs: 60_000, log: silentLogger(), idleTtlMs: 0 });
    const reconciler = new Reconciler({ hypervisor, storage, drives: registry, log: silentLogger() });
    return { gate, registry, reconciler };
  }

  /** Until a result, as the consumer does: retry on `retry`, and after a crash restart, recover, redeliver. */
  async deliver(command: ChangeCdCommand): Promise<ChangeResult> {
    for (let delivery = 0; delivery < 10; delivery++) {
      const { registry, gate } = this.proc;
      const exec = await Promise.race([registry.execute(command), gate.crashed.then(() => null)]);
      if (exec === null) {
        this.crashes++;
        await this.restart();
      } else if (exec.kind === 'retry') {
        this.retries++;
        expect(exec.error.retryable).toBe(true);
      } else if (exec.kind === 'poisoned') {
        throw new Error(`${command.commandId} given up as poison: ${exec.error.message}`);
      } else {
        return exec.result;
      }
    }
    throw new Error(`no result for ${command.commandId} after 10 deliveries`);
  }

  /** A new process: startup recovery of every drive (which may crash too) before it consumes. */
  private async restart(): Promise<void> {
    for (let life = 0; life < 10; life++) {
      this.proc = this.start();
      const { reconciler, gate } = this.proc;
      // A pass that meets a lost connection is left as it is: the worker starts consuming
      // all the same, and a drive it did not recover is recovered by its next command.
      const pass = reconciler
        .reconcileAll()
        .catch(() => undefined)
        .then(() => 'done' as const);
      const end = await Promise.race([pass, gate.crashed.then(() => 'crashed' as const)]);
      if (end === 'done') return;
      this.crashes++;
    }
    throw new Error('the worker kept crashing in its startup recovery');
  }

  held(d: number): Media | null {
    const s = this.hv.sourceOf(this.vmIds[d] as string, 'sdc');
    if (s === null) return null;
    return [ISO_A, ISO_B].find((p) => sourceHolds(s, p)) ?? { path: s.path };
  }

  metadata(d: number) {
    return VmMetadata.parse(this.hv.metadataOf(this.vmIds[d] as string, OVIRT_VM_NS.uri)).drive('sdc');
  }

  /** updateDevice calls that changed drive `d` so far. */
  changes(d: number): number {
    return this.hv.applied.filter((a) => a.vmId === this.vmIds[d]).length;
  }
}
