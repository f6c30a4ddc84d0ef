import { toCdromError } from '../domain/errors.js';
import type { Pdiv } from '../domain/media.js';
import { VmMetadata } from '../domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type DriveSource, type HypervisorPort, type StoragePort } from '../domain/ports.js';
import { limiter } from '../domain/limiter.js';
import type { VolumeClaims } from '../domain/volume-claims.js';
import { RECOVERY_ROWS, sourceHolds, volumesToCheck } from '../domain/recovery.js';
import type { Logger } from '../domain/logger.js';
import type { Settlement } from './cdrom.machine.js';

/**
 * Startup and background reconciliation: every CD-ROM of every running domain is put
 * through the recovery decision (queued behind that drive's commands), and block volumes
 * this worker activated that no drive holds and no metadata names are torn down.
 * One broken domain never blocks the others; what fails is retried on the next pass.
 */

export interface DriveRecovery {
  /** With `skipIfHeld`, a drive a hung call still holds is skipped, not waited for. */
  recover(vmId: string, drive: string, opts?: { skipIfHeld?: boolean }): Promise<Settlement>;
}

export interface ReconcileReport {
  readonly domains: number;
  readonly drives: number;
  readonly actions: number;
  readonly failed: readonly { vmId: string; drive: string | null; message: string }[];
  readonly orphansTornDown: readonly Pdiv[];
}

/**
 * What an adapter may add to the port: every CD-ROM of a domain with what it holds, from
 * one read of the domain (LibvirtHypervisor: one XMLDesc instead of one per drive plus the
 * list). Without it, listCdroms and readDrive per drive.
 */
export interface DrivesReader {
  readDrives(vmId: string): Promise<ReadonlyMap<string, DriveSource | null>>;
}

export interface ReconcilerOptions {
  readonly hypervisor: HypervisorPort & Partial<DrivesReader>;
  readonly storage: StoragePort;
  readonly drives: DriveRecovery;
  readonly log: Logger;
  /** domains read at once, and drive recoveries in flight at once */
  readonly parallel?: number;
  /** background pass period; 0 disables it */
  readonly intervalMs?: number;
  readonly observe?: (event: { row: string; vmId: string; drive: string }) => void;
  /** a drive's recovery failed, or a domain could not be read (`drive` null): retried next pass */
  readonly observeFailure?: (event: { vmId: string; drive: string | null }) => void;
  /** only domains whose name matches are recovered; orphan reaping still sees them all */
  readonly domainFilter?: RegExp | null;
  /** volumes drives have in an unfinished change: never orphans */
  readonly claims?: Pick<VolumeClaims, 'claimedByOthers'>;
}

export class Reconciler {
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly log: Logger;
  private running: Promise<ReconcileReport> | null = null;
  /** a whole-host pass was asked for while one ran (it may have read too early) */
  private again = false;

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

  /**
   * A whole-host pass that starts after this call: one running now is followed by
   * another (events missed until now are only made up by reading after them).
   */
  reconcileAfter(): Promise<ReconcileReport> {
    const running = this.running;
    if (running === null) return this.reconcileAll();
    this.again = true;
    return running.catch(() => undefined).then(() => {
      if (!this.again) return this.running ?? this.reconcileAll();
      this.again = false;
      return this.reconcileAll();
    });
  }

