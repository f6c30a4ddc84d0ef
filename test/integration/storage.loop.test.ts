import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readFile, readlink, realpath, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Pdiv } from '../../src/domain/media.js';
import type { StoragePort } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { loopDetach } from '../../src/infra/storage/loop.native.js';
import { type BlockTestDomain, canUseLoopLvm, codeOf, type FileTestDomain, holdOpen, isoLabel, loopsOver, useTestStorage } from '../support/storage.js';

const POOL = randomUUID();

describe.skipIf(!canUseLoopLvm())('loop-activated LVM storage (real LVM metadata, loop devices)', () => {
  const storage = useTestStorage();
  let block: BlockTestDomain;
  let file: FileTestDomain;
  let root: string;
  let isoDir: string;
  let outside: string;

  const adapter = (): StoragePort =>
    createStorage({ storageRoot: root, activation: 'loop', isoDirs: [isoDir], lvmFilter: block.lvmFilter, logger: silentLogger() });

  const pdivOf = (i: number): Pdiv => {
    const v = block.volumes[i];
    if (v === undefined) throw new Error(`no volume ${i}`);
    return { poolID: POOL, domainID: block.vg, imageID: v.imageID, volumeID: v.volumeID };
  };

  const mappingsOf = async (i: number): Promise<string[]> => {
    const v = block.volumes[i];
    return (await loopsOver(block.pv)).filter((m) => m.offset === v?.offset && m.sizelimit === v.size).map((m) => m.name);
  };

  let s: StoragePort;

  beforeAll(async () => {
    block = await storage.blockDomain(3);
    file = await storage.fileDomain();
    root = storage.dir();
    isoDir = join(root, 'iso');
    outside = join(root, 'outside');
    await mkdir(isoDir, { recursive: true });
    await mkdir(outside, { recursive: true });
    s = adapter();
  });

  it('prepares a block volume: the link points at a read-only device holding that ISO', async () => {
    const pdiv = pdivOf(1);
    const prepared = await s.prepareVolume(pdiv);
    expect(prepared).toEqual({ path: join(root, 'mnt/blockSD', block.vg, 'images', pdiv.imageID, pdiv.volumeID), diskType: 'block' });
    const device = await realpath(prepared.path);
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(await isoLabel(prepared.path)).toBe('CDW_ISO_2');
    expect((await readFile(`/sys/block/${device.slice(5)}/ro`, 'utf8')).trim()).toBe('1');
    expect(await s.volumeActivation(pdiv)).toBe('active');
    expect(await s.volumeActivation(pdivOf(0))).toBe('inactive');
  });

  it('prepare is idempotent, also concurrently and from a restarted worker', async () => {
    const pdiv = pdivOf(1);
    const first = await s.prepareVolume(pdiv);
    const device = await readlink(first.path);
    await Promise.all([s.prepareVolume(pdiv), s.prepareVolume(pdiv), s.prepareVolume(pdiv)]);
    const restarted = adapter();
    expect(await restarted.volumeActivation(pdiv)).toBe('active');
    expect(await restarted.prepareVolume(pdiv)).toEqual(first);
    expect(await readlink(first.path)).toBe(device);
    expect(await mappingsOf(1)).toEqual([device]);
  });

  it('lists the active volumes it finds on the system', async () => {
    await s.prepareVolume(pdivOf(2));
    expect(await s.listActiveVolumes()).toEqual(
      expect.arrayContaining([pdivOf(1), pdivOf(2)]),
    );
    // A fresh instance knows no pool (LVM does not record it) but finds the same volumes.
    const found = await adapter().listActiveVolumes();
    expect(found.map((p) => p.volumeID).sort()).toEqual([pdivOf(1).volumeID, pdivOf(2).volumeID].sort());
    expect(await isoLabel((await s.prepareVolume(pdivOf(2))).path)).toBe('CDW_ISO_3');
  });

  it('teardown of an open device is in-use and leaves it active; afterwards it is done, twice', async () => {
    const pdiv = pdivOf(1);
    const { path } = await s.prepareVolume(pdiv);
    const device = await realpath(path);
    const holder = holdOpen(device);
    try {
      expect(await s.teardownVolume(pdiv)).toBe('in-use');
      expect(await s.volumeActivation(pdiv)).toBe('active');
      expect((await lstat(path)).isSymbolicLink()).toBe(true);
      expect(await mappingsOf(1)).toEqual([device]);
    } finally {
      await holder.release();
    }
    expect(await s.teardownVolume(pdiv)).toBe('done');
    expect(await s.volumeActivation(pdiv)).toBe('inactive');
    expect(await mappingsOf(1)).toEqual([]);
    await expect(lstat(path)).rejects.toThrow(/ENOENT/);
    expect(await s.teardownVolume(pdiv)).toBe('done');
    expect((await s.listActiveVolumes()).map((p) => p.volumeID)).not.toContain(pdiv.volumeID);
  });

  it('a link a killed worker left after the detach is removed when recovery asks for the activation', async () => {
    const pdiv = pdivOf(2);
    const { path } = await s.prepareVolume(pdiv);
    const device = await realpath(path);
    // the worker died between its detach and its unlink
    expect(await loopDetach(device)).toBe('detached');
    const restarted = adapter();
    expect((await lstat(path)).isSymbolicLink()).toBe(true);
    expect(await restarted.volumeActivation(pdiv)).toBe('inactive');
    await expect(lstat(path)).rejects.toThrow(/ENOENT/);
    expect(await mappingsOf(2)).toEqual([]);
  });

  it('missing LV, missing image tag and unknown domain are VOLUME_NOT_FOUND', async () => {
    expect(await codeOf(s.prepareVolume({ ...pdivOf(0), volumeID: randomUUID() }))).toBe('VOLUME_NOT_FOUND');
    expect(await codeOf(s.prepareVolume({ ...pdivOf(0), imageID: randomUUID() }))).toBe('VOLUME_NOT_FOUND');
    expect(await codeOf(s.prepareVolume({ ...pdivOf(0), domainID: randomUUID() }))).toBe('VOLUME_NOT_FOUND');
    expect(await mappingsOf(0)).toEqual([]);
    // Nothing to tear down is not a failure.
    expect(await s.teardownVolume({ ...pdivOf(0), domainID: randomUUID() })).toBe('done');
    expect(await s.teardownVolume({ ...pdivOf(0), volumeID: randomUUID() })).toBe('done');
    expect(await codeOf(s.prepareVolume({ ...pdivOf(0), volumeID: 'x; rm -rf /' }))).toBe('INVALID_COMMAND');
  });

  it('prepares a file-domain volume as its file; teardown does nothing', async () => {
    const v = file.volumes[0];
    if (v === undefined) throw new Error('no file volume');
    const pdiv = { poolID: POOL, domainID: file.domainID, imageID: v.imageID, volumeID: v.volumeID };
    expect(await s.prepareVolume(pdiv)).toEqual({ path: v.path, diskType: 'file' });
    expect(await s.volumeActivation(pdiv)).toBe('inactive');
    expect(await s.teardownVolume(pdiv)).toBe('done');
    expect(await codeOf(s.prepareVolume({ ...pdiv, volumeID: randomUUID() }))).toBe('VOLUME_NOT_FOUND');
  });

  it('legacy paths: inside the ISO dirs (symlinks resolved), else PATH_NOT_ALLOWED; missing is VOLUME_NOT_FOUND', async () => {
    const inside = join(isoDir, 'a.iso');
    const out = join(outside, 'b.iso');
    await writeFile(inside, 'iso');
    await writeFile(out, 'iso');
    await symlink(out, join(isoDir, 'escape.iso'));
    await symlink(inside, join(outside, 'in-via-link.iso'));

    expect(await s.prepareVolume({ path: inside })).toEqual({ path: inside, diskType: 'file' });
    expect(await s.prepareVolume({ path: join(outside, 'in-via-link.iso') })).toEqual({ path: join(outside, 'in-via-link.iso'), diskType: 'file' });
    expect(await codeOf(s.prepareVolume({ path: out }))).toBe('PATH_NOT_ALLOWED');
    expect(await codeOf(s.prepareVolume({ path: join(isoDir, 'escape.iso') }))).toBe('PATH_NOT_ALLOWED');
    expect(await codeOf(s.prepareVolume({ path: join(isoDir, 'missing.iso') }))).toBe('VOLUME_NOT_FOUND');
    expect(await codeOf(s.prepareVolume({ path: join(outside, 'missing.iso') }))).toBe('PATH_NOT_ALLOWED');
    expect(await s.teardownVolume({ path: inside })).toBe('done');

    // An allowed directory reached through a symlink is allowed as well.
    const linkedDir = join(root, 'iso-link');
    await symlink(isoDir, linkedDir);
    const viaLinkedDir = createStorage({ storageRoot: root, activation: 'loop', isoDirs: [linkedDir], lvmFilter: block.lvmFilter, logger: silentLogger() });
    expect(await viaLinkedDir.prepareVolume({ path: join(linkedDir, 'a.iso') })).toEqual({ path: join(linkedDir, 'a.iso'), diskType: 'file' });
  });
});
