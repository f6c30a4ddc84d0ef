import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../logging.js';
import { CdromError } from '../../domain/errors.js';
import type { TeardownResult } from '../../domain/ports.js';
import type { ActiveLv, Activator } from './activation.js';
import type { CommandRunner } from './command.runner.js';
import { volumesOf, type LvmCli, type LvVolume } from './lvm.command.js';
import { blockDevNo, listLoopMappings, type LoopMapping } from './loop-devices.js';
import { loopDeviceUser } from './openers.js';
import { storageError } from './storage.errors.js';

const TRANSIENT_RECHECKS = 2;
const TRANSIENT_WAIT_MS = 50;

export interface LoopActivationOptions {
  readonly lvm: LvmCli;
  readonly runner: CommandRunner;
  readonly logger: Logger;
  readonly commandTimeoutMs: number;
}

/**
 * Emulated activation for kernels without device-mapper: a read-only loop device over
 * exactly the LV's extents of its PV. A mapping is ours iff its backing device is the
 * LV's PV and its offset and size are the LV's, so loop devices of anyone else on the
 * machine are never touched, and a restarted worker finds its mappings again.
 */
export class LoopActivator implements Activator {
  readonly mode = 'loop' as const;

  constructor(private readonly options: LoopActivationOptions) {}

  async activate(volume: LvVolume, signal: AbortSignal): Promise<string> {
    if (!volume.contiguous) {
      throw new CdromError('PREPARE_FAILED', `${volume.vg}/${volume.lv} is not one contiguous range of one PV; loop activation cannot map it`);
    }
    const existing = await this.mappingsOf(volume, await listLoopMappings());
    const reusable = existing.find((m) => !m.autoclear);
    if (reusable !== undefined) return reusable.device;
    try {
      const { stdout } = await this.options.runner(
        'losetup',
        ['--find', '--show', '--read-only', '--offset', String(volume.offset), '--sizelimit', String(volume.size), volume.pv],
        { signal, timeoutMs: this.options.commandTimeoutMs },
      );
      const device = stdout.trim();
      if (!/^\/dev\/loop\d+$/.test(device)) throw new CdromError('PREPARE_FAILED', `losetup printed ${JSON.stringify(device)}, not a loop device`);
      this.options.logger.info({ step: 'activate', vg: volume.vg, lv: volume.lv, device }, 'LV mapped to loop device');
      return device;
    } catch (err) {
      throw storageError(err, 'PREPARE_FAILED', `mapping ${volume.vg}/${volume.lv}`);
    }
  }

  async deactivate(volume: LvVolume, signal: AbortSignal): Promise<TeardownResult> {
    try {
      const all = await listLoopMappings();
      // Mappings already scheduled for removal (autoclear) vanish on their last close.
      const mine = (await this.mappingsOf(volume, all)).filter((m) => !m.autoclear);
      if (mine.length === 0) return 'done';
      for (const mapping of mine) {
        const user = await this.lastingUser(mapping, all, signal);
        if (user !== null) {
          this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv, device: mapping.device, user }, 'loop device in use');
          return 'in-use';
        }
      }
      for (const mapping of mine) {
        await this.options.runner('losetup', ['--detach', mapping.device], { signal, timeoutMs: this.options.commandTimeoutMs });
      }
      // Someone may have opened it between the scan and the detach: the kernel then only
      // sets autoclear and the device lives on until that opener closes it.
      const after = await this.mappingsOf(volume, await listLoopMappings());
      if (after.some((m) => mine.some((x) => x.device === m.device))) return 'in-use';
      this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv, devices: mine.map((m) => m.device) }, 'loop mapping removed');
      return 'done';
    } catch (err) {
      throw storageError(err, 'TEARDOWN_FAILED', `unmapping ${volume.vg}/${volume.lv}`);
    }
  }

  async activeDevice(volume: LvVolume): Promise<string | null> {
    const mine = await this.mappingsOf(volume, await listLoopMappings());
    return mine.find((m) => !m.autoclear)?.device ?? null;
  }

  async listActive(signal: AbortSignal): Promise<ActiveLv[]> {
    const mappings = (await listLoopMappings()).filter((m) => !m.autoclear);
    // Most of the time nothing is mapped: answer without the ~50 ms LVM scan.
    if (mappings.length === 0) return [];
    const volumes = volumesOf(await this.options.lvm.segments(null, signal));
    const out: ActiveLv[] = [];
    for (const volume of volumes) {
      const mapping = (await this.mappingsOf(volume, mappings)).find(() => true);
      if (mapping !== undefined) out.push({ vg: volume.vg, lv: volume.lv, tags: volume.tags, device: mapping.device });
    }
    return out;
  }

  /**
   * An opener still there after a short wait. Anything scanning block devices (an LVM
   * command without a filter, udev, blkid) opens every device for a moment; a VM keeps
   * it open.
   */
  private async lastingUser(mapping: LoopMapping, all: readonly LoopMapping[], signal: AbortSignal): Promise<string | null> {
    let user = await loopDeviceUser(mapping, all);
    for (let attempt = 0; user !== null && attempt < TRANSIENT_RECHECKS && !signal.aborted; attempt++) {
      await sleep(TRANSIENT_WAIT_MS);
      user = await loopDeviceUser(mapping, all);
    }
    return user;
  }

  private async mappingsOf(volume: LvVolume, all: readonly LoopMapping[]): Promise<LoopMapping[]> {
    const candidates = all.filter((m) => m.offset === volume.offset && m.sizeLimit === volume.size);
    if (candidates.length === 0) return [];
    const pvDevNo = await blockDevNo(volume.pv);
    const out: LoopMapping[] = [];
    for (const m of candidates) {
      if (m.backingFile === volume.pv || (pvDevNo !== null && (await blockDevNo(m.backingFile)) === pvDevNo)) out.push(m);
    }
    return out;
  }
}
