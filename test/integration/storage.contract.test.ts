import { randomUUID } from 'node:crypto';
import { mkdir, realpath, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Pdiv } from '../../src/domain/media.js';
import type { StoragePort } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { FakeStorage } from '../fakes/storage.fake.js';
import { canUseLoopLvm, codeOf, holdOpen, useTestStorage } from '../support/storage.js';

/**
 * The same StoragePort cases on the fake and on the real adapter (loop mode), so the
 * fake the machine tests rely on cannot drift from what the adapter does.
 */
interface World {
  storage: StoragePort;
  volume: Pdiv;
  /** Someone else (another VM) opens the prepared volume. */
  hold(prepared: string): Promise<() => Promise<void>>;
  legacyInside: string;
  legacyOutside: string;
}

function storageContract(name: string, makeWorld: () => Promise<World>, options: { skip?: boolean } = {}): void {
  describe.skipIf(options.skip === true)(`StoragePort contract: ${name}`, () => {
    let w: World;
    beforeAll(async () => {
      w = await makeWorld();
    });

    it('prepares a block volume at its vdsm link path, idempotently, and reports it active', async () => {
      const first = await w.storage.prepareVolume(w.volume);
      expect(first.diskType).toBe('block');
      expect(first.path.endsWith(`/mnt/blockSD/${w.volume.domainID}/images/${w.volume.imageID}/${w.volume.volumeID}`)).toBe(true);
      expect(await w.storage.prepareVolume(w.volume)).toEqual(first);
      expect(await w.storage.volumeActivation(w.volume)).toBe('active');
      expect(await w.storage.listActiveVolumes()).toContainEqual(w.volume);
    });

    it('teardown: in-use while held, then done, then done again', async () => {
      const { path } = await w.storage.prepareVolume(w.volume);
      const release = await w.hold(path);
      try {
        expect(await w.storage.teardownVolume(w.volume)).toBe('in-use');
        expect(await w.storage.volumeActivation(w.volume)).toBe('active');
      } finally {
        await release();
      }
      expect(await w.storage.teardownVolume(w.volume)).toBe('done');
      expect(await w.storage.volumeActivation(w.volume)).toBe('inactive');
      expect(await w.storage.teardownVolume(w.volume)).toBe('done');
      expect(await w.storage.listActiveVolumes()).not.toContainEqual(w.volume);
    });

    it('an unknown volume: prepare VOLUME_NOT_FOUND, teardown done, inactive', async () => {
      const unknown = { ...w.volume, volumeID: randomUUID() };
      expect(await codeOf(w.storage.prepareVolume(unknown))).toBe('VOLUME_NOT_FOUND');
      expect(await w.storage.teardownVolume(unknown)).toBe('done');
      expect(await w.storage.volumeActivation(unknown)).toBe('inactive');
    });

    it('legacy paths: inside the ISO dirs is a file, outside is PATH_NOT_ALLOWED, teardown is done', async () => {
      expect(await w.storage.prepareVolume({ path: w.legacyInside })).toEqual({ path: w.legacyInside, diskType: 'file' });
      expect(await codeOf(w.storage.prepareVolume({ path: w.legacyOutside }))).toBe('PATH_NOT_ALLOWED');
      expect(await w.storage.teardownVolume({ path: w.legacyInside })).toBe('done');
      expect(await w.storage.volumeActivation({ path: w.legacyInside })).toBe('inactive');
    });
  });
}

storageContract('FakeStorage', () => {
  const fake = new FakeStorage(['/iso']);
  const volume = { poolID: randomUUID(), domainID: randomUUID(), imageID: randomUUID(), volumeID: randomUUID() };
  fake.addVolume(volume, 'block');
  return Promise.resolve({
    storage: fake,
    volume,
    hold: () => {
      fake.hold(volume);
      return Promise.resolve(() => {
        fake.release(volume);
        return Promise.resolve();
      });
    },
    legacyInside: '/iso/a.iso',
    legacyOutside: '/etc/passwd',
  });
});

const real = useTestStorage();
storageContract(
  'loop-activated LVM adapter',
  async () => {
    const block = await real.blockDomain(1);
    const root = real.dir();
    const isoDir = join(root, 'iso');
    await mkdir(isoDir, { recursive: true });
    await writeFile(join(isoDir, 'a.iso'), 'iso');
    const v = block.volumes[0];
    if (v === undefined) throw new Error('no volume');
    return {
      storage: createStorage({ storageRoot: root, activation: 'loop', isoDirs: [isoDir], lvmFilter: block.lvmFilter, logger: silentLogger() }),
      volume: { poolID: randomUUID(), domainID: block.vg, imageID: v.imageID, volumeID: v.volumeID },
      hold: async (path) => {
        const holder = holdOpen(await realpath(path));
        return holder.release;
      },
      legacyInside: join(isoDir, 'a.iso'),
      legacyOutside: '/etc/passwd',
    };
  },
  { skip: !canUseLoopLvm() },
);
