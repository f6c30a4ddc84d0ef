import type { Logger } from '../logging.js';
import type { StoragePort } from '../../domain/ports.js';
import type { Activator } from './activation.js';
import { execFileRunner, type CommandRunner } from './command.runner.js';
import { readDirect, type DirectReader } from './direct-read.native.js';
import { DmActivator } from './dm.activation.js';
import { FileDomains } from './file.storage.js';
import { LegacyPaths } from './legacy-path.js';
import { LoopActivator } from './loop.activation.js';
import { LvmCli } from './lvm.command.js';
import { readVgMetadataHead } from './lvm.mda.js';
import { BlockDomains } from './lvm.storage.js';
import { StorageAdapter } from './storage.adapter.js';

export interface StorageOptions {
  /** Root of the storage links and file-domain mounts (CDROM_STORAGE_ROOT). */
  readonly storageRoot?: string;
  /** `dm`: real lvchange; `loop`: loop devices over the LV's extents (CDROM_LVM_ACTIVATION). */
  readonly activation: 'dm' | 'loop';
  /** Where a legacy path may point (CDROM_ISO_DIRS); default `<storageRoot>/mnt`. */
  readonly isoDirs?: readonly string[];
  /** LVM `devices { filter }` entries, e.g. `['a|^/dev/loop3$|', 'r|.*|']`; default: LVM's config. */
  readonly lvmFilter?: readonly string[];
  /** Whole prepare, the wait for the volume's turn included. Default 30 s. */
  readonly prepareTimeoutMs?: number;
  /** Whole teardown, likewise. Default 30 s. */
  readonly teardownTimeoutMs?: number;
  /** One LVM process. Default 20 s. */
  readonly commandTimeoutMs?: number;
  readonly logger: Logger;
  /** Tests inject a fake to replay LVM output. */
  readonly runner?: CommandRunner;
  /** O_DIRECT reads of PVs (the addon's `readDirect`); tests inject PV images. */
  readonly directReader?: DirectReader;
}

export const DEFAULT_STORAGE_ROOT = '/rhev/data-center';

export function createStorage(options: StorageOptions): StoragePort {
  const root = options.storageRoot ?? DEFAULT_STORAGE_ROOT;
  const runner = options.runner ?? execFileRunner;
  const directReader = options.directReader ?? readDirect;
  const commandTimeoutMs = options.commandTimeoutMs ?? 20_000;
  const logger = options.logger.child({ component: 'storage' });
  const lvm = new LvmCli({
    runner,
    filter: options.lvmFilter,
    disableActivation: options.activation === 'loop',
    commandTimeoutMs,
  });
  const activator: Activator =
    options.activation === 'loop'
      ? new LoopActivator({ lvm, logger })
      : new DmActivator({ lvm, logger });
  return new StorageAdapter({
    block: new BlockDomains({ lvm, activator, root, logger, readMetadataHead: (pv) => readVgMetadataHead(pv, directReader) }),
    files: new FileDomains(root),
    legacy: new LegacyPaths(options.isoDirs ?? [`${root}/mnt`]),
    logger: options.logger,
    prepareTimeoutMs: options.prepareTimeoutMs ?? 30_000,
    teardownTimeoutMs: options.teardownTimeoutMs ?? 30_000,
  });
}

export type { CommandRunner, CommandResult, RunOptions } from './command.runner.js';
export { CommandFailure } from './command.runner.js';
export type { ByteRange, DirectReader } from './direct-read.native.js';
