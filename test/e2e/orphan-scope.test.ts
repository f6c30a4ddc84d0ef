import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { canUseLoopLvm } from '../support/storage.js';
import { E2eStorage } from '../support/e2e.js';

/**
 * Regression: in loop mode `listActiveVolumes` listed every loop mapping of an ISO LV on
 * the machine, so a worker's orphan reaping (at every start) tore down volumes that
 * another worker — another storage root, e.g. a concurrently running test — had prepared.
 * Only volumes with this worker's link count, as in dm mode.
 */
describe.skipIf(!canUseLoopLvm())('orphan reaping is scoped to the storage root (loop activation)', () => {
  let s: E2eStorage | null = null;
  let otherRoot: string | null = null;

  beforeAll(async () => {
    s = await E2eStorage.create(1);
    otherRoot = await mkdtemp(join(tmpdir(), 'cdw-e2e-other-'));
  }, 120_000);

  afterAll(async () => {
    await s?.remove();
    if (otherRoot !== null) await rm(otherRoot, { recursive: true, force: true });
  });

  it("a volume prepared under one root is not another root's active volume", async () => {
    const st = s as E2eStorage;
    const adapter = (root: string) => createStorage({ storageRoot: root, activation: 'loop', lvmFilter: st.domain.lvmFilter, logger: silentLogger() });
    const mine = adapter(st.root);
    const theirs = adapter(otherRoot as string);
    const p = st.pdiv(0);
    await mine.prepareVolume(p);
    try {
      expect((await mine.listActiveVolumes()).map((v) => v.volumeID)).toEqual([p.volumeID]);
      expect((await theirs.listActiveVolumes()).map((v) => v.volumeID)).toEqual([]);
    } finally {
      expect(await mine.teardownVolume(p)).toBe('done');
    }
  });
});
