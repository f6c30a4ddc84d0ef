import type { TeardownResult } from '../../domain/ports.js';
import type { LvVolume } from './lvm.command.js';

/** An active LV as an activator finds it on the system. */
export interface ActiveLv {
  readonly vg: string;
  readonly lv: string;
  readonly tags: readonly string[];
  readonly device: string;
}

/**
 * How an LV becomes a block device: real device-mapper (`dm`) or a read-only loop
 * mapping of its extents (`loop`, for kernels without device-mapper). Every method is
 * idempotent and answers from the system, not from memory, so a restarted worker sees
 * what an earlier one did.
 */
export interface Activator {
  readonly mode: 'dm' | 'loop';
  /** Activate and return the device path the link should point to. Throws PREPARE_FAILED. */
  activate(volume: LvVolume, signal: AbortSignal): Promise<string>;
  /** `in-use` when the device is open; the LV then stays active. Throws TEARDOWN_FAILED. */
  deactivate(volume: LvVolume, signal: AbortSignal): Promise<TeardownResult>;
  /** The active device of the LV, or null. */
  activeDevice(volume: LvVolume, signal: AbortSignal): Promise<string | null>;
  /** Every active LV that this worker's activation could have produced. */
  listActive(signal: AbortSignal): Promise<ActiveLv[]>;
}
