import { CdromError } from '../../src/domain/errors.js';
import type {
  DomainEvent,
  DomainRef,
  DriveSource,
  HypervisorPort,
  MetadataNamespace,
} from '../../src/domain/ports.js';

export type HypervisorStep = 'readDrive' | 'updateDevice' | 'getMetadata' | 'setMetadata' | 'listDomains';

interface Failure {
  readonly error: CdromError;
  readonly ns: string | undefined;
  skip: number;
}

interface FakeVm {
  name: string;
  active: boolean;
  drives: Map<string, DriveSource | null>;
  metadata: Map<string, string>;
}

/**
 * A small stateful hypervisor: per VM, the CD-ROM drives' sources and the metadata
 * elements by namespace. `failNext(step)` makes the next call of that step throw the
 * way the real adapter classifies it.
 */
export class FakeHypervisor implements HypervisorPort {
  private readonly vms = new Map<string, FakeVm>();
  private readonly failures = new Map<HypervisorStep, Failure[]>();
  private readonly listeners = new Set<(e: DomainEvent) => void>();
  private readonly refused = new Map<string, string>();
  readonly calls: Record<HypervisorStep, number> = { readDrive: 0, updateDevice: 0, getMetadata: 0, setMetadata: 0, listDomains: 0 };
  /** Every updateDevice that changed a drive (calls that threw are not here): what "changed twice" is counted from. */
  readonly applied: Array<{ readonly vmId: string; readonly drive: string; readonly source: DriveSource | null }> = [];

  addVm(vmId: string, opts: { name?: string; drives?: Record<string, DriveSource | null>; metadata?: Record<string, string> } = {}): void {
    this.vms.set(vmId.toLowerCase(), {
      name: opts.name ?? `vm-${vmId.slice(0, 8)}`,
      active: true,
      drives: new Map(Object.entries(opts.drives ?? { sdc: null })),
      metadata: new Map(Object.entries(opts.metadata ?? {})),
    });
  }

  removeVm(vmId: string): void {
    this.vms.delete(vmId.toLowerCase());
  }

  /**
   * A path updateDevice refuses the way libvirt/QEMU do (a missing file, a directory):
   * CHANGE_FAILED, not retryable, and the drive keeps its media.
   */
  refuseSource(path: string, reason = 'QEMU refused the medium (fake)'): void {
    this.refused.set(path, reason);
  }

  /**
   * Make a later call of `step` throw: the next one, or with `ns` only calls on that
   * metadata namespace, and with `skip` only after that many matching calls succeeded.
   */
  failNext(step: HypervisorStep, opts: { error?: CdromError; ns?: string; skip?: number } = {}): void {
    const list = this.failures.get(step) ?? [];
    list.push({ error: opts.error ?? defaultError(step), ns: opts.ns, skip: opts.skip ?? 0 });
    this.failures.set(step, list);
  }

  /** Forget failures that were armed but not hit. */
  clearFailures(): void {
    this.failures.clear();
  }

  /** What the drive holds, for assertions (no failure injection, no call counting). */
  sourceOf(vmId: string, drive: string): DriveSource | null {
    return this.vm(vmId).drives.get(drive) ?? null;
  }

  metadataOf(vmId: string, uri: string): string | null {
    return this.vm(vmId).metadata.get(uri) ?? null;
  }

  emit(event: DomainEvent): void {
    for (const l of this.listeners) l(event);
  }

  async readDrive(vmId: string, drive: string): Promise<DriveSource | null> {
    await this.step('readDrive');
    const vm = this.vm(vmId);
    if (!vm.drives.has(drive)) throw new CdromError('DRIVE_NOT_FOUND', `VM ${vmId} has no CD-ROM ${drive}`);
    return vm.drives.get(drive) ?? null;
  }

  async listCdroms(vmId: string): Promise<string[]> {
    await Promise.resolve();
    return [...this.vm(vmId).drives.keys()];
  }

  async updateDevice(vmId: string, drive: string, source: DriveSource | null): Promise<void> {
    await this.step('updateDevice');
    const vm = this.vm(vmId);
    if (!vm.drives.has(drive)) throw new CdromError('DRIVE_NOT_FOUND', `VM ${vmId} has no CD-ROM ${drive}`);
    const reason = source === null ? undefined : this.refused.get(source.path);
    if (reason !== undefined) {
      const held = vm.drives.get(drive) ?? null;
      throw new CdromError('CHANGE_FAILED', `${reason}; the drive still holds ${held === null ? 'no medium' : `${held.type} ${held.path}`}`);
    }
    vm.drives.set(drive, source === null ? null : { ...source });
    this.applied.push({ vmId, drive, source: source === null ? null : { ...source } });
    this.emit({ kind: 'tray-change', vmId, device: drive, open: source === null });
  }

  async getMetadata(vmId: string, ns: MetadataNamespace): Promise<string | null> {
    await this.step('getMetadata', ns.uri);
    return this.vm(vmId).metadata.get(ns.uri) ?? null;
  }

  async setMetadata(vmId: string, ns: MetadataNamespace, xml: string | null): Promise<void> {
    await this.step('setMetadata', ns.uri);
    const vm = this.vm(vmId);
    if (xml === null) vm.metadata.delete(ns.uri);
    else vm.metadata.set(ns.uri, xml);
  }

  async listDomains(): Promise<DomainRef[]> {
    await this.step('listDomains');
    return [...this.vms.entries()].map(([vmId, vm]) => ({ vmId, name: vm.name, active: vm.active }));
  }

  onEvent(listener: (event: DomainEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private async step(step: HypervisorStep, ns?: string): Promise<void> {
    this.calls[step] += 1;
    await Promise.resolve();
    const list = this.failures.get(step) ?? [];
    const i = list.findIndex((f) => f.ns === undefined || f.ns === ns);
    const f = list[i];
    if (f === undefined) return;
    if (f.skip > 0) {
      f.skip -= 1;
      return;
    }
    list.splice(i, 1);
    throw f.error;
  }

  private vm(vmId: string): FakeVm {
    const vm = this.vms.get(vmId.toLowerCase());
    if (vm === undefined) throw new CdromError('VM_NOT_FOUND', `no domain with UUID ${vmId}`);
    return vm;
  }
}

function defaultError(step: HypervisorStep): CdromError {
  return step === 'updateDevice'
    ? new CdromError('CHANGE_FAILED', 'internal error: unable to execute QEMU command (fake)')
    : new CdromError('INTERNAL', `${step} failed (fake)`);
}
