import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../logging.js';
import { CdromError } from '../../domain/errors.js';
import type { TeardownResult } from '../../domain/ports.js';
import type { ActiveLv, Activator } from './activation.js';
import { volumesOf, type LvmCli, type LvVolume } from './lvm.command.js';
import { blockDevNo, listLoopMappings, readLoopMapping, type LoopMapping } from './loop-devices.js';
import { loopAttach, loopDetach, type LoopDetachOutcome } from './loop.native.js';
import { loopDeviceUser } from './openers.js';
import { storageError } from './storage.errors.js';

const TRANSIENT_RECHECKS = 2;
const TRANSIENT_WAIT_MS = 50;

/** Binding and unbinding loop devices: the addon's ioctls in production, a fake in unit tests. */
export interface LoopControl {
  /** A read-only, not autoclear loop device over `sizeLimit` bytes of `backingFile` from `offset`. */
  attach(backingFile: string, offset: number, sizeLimit: number): Promise<string>;
  detach(device: string): Promise<LoopDetachOutcome>;
}

/** What the activator reads of the system: sysfs and /proc in production. */
export interface LoopTable {
  /** Every attached loop device. */
  list(): Promise<LoopMapping[]>;
  /** One loop device, or null when it is not attached. */
  read(device: string): Promise<LoopMapping | null>;
  /** Who keeps `mapping` busy, or null; `all` lists the loop devices when that is needed. */
  user(mapping: LoopMapping, all: () => Promise<readonly LoopMapping[]>): Promise<string | null>;
}

export const nativeLoopControl: LoopControl = { attach: loopAttach, detach: loopDetach };

export const systemLoopTable: LoopTable = { list: listLoopMappings, read: readLoopMapping, user: loopDeviceUser };

export interface LoopActivationOptions {
  readonly lvm: LvmCli;
  readonly logger: Logger;
  readonly loop?: LoopControl;
  readonly table?: LoopTable;
}

/**
 * Emulated activation for kernels without device-mapper: a read-only loop device over
 * exactly the LV's extents of its PV. A mapping is ours iff its backing device is the
 * LV's PV and its offset and size are the LV's, so loop devices of anyone else on the
 * machine are never touched, and a restarted worker finds its mappings again.
 *
 * Loop devices are bound and unbound with ioctls in the addon, not by spawning losetup:
 * a spawn from the worker's big heap cost ~9.5 ms each, the ioctls ~0.2 ms for both.
 * The device this process mapped (or found) for a volume is remembered as a hint only:
 * each use re-reads that one device's sysfs and checks it is still the LV's mapping, and
 * anything else falls back to the list of every loop device, so the answers still come
 * from the system.
 */
export class LoopActivator implements Activator {
  readonly mode = 'loop' as const;
  private readonly loop: LoopControl;
  private readonly table: LoopTable;
  /** `vg/lv` → the loop device last seen mapping it; verified on every use. */
  private readonly known = new Map<string, string>();

  constructor(private readonly options: LoopActivationOptions) {
    this.loop = options.loop ?? nativeLoopControl;
    this.table = options.table ?? systemLoopTable;
  }

  async activate(volume: LvVolume, _signal: AbortSignal): Promise<string> {
    if (!volume.contiguous) {
      throw new CdromError('PREPARE_FAILED', `${volume.vg}/${volume.lv} is not one contiguous range of one PV; loop activation cannot map it`);
    }
    try {
      const current = await this.mappingOf(volume);
      if (current !== null) return current.device;
      const device = await this.loop.attach(volume.pv, volume.offset, volume.size);
      if (!/^\/dev\/loop\d+$/.test(device)) throw new CdromError('PREPARE_FAILED', `loop attach answered ${JSON.stringify(device)}, not a loop device`);
      this.known.set(keyOf(volume), device);
      this.options.logger.info({ step: 'activate', vg: volume.vg, lv: volume.lv, device }, 'LV mapped to loop device');
      return device;
    } catch (err) {
      throw storageError(err, 'PREPARE_FAILED', `mapping ${volume.vg}/${volume.lv}`);
    }
  }

