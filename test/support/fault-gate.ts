import { CdromError, type ErrorCode } from '../../src/domain/errors.js';
import type { Media } from '../../src/domain/media.js';
import type { DriveSource, HypervisorPort, MetadataNamespace, StoragePort } from '../../src/domain/ports.js';

/**
 * Faults the fakes' `failNext` cannot express, for a worker process over the fakes:
 * infrastructure trouble whose outcome is unknown, and the process dying mid-flow.
 * The fakes stay what libvirt and LVM are: they keep their state whatever happens here.
 *
 * Every port call the process makes is numbered (1, 2, …, across its retries and across
 * process lives, so a fault can land in a redelivery or a startup recovery too); a fault
 * is planned at one number:
 * - `lost-before`: the call fails with a retryable error and never reaches the fake
 *   (the connection broke on the way there);
 * - `lost-after`: the fake does it, then the call fails with a retryable error (the
 *   connection broke on the way back: the outcome is unknown to the worker);
 * - `crash`: the fake does it, and the process is gone: this call and every later call
 *   of that process never return and never reach the fakes.
 */

export type FaultKind = 'lost-before' | 'lost-after' | 'crash';

export interface PlannedFault {
  readonly at: number;
  readonly kind: FaultKind;
  /** the code of a `lost-*` error: TIMEOUT (a step timed out) or INTERNAL (connection lost) */
  readonly code?: Extract<ErrorCode, 'TIMEOUT' | 'INTERNAL' | 'CHANGE_FAILED'>;
}

/** The numbered calls and the planned faults; outlives the processes it is shared by. */
export class FaultPlan {
  calls = 0;
  readonly fired: PlannedFault[] = [];
  private faults: PlannedFault[] = [];

  arm(faults: readonly PlannedFault[]): void {
    this.calls = 0;
    this.fired.length = 0;
    this.faults = [...faults];
  }

  disarm(): void {
    this.faults = [];
  }

  /** The fault planned for the next call, if any (consumed). */
  next(): PlannedFault | undefined {
    this.calls += 1;
    const i = this.faults.findIndex((f) => f.at === this.calls);
    if (i < 0) return undefined;
    const [f] = this.faults.splice(i, 1);
    if (f !== undefined) this.fired.push(f);
    return f;
  }
}

const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

/** One process life: its calls go through the plan until it crashes. */
export class ProcessGate {
  private dead = false;
  private onCrash!: () => void;
  /** Resolves when this process has crashed. */
  readonly crashed = new Promise<void>((resolve) => (this.onCrash = resolve));

  /** `crashOnPrepare`: the process dies right after preparing such a volume (a poison message). */
  constructor(
    private readonly plan: FaultPlan,
    private readonly crashOnPrepare?: (media: Media) => boolean,
  ) {}

  get isDead(): boolean {
    return this.dead;
  }

  async pass<T>(what: string, call: () => Promise<T>, crashAfter = false): Promise<T> {
    if (this.dead) return never();
    const fault: PlannedFault | undefined = crashAfter ? { at: this.plan.calls, kind: 'crash' } : this.plan.next();
    if (fault === undefined) return call();
    const lost = (): CdromError => new CdromError(fault.code ?? 'INTERNAL', `${what}: connection lost (planned fault at call ${fault.at})`, { retryable: true });
    switch (fault.kind) {
      case 'lost-before':
        throw lost();
      case 'lost-after':
        await call();
        throw lost();
      case 'crash':
        // the call itself went through (or failed) on the other side; its answer is never read
        await call().catch(() => undefined);
        this.dead = true;
        this.onCrash();
        return never();
    }
  }

  hypervisor(inner: HypervisorPort): HypervisorPort {
    return {
      readDrive: (vmId: string, drive: string) => this.pass('readDrive', () => inner.readDrive(vmId, drive)),
      listCdroms: (vmId: string) => this.pass('listCdroms', () => inner.listCdroms(vmId)),
      updateDevice: (vmId: string, drive: string, source: DriveSource | null) => this.pass('updateDevice', () => inner.updateDevice(vmId, drive, source)),
      getMetadata: (vmId: string, ns: MetadataNamespace) => this.pass('getMetadata', () => inner.getMetadata(vmId, ns)),
      setMetadata: (vmId: string, ns: MetadataNamespace, xml: string | null) => this.pass('setMetadata', () => inner.setMetadata(vmId, ns, xml)),
      listDomains: () => this.pass('listDomains', () => inner.listDomains()),
    };
  }

  storage(inner: StoragePort): StoragePort {
    return {
      prepareVolume: (media: Media) => this.pass('prepareVolume', () => inner.prepareVolume(media), this.crashOnPrepare?.(media) === true),
      teardownVolume: (media: Media) => this.pass('teardownVolume', () => inner.teardownVolume(media)),
      volumeActivation: (media: Media) => this.pass('volumeActivation', () => inner.volumeActivation(media)),
      listActiveVolumes: () => this.pass('listActiveVolumes', () => inner.listActiveVolumes()),
    };
  }
}