  /**
   * Background: domain starts/resumes trigger a pass for that domain, a reconnect to the
   * hypervisor a pass for every domain (events were missed); a timer retries.
   */
  start(): void {
    if (this.unsubscribe !== null || this.timer !== null) return;
    this.unsubscribe =
      this.opts.hypervisor.onEvent?.((e) => {
        if (e.kind === 'lifecycle' && (e.event === 'started' || e.event === 'resumed')) {
          void this.reconcileAll(e.vmId).catch((err: unknown) => this.log.warn({ err, vmId: e.vmId }, 'reconcile after lifecycle event failed'));
        } else if (e.kind === 'reconnected') {
          this.log.info('hypervisor connection is back: reconciling every domain');
          void this.reconcileAfter().catch((err: unknown) => this.log.warn({ err }, 'reconcile after reconnect failed'));
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
    const { hypervisor, storage } = this.opts;
    // The orphan scan's list of active volumes (an LVM scan, the slowest read of a pass)
    // is taken now, while the domains are read and recovered, rather than after. What
    // makes reaping safe is only that the list predates the metadata and drive reads it
    // is checked against (a flow writes its intent before it prepares): see reapOrphans.
    const activeEarly = onlyVm === undefined ? storage.listActiveVolumes().then((v) => v, () => null) : null;
    const all = await hypervisor.listDomains();
    const filter = this.opts.domainFilter ?? null;
    const targets = all.filter(
      (d) => d.active && (filter === null || filter.test(d.name)) && (onlyVm === undefined || d.vmId.toLowerCase() === onlyVm.toLowerCase()),
    );
    const failed: { vmId: string; drive: string | null; message: string }[] = [];
    let drives = 0;
    let actions = 0;

    const recoverDrive = async (vmId: string, drive: string): Promise<void> => {
      // A drive a hung call holds is reconciled before its next command anyway: never
      // wait for it here, so one stuck VM cannot hold up the pass (or readiness).
      const s = await this.opts.drives.recover(vmId, drive, { skipIfHeld: true });
      if (s.kind !== 'recovered') return;
      if (s.error !== null) {
        failed.push({ vmId, drive, message: s.error.message });
        this.opts.observeFailure?.({ vmId, drive });
        this.log.warn({ vmId, drive, err: s.error }, 'recovery failed; retried on the next pass');
      } else if (s.report !== null && s.report.steps > 0) {
        actions += s.report.steps;
        this.opts.observe?.({ row: s.report.row, vmId, drive });
        this.log.info({ vmId, drive, row: s.report.row, steps: s.report.steps, warnings: s.report.warnings }, 'recovered drive');
      } else if (s.report !== null && s.report.row === RECOVERY_ROWS.unmatched) {
        this.log.warn({ vmId, drive, row: s.report.row }, 'drive metadata left alone');
      }
    };

    // Reading domains and recovering drives are two bounded pools: a domain with a drive
    // to recover does not hold up reading the next ones. Each recovery reads the drive
    // again itself, under the drive's queue; this read only says which drives to queue.
    const parallel = Math.max(1, this.opts.parallel ?? 8);
    const reading = limiter(parallel);
    const recovering = limiter(parallel);
    const recoveries: Promise<void>[] = [];
    await Promise.all(
      targets.map((d) =>
        reading(async () => {
          const vmId = d.vmId;
          let cdroms: string[];
          let md: VmMetadata;
          try {
            [cdroms, md] = await Promise.all([hypervisor.listCdroms(vmId), hypervisor.getMetadata(vmId, OVIRT_VM_NS).then((x) => VmMetadata.parse(x))]);
          } catch (err) {
            failed.push({ vmId, drive: null, message: toCdromError(err).message });
            this.opts.observeFailure?.({ vmId, drive: null });
            this.log.warn({ vmId, err }, 'cannot read domain; retried on the next pass');
            return;
          }
          for (const drive of cdroms) {
            drives += 1;
            // Only a drive whose metadata records a change in progress has anything to
            // recover; a command that starts after this read writes its own intent first.
            const dm = md.drive(drive);
            if (dm.change === null && dm.entries.every((e) => e.state === null)) continue;
            const recovery = recovering(() => recoverDrive(vmId, drive));
            recovery.catch(() => undefined); // awaited below, after the reading; not unhandled meanwhile
            recoveries.push(recovery);
          }
        }),
      ),
    );
    await Promise.all(recoveries);

    const orphansTornDown =
      activeEarly !== null && failed.length === 0 ? await this.reapOrphans(all.map((d) => d.vmId), activeEarly, parallel) : [];
    return { domains: targets.length, drives, actions, failed, orphansTornDown };
  }

  /**
   * Volumes this worker activated that no drive holds and no metadata names (a flow in
   * progress writes its intent before it prepares, so it is never reaped from under it).
   * `listed` was taken at the start of the pass; a volume torn down since (by a recovery
   * of this pass, or a command) is checked again before it counts as an orphan.
   */
  private async reapOrphans(vmIds: string[], listed: Promise<Pdiv[] | null>, parallel: number): Promise<Pdiv[]> {
    const { storage } = this.opts;
    // a list that failed next to the recoveries is taken again, alone, as it used to be
    const active = (await listed) ?? (await storage.listActiveVolumes());
    if (active.length === 0) return [];
    const refs = await this.references(vmIds, parallel);
    if (refs === null) return [];
    const candidates = active.filter(
      (p) =>
        !refs.volumes.has(p.volumeID.toLowerCase()) &&
        !refs.sources.some((path) => sourceHolds({ type: 'block', path }, p)) &&
        this.opts.claims?.claimedByOthers(p) !== true,
    );
    const tornDown: Pdiv[] = [];
    for (const p of candidates) {
      try {
        if ((await storage.volumeActivation(p)) !== 'active') continue;
        if (this.opts.claims?.claimedByOthers(p) === true) continue; // a command began loading it meanwhile
        if ((await storage.teardownVolume(p)) === 'done') tornDown.push(p);
        else this.log.info({ volumeID: p.volumeID }, 'orphan volume in use elsewhere; left active');
      } catch (err) {
        this.log.warn({ volumeID: p.volumeID, err }, 'orphan teardown failed; retried on the next pass');
      }
    }
    if (tornDown.length > 0) this.log.info({ volumes: tornDown.map((p) => p.volumeID) }, 'tore down orphan volumes');
    return tornDown;
  }

  /**
   * Every volume the metadata of `vmIds` names, and every drive's source, read now. Null
   * when a domain cannot be read: it might use any volume, so nothing is reaped this pass.
   */
  private async references(vmIds: string[], parallel: number): Promise<{ volumes: Set<string>; sources: string[] } | null> {
    const { hypervisor } = this.opts;
    const volumes = new Set<string>();
    const sources: string[] = [];
    let unreadable = false;
    const reading = limiter(parallel);
    await Promise.all(
      vmIds.map((vmId) =>
        reading(async () => {
          if (unreadable) return;
          try {
            const [md, held] = await Promise.all([hypervisor.getMetadata(vmId, OVIRT_VM_NS).then((x) => VmMetadata.parse(x)), this.drivesOf(vmId)]);
            for (const drive of md.driveNames()) for (const p of volumesToCheck(md.drive(drive))) volumes.add(p.volumeID.toLowerCase());
            for (const s of held) if (s !== null) sources.push(s.path);
          } catch (err) {
            if (!unreadable) this.log.warn({ vmId, err }, 'cannot read domain; orphan reaping skipped');
            unreadable = true;
          }
        }),
      ),
    );
    return unreadable ? null : { volumes, sources };
  }

  /** What each CD-ROM of the domain holds now. */
  private async drivesOf(vmId: string): Promise<(DriveSource | null)[]> {
    const { hypervisor } = this.opts;
    if (hypervisor.readDrives !== undefined) return [...(await hypervisor.readDrives(vmId)).values()];
    const held: (DriveSource | null)[] = [];
    for (const drive of await hypervisor.listCdroms(vmId)) held.push(await hypervisor.readDrive(vmId, drive));
    return held;
  }
}