  async deactivate(volume: LvVolume, signal: AbortSignal): Promise<TeardownResult> {
    try {
      const remembered = await this.remembered(volume);
      // Mappings already scheduled for removal (autoclear) vanish on their last close.
      const mine = remembered !== null ? [remembered] : (await this.mappingsOf(volume, await this.table.list())).filter((m) => !m.autoclear);
      if (mine.length === 0) return 'done';
      for (const mapping of mine) {
        const user = await this.lastingUser(mapping, signal);
        if (user !== null) {
          this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv, device: mapping.device, user }, 'loop device in use');
          return 'in-use';
        }
      }
      this.known.delete(keyOf(volume));
      let inUse = false;
      for (const mapping of mine) {
        // Someone may have opened it between the check and the detach: the kernel then
        // only sets autoclear and the device lives on until that opener closes it.
        if ((await this.loop.detach(mapping.device)) === 'autoclear') inUse = true;
      }
      // Only the devices just detached are read again, not the whole list.
      for (const mapping of mine) {
        const now = await this.table.read(mapping.device);
        if (now !== null && sameMapping(now, mapping)) inUse = true;
      }
      if (inUse) {
        this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv, devices: mine.map((m) => m.device) }, 'loop device opened during detach; it goes on its last close');
        return 'in-use';
      }
      this.options.logger.info({ step: 'deactivate', vg: volume.vg, lv: volume.lv, devices: mine.map((m) => m.device) }, 'loop mapping removed');
      return 'done';
    } catch (err) {
      throw storageError(err, 'TEARDOWN_FAILED', `unmapping ${volume.vg}/${volume.lv}`);
    }
  }

  async activeDevice(volume: LvVolume): Promise<string | null> {
    return (await this.mappingOf(volume))?.device ?? null;
  }

  async listActive(signal: AbortSignal): Promise<ActiveLv[]> {
    const mappings = (await this.table.list()).filter((m) => !m.autoclear);
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

  /** The LV's live (not autoclear) mapping: the remembered device if it still is one, else from the full list. */
  private async mappingOf(volume: LvVolume): Promise<LoopMapping | null> {
    const remembered = await this.remembered(volume);
    if (remembered !== null) return remembered;
    const found = (await this.mappingsOf(volume, await this.table.list())).find((m) => !m.autoclear);
    if (found === undefined) return null;
    this.known.set(keyOf(volume), found.device);
    return found;
  }

  /** The remembered device of `volume` as sysfs shows it now, if it still is the LV's live mapping. */
  private async remembered(volume: LvVolume): Promise<LoopMapping | null> {
    const key = keyOf(volume);
    const device = this.known.get(key);
    if (device === undefined) return null;
    const now = await this.table.read(device);
    if (now !== null && !now.autoclear && (await this.mappingsOf(volume, [now])).length === 1) return now;
    this.known.delete(key);
    return null;
  }

  /**
   * An opener still there after a short wait. Anything scanning block devices (an LVM
   * command without a filter, udev, blkid) opens every device for a moment; a VM keeps
   * it open. Nobody found: no wait at all.
   */
  private async lastingUser(mapping: LoopMapping, signal: AbortSignal): Promise<string | null> {
    const all = (): Promise<LoopMapping[]> => this.table.list();
    let user = await this.table.user(mapping, all);
    for (let attempt = 0; user !== null && attempt < TRANSIENT_RECHECKS && !signal.aborted; attempt++) {
      await sleep(TRANSIENT_WAIT_MS);
      user = await this.table.user(mapping, all);
    }
    return user;
  }

  private async mappingsOf(volume: LvVolume, all: readonly LoopMapping[]): Promise<LoopMapping[]> {
    const candidates = all.filter((m) => m.offset === volume.offset && m.sizeLimit === volume.size);
    if (candidates.length === 0) return [];
    const out: LoopMapping[] = [];
    let pvDevNo: Promise<string | null> | undefined;
    for (const m of candidates) {
      if (m.backingFile === volume.pv) {
        out.push(m);
        continue;
      }
      // Another name of the same device (a udev symlink, a node in another directory).
      pvDevNo ??= blockDevNo(volume.pv);
      const devNo = await pvDevNo;
      if (devNo !== null && (await blockDevNo(m.backingFile)) === devNo) out.push(m);
    }
    return out;
  }
}

function keyOf(volume: LvVolume): string {
  return `${volume.vg}/${volume.lv}`;
}

function sameMapping(a: LoopMapping, b: LoopMapping): boolean {
  return a.backingFile === b.backingFile && a.offset === b.offset && a.sizeLimit === b.sizeLimit;
}
