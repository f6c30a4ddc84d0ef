import type { Logger } from '../logging.js';
import { CdromError } from '../../domain/errors.js';
import { UUID_RE, describeMedia, isLegacyPath, type Media, type Pdiv } from '../../domain/media.js';
import type { PreparedVolume, StoragePort, TeardownResult, VolumeActivation } from '../../domain/ports.js';
import { checkDeadline, withDeadline } from '../deadline.js';
import type { FileDomains } from './file.storage.js';
import { KeyedMutex } from '../../domain/keyed-mutex.js';
import type { LegacyPaths } from './legacy-path.js';
import type { BlockDomains } from './lvm.storage.js';
import { notFound, storageError } from './storage.errors.js';

export interface StorageAdapterParts {
  readonly block: BlockDomains;
  readonly files: FileDomains;
  readonly legacy: LegacyPaths;
  readonly logger: Logger;
  readonly prepareTimeoutMs: number;
  readonly teardownTimeoutMs: number;
}

/** Ids reach LVM command lines and paths: anything but a UUID stops here. */
function validPdiv(media: Pdiv): Pdiv {
  for (const key of ['poolID', 'domainID', 'imageID', 'volumeID'] as const) {
    if (typeof media[key] !== 'string' || !UUID_RE.test(media[key])) {
      throw new CdromError('INVALID_COMMAND', `${key} is not a UUID: ${JSON.stringify(media[key])}`);
    }
  }
  return media;
}

/**
 * StoragePort: routes media to its kind of domain, one operation at a time per volume,
 * each under a deadline (the wait for its turn included).
 */
export class StorageAdapter implements StoragePort {
  private readonly mutex = new KeyedMutex();
  private readonly log: Logger;

  constructor(private readonly parts: StorageAdapterParts) {
    this.log = parts.logger.child({ component: 'storage' });
  }

  async prepareVolume(media: Media): Promise<PreparedVolume> {
    const started = Date.now();
    const result = await withDeadline(this.parts.prepareTimeoutMs, `prepare ${describeMedia(media)}`, async (signal) => {
      if (isLegacyPath(media)) {
        return this.parts.legacy.prepare(media.path).catch((err: unknown) => {
          throw storageError(err, 'PREPARE_FAILED', `checking ${media.path}`);
        });
      }
      const pdiv = validPdiv(media);
      return this.mutex.run(volumeKey(pdiv), async () => {
        checkDeadline(signal, 'prepare');
        try {
          const volume = await this.parts.block.find(pdiv, signal, 'PREPARE_FAILED');
          if (volume !== null) return await this.parts.block.prepare(volume, pdiv, signal);
          const dir = await this.parts.files.findDomain(pdiv.domainID);
          if (dir === null) throw notFound(`storage domain ${pdiv.domainID} not found (no VG, no mounted domain directory)`);
          return await this.parts.files.prepare(dir, pdiv);
        } catch (err) {
          throw storageError(err, 'PREPARE_FAILED', `preparing ${describeMedia(pdiv)}`);
        }
      });
    });
    this.log.debug({ step: 'prepare', media: describeMedia(media), path: result.path, durationMs: Date.now() - started }, 'volume prepared');
    return result;
  }

  async teardownVolume(media: Media): Promise<TeardownResult> {
    if (isLegacyPath(media)) return 'done';
    const pdiv = validPdiv(media);
    const started = Date.now();
    const result = await withDeadline(this.parts.teardownTimeoutMs, `teardown ${describeMedia(media)}`, (signal) =>
      this.mutex.run(volumeKey(pdiv), async () => {
        checkDeadline(signal, 'teardown');
        try {
          const volume = await this.parts.block.find(pdiv, signal, 'TEARDOWN_FAILED');
          // File domain, or nothing by that name any more: nothing can be active.
          if (volume === null) return 'done' as const;
          return await this.parts.block.teardown(volume, pdiv, signal);
        } catch (err) {
          if (err instanceof CdromError && err.code === 'VOLUME_NOT_FOUND') {
            this.log.warn({ step: 'teardown', media: describeMedia(pdiv), err }, 'volume to tear down not found; nothing to deactivate');
            await this.parts.block.removeStaleLink(pdiv);
            return 'done' as const;
          }
          throw storageError(err, 'TEARDOWN_FAILED', `tearing down ${describeMedia(pdiv)}`);
        }
      }),
    );
    this.log.debug({ step: 'teardown', media: describeMedia(media), result, durationMs: Date.now() - started }, 'volume torn down');
    return result;
  }

  async volumeActivation(media: Media): Promise<VolumeActivation> {
    if (isLegacyPath(media)) return 'inactive';
    const pdiv = validPdiv(media);
    return withDeadline(this.parts.prepareTimeoutMs, `activation of ${describeMedia(media)}`, (signal) =>
      this.mutex.run(volumeKey(pdiv), async () => {
        checkDeadline(signal, 'activation query');
        try {
          const volume = await this.parts.block.find(pdiv, signal, 'INTERNAL');
          return volume === null ? 'inactive' : await this.parts.block.activation(volume, pdiv, signal);
        } catch (err) {
          if (err instanceof CdromError && err.code === 'VOLUME_NOT_FOUND') return 'inactive';
          throw storageError(err, 'INTERNAL', `reading the activation of ${describeMedia(pdiv)}`);
        }
      }),
    );
  }

  listActiveVolumes(): Promise<Pdiv[]> {
    return withDeadline(this.parts.prepareTimeoutMs, 'listing active volumes', async (signal) => {
      try {
        return await this.parts.block.listActive(signal);
      } catch (err) {
        throw storageError(err, 'INTERNAL', 'listing active volumes');
      }
    });
  }
}

function volumeKey(pdiv: Pdiv): string {
  return `${pdiv.domainID}/${pdiv.volumeID}`.toLowerCase();
}
