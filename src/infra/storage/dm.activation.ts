import type { Logger } from '../logging.js';
import type { TeardownResult } from '../../domain/ports.js';
import type { ActiveLv, Activator } from './activation.js';
import { CommandFailure } from './command.runner.js';
import type { LvmCli, LvVolume } from './lvm.command.js';
import { storageError } from './storage.errors.js';

/**
 * LVM's words for "deactivation refused because the device is open" (lib/activate):
 * an LV opened by a process, one with a device stacked on it, one that is mounted.
 */
const IN_USE = [
  /Logical volume \S+ in use\./,
  /Logical volume \S+ is used by another device\./,
  /Logical volume \S+ contains a filesystem in use\./,
];

/** LVM exits 5 (ECMD_FAILED) for a refused deactivation, as for most failures. */
export function isDeactivationInUse(err: unknown): boolean {
  return err instanceof CommandFailure && err.kind === 'exit' && err.exitCode === 5 && IN_USE.some((re) => re.test(err.stderr));
}

/** The 5th character of `lv_attr` is the state; `a` is active (`X` unknown: no dm). */
export function isActiveAttr(attr: string): boolean {
  return attr.charAt(4) === 'a';
}

interface LvRow {
  readonly vg_name?: string;
  readonly lv_name?: string;
  readonly lv_tags?: string;
  readonly lv_attr?: string;
}

export function parseLvRows(stdout: string): LvRow[] {
  const doc = JSON.parse(stdout) as { report?: Array<{ lv?: LvRow[] }> };
  return (doc.report ?? []).flatMap((r) => r.lv ?? []);
}

export interface DmActivationOptions {
  readonly lvm: LvmCli;
  readonly logger: Logger;
}

/** Real activation through device-mapper: `lvchange -ay/-an`, device `/dev/<vg>/<lv>`. */
export class DmActivator implements Activator {
  readonly mode = 'dm' as const;

  constructor(private readonly options: DmActivationOptions) {}

  async activate(volume: LvVolume, signal: AbortSignal): Promise<string> {
    try {
      await this.options.lvm.run('lvchange', ['--activate', 'y', `${volume.vg}/${volume.lv}`], signal);
    } catch (err) {
      throw storageError(err, 'PREPARE_FAILED', `activating ${volume.vg}/${volume.lv}`);
    }
    this.options.logger.info({ step: 'activate', vg: volume.vg, lv: volume.lv }, 'LV activated');
    return devicePath(volume);
  }

  async deactivate(volume: LvVolume, signal: AbortSignal): Promise<TeardownResult> {
    try {
      await this.options.lvm.run('lvchange', ['--activate', 'n', `${volume.vg}/${volume.lv}`], signal);
    } catch (err) {
      if (isDeactivationInUse(err)) {
        this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv }, 'LV in use, left active');
        return 'in-use';
      }
      throw storageError(err, 'TEARDOWN_FAILED', `deactivating ${volume.vg}/${volume.lv}`);
    }
    this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv }, 'LV deactivated');
    return 'done';
  }

  async activeDevice(volume: LvVolume, signal: AbortSignal): Promise<string | null> {
    try {
      const { stdout } = await this.options.lvm.run('lvs', ['--reportformat', 'json', '-o', 'lv_attr', `${volume.vg}/${volume.lv}`], signal);
      const row = parseLvRows(stdout)[0];
      return row !== undefined && isActiveAttr(row.lv_attr ?? '') ? devicePath(volume) : null;
    } catch (err) {
      throw storageError(err, 'INTERNAL', `reading the state of ${volume.vg}/${volume.lv}`);
    }
  }

  /**
   * Every active LV LVM reports. LVM does not record who activated an LV, so the caller
   * narrows this to the LVs whose link under the storage root we made.
   */
  async listActive(signal: AbortSignal): Promise<ActiveLv[]> {
    try {
      const { stdout } = await this.options.lvm.run('lvs', ['--reportformat', 'json', '-o', 'vg_name,lv_name,lv_tags,lv_attr'], signal);
      return parseLvRows(stdout)
        .filter((r) => isActiveAttr(r.lv_attr ?? ''))
        .map((r) => {
          const vg = r.vg_name ?? '';
          const lv = r.lv_name ?? '';
          return { vg, lv, tags: (r.lv_tags ?? '').split(',').filter(Boolean), device: `/dev/${vg}/${lv}` };
        });
    } catch (err) {
      throw storageError(err, 'INTERNAL', 'listing active LVs');
    }
  }
}

function devicePath(volume: LvVolume): string {
  return `/dev/${volume.vg}/${volume.lv}`;
}
