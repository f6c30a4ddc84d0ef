import { toCdromError } from '../domain/errors.js';
import type { Pdiv } from '../domain/media.js';
import { VmMetadata } from '../domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type HypervisorPort, type StoragePort } from '../domain/ports.js';
import { RECOVERY_ROWS, sourceHolds } from '../domain/recovery.js';
import type { Logger } from '../infra/logging.js';
import type { Settlement } from './cdrom.machine.js';

/**
 * Startup and background reconciliation: every CD-ROM of every running domain is put
 * through the recovery decision (queued behind that drive's commands), and block volumes
 * this worker activated that no drive holds and no metadata names are torn down.
 * One broken domain never blocks the others; what fails is retried on the next pass.
 */

export interface DriveRecovery {
  recover(vmId: string, drive: string): Promise<Settlement>;
}

export interface ReconcileReport {
  readonly domains: number;
  readonly drives: number;
  readonly actions: number;
  readonly failed: readonly { vmId: string; drive: string | null; message: string }[];
  readonly orphansTornDown: readonly Pdiv[];
}

export interface ReconcilerOptions {
  readonly hypervisor: HypervisorPort;
  readonly storage: StoragePort;
  readonly drives: DriveRecovery;
  readonly log: Logger;
  /** domains reconciled at once */
  readonly parallel?: number;
  /** background pass period; 0 disables it */
  readonly intervalMs?: number;
  readonly observe?: (event: { row: string; vmId: string; drive: string }) => void;
  /** only domains whose name matches are recovered; orphan reaping still sees them all */
  readonly domainFilter?: RegExp | null;
}

export class Reconciler {
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly log: Logger;
  private running: Promise<ReconcileReport> | null = null;

  constructor(private readonly opts: ReconcilerOptions) {
    this.log = opts.log.child({ component: 'reconciler' });
  }

  /** Reconcile every running domain (or one), then reap orphan volumes. */
  reconcileAll(onlyVm?: string): Promise<ReconcileReport> {
    if (onlyVm === undefined && this.running !== null) return this.running;
    const run = this.pass(onlyVm).finally(() => {
      if (this.running === run) this.running = null;
    });
    if (onlyVm === undefined) this.running = run;
    return run;
  }

  /** Background: domain starts/resumes trigger a pass for that domain; a timer retries. */
  start(): void {
    this.unsubscribe =
      this.opts.hypervisor.onEvent?.((e) => {
        if (e.kind === 'lifecycle' && (e.event === 'started' || e.event === 'resumed')) {
          void this.reconcileAll(e.vmId).catch((err: unknown) => this.log.warn({ err, vmId: e.vmId }, 'reconcile after lifecycle event failed'));
        }
      }) ?? null;
    const every = this.opts.intervalMs ?? 0;
    if (every > 0) {
      this.timer = setInterval(() => {
        void this.reconcileAll().catch((err: unknown) => this.log.warn({ err }, 'background reconcile failed'));
      }, every);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  private async pass(onlyVm: string | undefined): Promise<ReconcileReport> {
    const { hypervisor } = this.opts;
    const all = await hypervisor.listDomains();
    const filter = this.opts.domainFilter ?? null;
    const targets = all.filter(
      (d) => d.active && (filter === null || filter.test(d.name)) && (onlyVm === undefined || d.vmId.toLowerCase() === onlyVm.toLowerCase()),
    );
    const failed: { vmId: string; drive: string | null; message: string }[] = [];
    let drives = 0;
    let actions = 0;

    const queue = [...targets];
    const worker = async (): Promise<void> => {
      for (let d = queue.shift(); d !== undefined; d = queue.shift()) {
        const vmId = d.vmId;
        let cdroms: string[];
        let md: VmMetadata;
        try {
          [cdroms, md] = await Promise.all([hypervisor.listCdroms(vmId), hypervisor.getMetadata(vmId, OVIRT_VM_NS).then((x) => VmMetadata.parse(x))]);
        } catch (err) {
          failed.push({ vmId, drive: null, message: toCdromError(err).message });
          this.log.warn({ vmId, err }, 'cannot read domain; retried on the next pass');
          continue;
        }
        for (const drive of cdroms) {
          drives += 1;
          // Only a drive whose metadata records a change in progress has anything to
          // recover; a command that starts after this read writes its own intent first.
          const dm = md.drive(drive);
          if (dm.change === null && dm.entries.every((e) => e.state === null)) continue;
          const s = await this.opts.drives.recover(vmId, drive);
          if (s.kind !== 'recovered') continue;
          if (s.error !== null) {
            failed.push({ vmId, drive, message: s.error.message });
            this.log.warn({ vmId, drive, err: s.error }, 'recovery failed; retried on the next pass');
          } else if (s.report !== null && s.report.steps > 0) {
            actions += s.report.steps;
            this.opts.observe?.({ row: s.report.row, vmId, drive });
            this.log.info({ vmId, drive, row: s.report.row, steps: s.report.steps, warnings: s.report.warnings }, 'recovered drive');
          } else if (s.report !== null && s.report.row === RECOVERY_ROWS.unmatched) {
            this.log.warn({ vmId, drive, row: s.report.row }, 'drive metadata left alone');
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.parallel ?? 8, Math.max(1, targets.length)) }, worker));

    const orphansTornDown = onlyVm === undefined && failed.length === 0 ? await this.reapOrphans(all.map((d) => d.vmId)) : [];
    return { domains: targets.length, drives, actions, failed, orphansTornDown };
  }

  /**
   * Volumes this worker activated that no drive holds and no metadata names (a flow in
   * progress writes its intent before it prepares, so it is never reaped from under it).
   */
  private async reapOrphans(vmIds: string[]): Promise<Pdiv[]> {
    const { hypervisor, storage } = this.opts;
    const active = await storage.listActiveVolumes();
    if (active.length === 0) return [];
    const referenced = new Set<string>();
    const sources: string[] = [];
    for (const vmId of vmIds) {
      try {
        const md = VmMetadata.parse(await hypervisor.getMetadata(vmId, OVIRT_VM_NS));
        for (const drive of md.driveNames()) {
          const dm = md.drive(drive);
          for (const e of dm.entries) if (e.pdiv !== null) referenced.add(e.pdiv.volumeID.toLowerCase());
          if (dm.change?.pdiv) referenced.add(dm.change.pdiv.volumeID.toLowerCase());
        }
        for (const drive of await hypervisor.listCdroms(vmId)) {
          const s = await hypervisor.readDrive(vmId, drive);
          if (s !== null) sources.push(s.path);
        }
      } catch (err) {
        // A domain we cannot read might use any volume: reap nothing this pass.
        this.log.warn({ vmId, err }, 'cannot read domain; orphan reaping skipped');
        return [];
      }
    }
    const orphans = active.filter(
      (p) => !referenced.has(p.volumeID.toLowerCase()) && !sources.some((path) => sourceHolds({ type: 'block', path }, p)),
    );
    const tornDown: Pdiv[] = [];
    for (const p of orphans) {
      try {
        if ((await storage.teardownVolume(p)) === 'done') tornDown.push(p);
        else this.log.info({ volumeID: p.volumeID }, 'orphan volume in use elsewhere; left active');
      } catch (err) {
        this.log.warn({ volumeID: p.volumeID, err }, 'orphan teardown failed; retried on the next pass');
      }
    }
    if (tornDown.length > 0) this.log.info({ volumes: tornDown.map((p) => p.volumeID) }, 'tore down orphan volumes');
    return tornDown;
  }
}
