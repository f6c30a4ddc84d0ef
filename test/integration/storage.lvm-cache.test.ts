import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Pdiv } from '../../src/domain/media.js';
import type { StoragePort } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { execFileRunner, type CommandRunner } from '../../src/infra/storage/command.runner.js';
import { readDirect } from '../../src/infra/storage/direct-read.native.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { readVgMetadataHead } from '../../src/infra/storage/lvm.mda.js';
import { type BlockTestDomain, canUseLoopLvm, codeOf, useTestStorage } from '../support/storage.js';

const run = promisify(execFile);
const LVM_COMMANDS = new Set(['pvs', 'vgs', 'lvs', 'lvchange', 'vgchange', 'lvm']);

/**
 * The LV geometry cache against real LVM metadata on a loop-backed PV: every change LVM
 * makes to the VG (here with LVM's own commands, as another host would) is seen on the
 * next lookup, and an unchanged VG costs no LVM process at all.
 */
describe.skipIf(!canUseLoopLvm())('LV geometry cache checked against the VG metadata seqno (real LVM)', () => {
  const storage = useTestStorage();
  let block: BlockTestDomain;
  let s: StoragePort;
  const spawned: string[] = [];
  const counting: CommandRunner = (file, args, options) => {
    spawned.push(file);
    return execFileRunner(file, args, options);
  };
  const lvmSpawned = (): number => spawned.filter((f) => LVM_COMMANDS.has(f)).length;

  const pdivOf = (i: number): Pdiv => {
    const v = block.volumes[i];
    if (v === undefined) throw new Error(`no volume ${i}`);
    return { poolID: randomUUID(), domainID: block.vg, imageID: v.imageID, volumeID: v.volumeID };
  };

  /** An LVM command of the test's own, limited to the test's PV, without device-mapper. */
  const lvm = async (command: string, ...args: string[]): Promise<void> => {
    const config = `devices { filter = [ "a|^${block.pv}$|", "r|.*|" ] } global { activation = 0 }`;
    await run(command, ['--config', config, ...args], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
  };
  const seqno = async (): Promise<number> => (await readVgMetadataHead(block.pv, readDirect)).seqno;

  beforeAll(async () => {
    block = await storage.blockDomain(3);
    s = createStorage({ storageRoot: storage.dir(), activation: 'loop', lvmFilter: block.lvmFilter, logger: silentLogger(), runner: counting });
  });

  it('reads the VG name, id and seqno LVM reports from the PV metadata area', async () => {
    const head = await readVgMetadataHead(block.pv, readDirect);
    const { stdout } = await run('vgs', ['--config', `devices { filter = [ "a|^${block.pv}$|", "r|.*|" ] }`, '--noheadings', '-o', 'vg_uuid,vg_seqno', block.vg], {
      env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' },
    });
    const [uuid, n] = stdout.trim().split(/\s+/);
    expect(head).toEqual({ vgName: block.vg, vgId: uuid, seqno: Number(n) });
  });

  it('a second prepare, the activation query and teardown of an unchanged VG spawn no LVM process', async () => {
    const a = pdivOf(0);
    await s.prepareVolume(a);
    expect(lvmSpawned()).toBe(1);
    spawned.length = 0;
    const again = await s.prepareVolume(a);
    expect(await s.volumeActivation(a)).toBe('active');
    expect(await s.prepareVolume(pdivOf(1))).toMatchObject({ diskType: 'block' });
    expect(await s.teardownVolume(pdivOf(1))).toBe('done');
    expect(lvmSpawned()).toBe(0);
    expect(await readlink(again.path)).toMatch(/^\/dev\/loop\d+$/);
  });

  it('the IU_ tag removed after caching: VOLUME_NOT_FOUND; re-added: prepared again', async () => {
    const a = pdivOf(0);
    const { path } = await s.prepareVolume(a);
    const before = await seqno();
    await lvm('lvchange', '--deltag', `IU_${a.imageID}`, `${a.domainID}/${a.volumeID}`);
    expect(await seqno()).toBeGreaterThan(before);
    spawned.length = 0;
    expect(await codeOf(s.prepareVolume(a))).toBe('VOLUME_NOT_FOUND');
    expect(lvmSpawned()).toBe(1);
    await lvm('lvchange', '--addtag', `IU_${a.imageID}`, `${a.domainID}/${a.volumeID}`);
    expect(await s.prepareVolume(a)).toEqual({ path, diskType: 'block' });
    spawned.length = 0;
    await s.prepareVolume(a);
    expect(lvmSpawned()).toBe(0);
  });

  it('an LV renamed after caching: VOLUME_NOT_FOUND under its old name, found under the new one', async () => {
    const a = pdivOf(0);
    await s.teardownVolume(a);
    await s.prepareVolume(a);
    const renamed = randomUUID();
    await lvm('lvrename', a.domainID, a.volumeID, renamed);
    try {
      expect(await codeOf(s.prepareVolume(a))).toBe('VOLUME_NOT_FOUND');
      expect(await s.prepareVolume({ ...a, volumeID: renamed })).toMatchObject({ diskType: 'block' });
      expect(await s.teardownVolume({ ...a, volumeID: renamed })).toBe('done');
    } finally {
      await lvm('lvrename', a.domainID, renamed, a.volumeID);
    }
    expect(await s.prepareVolume(a)).toMatchObject({ diskType: 'block' });
  });

  it('an LV removed after caching: VOLUME_NOT_FOUND; its teardown is done', async () => {
    const c = pdivOf(2);
    await s.prepareVolume(c);
    expect(await s.teardownVolume(c)).toBe('done');
    await lvm('lvremove', '-f', `${c.domainID}/${c.volumeID}`);
    expect(await codeOf(s.prepareVolume(c))).toBe('VOLUME_NOT_FOUND');
    expect(await s.teardownVolume(c)).toBe('done');
    // The other LVs of the VG are unaffected.
    expect(await s.prepareVolume(pdivOf(0))).toMatchObject({ diskType: 'block' });
  });

  it('the direct read fails like a Node fs call: code, errno, syscall, path', async () => {
    const missing = `/dev/cdw-no-such-${randomUUID()}`;
    await expect(readDirect(missing, [{ offset: 0, length: 512 }])).rejects.toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open', path: missing });
    // A read past the end of the device is short, not an error.
    const [tail] = await readDirect(block.pv, [{ offset: 2 ** 40, length: 512 }]);
    expect(tail?.length).toBe(0);
  });
});
