import { CdromError } from '../../src/domain/errors.js';
import { isPdiv, type Media, type Pdiv } from '../../src/domain/media.js';
import type { PreparedVolume, StoragePort, TeardownResult, VolumeActivation } from '../../src/domain/ports.js';

export type StorageStep = 'prepare' | 'teardown';

interface FakeVolume {
  pdiv: Pdiv;
  kind: 'block' | 'file';
}

export const FAKE_ROOT = '/rhev/data-center';

/**
 * A small stateful storage: known volumes, which are active, and which are held open by
 * someone else (another VM), so teardown answers `in-use`. `failNext(step)` makes the
 * next call of that step throw.
 */
export class FakeStorage implements StoragePort {
  private readonly volumes = new Map<string, FakeVolume>();
  private readonly active = new Set<string>();
  private readonly held = new Set<string>();
  private readonly failures = new Map<StorageStep, CdromError[]>();
  readonly calls: Record<StorageStep, number> = { prepare: 0, teardown: 0 };
  private openers: ((pdiv: Pdiv) => boolean) | null = null;

  constructor(private readonly isoDirs: readonly string[] = ['/iso']) {}

  addVolume(pdiv: Pdiv, kind: 'block' | 'file' = 'block'): void {
    this.volumes.set(pdiv.volumeID.toLowerCase(), { pdiv, kind });
  }

  /** Another VM opens the volume: teardown answers `in-use` until `release`. */
  hold(pdiv: Pdiv): void {
    this.held.add(pdiv.volumeID.toLowerCase());
  }

  release(pdiv: Pdiv): void {
    this.held.delete(pdiv.volumeID.toLowerCase());
  }

  /**
   * Who has a volume's device open, asked at each teardown (e.g. the fake hypervisor's
   * drives, as the real adapter scans /proc for QEMU's open fds): teardown answers
   * `in-use` while it says so, as for `hold`.
   */
  openedBy(openers: (pdiv: Pdiv) => boolean): void {
    this.openers = openers;
  }

  /** Mark a volume active as if prepared earlier (a crash left it so). */
  activate(pdiv: Pdiv): void {
    this.active.add(pdiv.volumeID.toLowerCase());
  }

  failNext(step: StorageStep, error?: CdromError): void {
    const list = this.failures.get(step) ?? [];
    list.push(error ?? (step === 'prepare' ? new CdromError('PREPARE_FAILED', 'lvchange -ay failed (fake)') : new CdromError('TEARDOWN_FAILED', 'lvchange -an failed (fake)')));
    this.failures.set(step, list);
  }

  /** Forget failures that were armed but not hit. */
  clearFailures(): void {
    this.failures.clear();
  }

  activeVolumeIds(): string[] {
    return [...this.active].sort();
  }

  async prepareVolume(media: Media): Promise<PreparedVolume> {
    await this.step('prepare');
    if (!isPdiv(media)) {
      if (!this.isoDirs.some((d) => media.path.startsWith(`${d}/`))) {
        throw new CdromError('PATH_NOT_ALLOWED', `${media.path} is outside the ISO directories`);
      }
      return { path: media.path, diskType: 'file' };
    }
    const vol = this.volume(media);
    if (vol.kind === 'file') return { path: `${FAKE_ROOT}/mnt/nfs:_export/${media.domainID}/images/${media.imageID}/${media.volumeID}`, diskType: 'file' };
    this.active.add(media.volumeID.toLowerCase());
    return { path: blockPath(media), diskType: 'block' };
  }

  async teardownVolume(media: Media): Promise<TeardownResult> {
    await this.step('teardown');
    if (!isPdiv(media)) return 'done';
    const id = media.volumeID.toLowerCase();
    if (!this.active.has(id)) return 'done';
    if (this.held.has(id) || this.openers?.(media) === true) return 'in-use';
    this.active.delete(id);
    return 'done';
  }

  volumeActivation(media: Media): Promise<VolumeActivation> {
    return Promise.resolve(isPdiv(media) && this.active.has(media.volumeID.toLowerCase()) ? 'active' : 'inactive');
  }

  listActiveVolumes(): Promise<Pdiv[]> {
    return Promise.resolve([...this.volumes.values()].filter((v) => this.active.has(v.pdiv.volumeID.toLowerCase())).map((v) => v.pdiv));
  }

  private volume(pdiv: Pdiv): FakeVolume {
    const vol = this.volumes.get(pdiv.volumeID.toLowerCase());
    if (vol === undefined || vol.pdiv.domainID.toLowerCase() !== pdiv.domainID.toLowerCase()) {
      throw new CdromError('VOLUME_NOT_FOUND', `no volume ${pdiv.volumeID} in storage domain ${pdiv.domainID}`);
    }
    return vol;
  }

  private async step(step: StorageStep): Promise<void> {
    this.calls[step] += 1;
    await Promise.resolve();
    const err = this.failures.get(step)?.shift();
    if (err !== undefined) throw err;
  }
}

export function blockPath(p: Pdiv): string {
  return `${FAKE_ROOT}/mnt/blockSD/${p.domainID}/images/${p.imageID}/${p.volumeID}`;
}
