import { randomUUID } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readlink, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isCdromError, type CdromError } from '../../src/domain/errors.js';
import type { Pdiv } from '../../src/domain/media.js';
import { silentLogger } from '../../src/infra/logging.js';
import { CommandFailure, createStorage, type CommandRunner, type RunOptions, type StorageOptions } from '../../src/infra/storage/index.js';
import { isDeactivationInUse } from '../../src/infra/storage/dm.activation.js';
import {
  IMAGE,
  LV,
  OTHER_IMAGE,
  OTHER_LV,
  PV,
  PVS_EMPTY,
  type PvsOptions,
  STDERR_FILESYSTEM_IN_USE,
  STDERR_IN_USE,
  STDERR_LV_NOT_FOUND,
  STDERR_NO_DM,
  STDERR_USED_BY_ANOTHER_DEVICE,
  STDERR_VG_NOT_FOUND,
  VG,
  lvsAll,
  lvsAttr,
  pvsSegments,
} from './storage.lvm-fixtures.js';
import { ImageReader, metadataText, pvImage } from './storage.mda-fixtures.js';

const exit5 = (stderr: string): CommandFailure => new CommandFailure('exit', 5, '', stderr, `lvm: ${stderr.trim()}`);

interface Call {
  readonly file: string;
  readonly args: readonly string[];
  readonly options: RunOptions | undefined;
}

/**
 * A small stateful LVM: knows which LVs are active and which are open, answers with
 * real LVM output, and can be told to fail the next command or hang.
 */
class FakeLvm {
  readonly calls: Call[] = [];
  /** The PV as O_DIRECT reads see it: its metadata area holds the VG's current seqno. */
  readonly disk = new ImageReader();
  private vgState: PvsOptions & { seqno: number } = { seqno: 7 };
  readonly active = new Set<string>();
  readonly open = new Set<string>();
  vgExists = true;
  inFlight = 0;
  maxInFlight = 0;
  private failures: CommandFailure[] = [];
  private hang = false;

  constructor() {
    this.writeMetadata();
  }

  /** A change of the VG (any host): new state, seqno bumped, as LVM commits it. */
  change(state: PvsOptions): void {
    this.vgState = { ...this.vgState, ...state, seqno: this.vgState.seqno + 1 };
    this.writeMetadata();
  }

  private writeMetadata(): void {
    this.disk.images.set(PV, pvImage({ text: metadataText(VG, this.vgState.seqno), textOffset: 512 + 1024 * (this.vgState.seqno % 4) }));
  }

  failNext(failure: CommandFailure): void {
    this.failures.push(failure);
  }

  hangNext(): void {
    this.hang = true;
  }

  commands(): string[] {
    return this.calls.map((c) => `${c.file} ${c.args.filter((a, i) => c.args[i - 1] !== '--config' && a !== '--config').join(' ')}`);
  }

  readonly runner: CommandRunner = async (file, args, options) => {
    this.calls.push({ file, args, options });
    this.inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, 2));
      if (this.hang) {
        this.hang = false;
        await new Promise((_, reject) =>
          options?.signal?.addEventListener('abort', () => reject(new CommandFailure('timeout', null, '', '', `${file} timed out`))),
        );
      }
      const failure = this.failures.shift();
      if (failure !== undefined) throw failure;
      return { stdout: this.answer(file, args), stderr: '' };
    } finally {
      this.inFlight -= 1;
    }
  };

  private attr(lv: string): string {
    if (!this.active.has(lv)) return '-wi-------';
    return this.open.has(lv) ? '-wi-ao----' : '-wi-a-----';
  }

  private answer(file: string, args: readonly string[]): string {
    const target = args[args.length - 1] ?? '';
    const lv = target.split('/')[1] ?? '';
    if (file === 'pvs') return this.vgExists && target === `vg_name=${VG}` ? pvsSegments(this.attr(LV), this.attr(OTHER_LV), this.vgState) : PVS_EMPTY;
    if (file === 'lvchange' && args.includes('y')) {
      this.active.add(lv);
      return '';
    }
    if (file === 'lvchange' && args.includes('n')) {
      if (this.open.has(lv)) throw exit5(`  Logical volume ${target} in use.\n`);
      this.active.delete(lv);
      return '';
    }
    if (file === 'lvs' && args.includes('lv_attr')) return lvsAttr(this.attr(lv));
    if (file === 'lvs') {
      return lvsAll([
        { vg: VG, lv: 'metadata', tags: '', attr: '-wi-a-----' },
        { vg: VG, lv: LV, tags: `IU_${IMAGE},MD_4`, attr: this.attr(LV) },
        { vg: VG, lv: OTHER_LV, tags: `IU_${OTHER_IMAGE},MD_5`, attr: this.attr(OTHER_LV) },
      ]);
    }
    throw new Error(`FakeLvm: unexpected ${file} ${args.join(' ')}`);
  }
}

async function codeOf(p: Promise<unknown>): Promise<CdromError> {
  try {
    await p;
  } catch (err) {
    if (isCdromError(err)) return err;
    throw err;
  }
  throw new Error('expected a CdromError');
}

const POOL = '13345997-b94f-42dd-b8ef-a1392f65cebf';
const media: Pdiv = { poolID: POOL, domainID: VG, imageID: IMAGE, volumeID: LV };
const other: Pdiv = { poolID: POOL, domainID: VG, imageID: OTHER_IMAGE, volumeID: OTHER_LV };

describe('dm activation: LVM output classification', () => {
  it.each([
    ['in use', STDERR_IN_USE],
    ['used by another device', STDERR_USED_BY_ANOTHER_DEVICE],
    ['filesystem in use', STDERR_FILESYSTEM_IN_USE],
  ])('exit 5 with "%s" is in-use', (_, stderr) => {
    expect(isDeactivationInUse(exit5(stderr))).toBe(true);
  });

  it.each([
    ['no device-mapper', exit5(STDERR_NO_DM)],
    ['LV not found', exit5(STDERR_LV_NOT_FOUND)],
    ['VG not found', exit5(STDERR_VG_NOT_FOUND)],
    ['in-use text with another exit code', new CommandFailure('exit', 3, '', STDERR_IN_USE, 'x')],
    ['a timeout', new CommandFailure('timeout', null, '', '', 'x')],
    ['not a command failure', new Error(STDERR_IN_USE)],
  ])('%s is not in-use', (_, err) => {
    expect(isDeactivationInUse(err)).toBe(false);
  });
});

describe('dm activation through the storage adapter (fake LVM runner)', () => {
  let root: string;
  let lvm: FakeLvm;
  const storage = (extra: Partial<StorageOptions> = {}) =>
    createStorage({ storageRoot: root, activation: 'dm', logger: silentLogger(), runner: lvm.runner, directReader: lvm.disk.read, ...extra });
  const link = (p: Pdiv) => join(root, 'mnt/blockSD', p.domainID, 'images', p.imageID, p.volumeID);

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'cdw-dm-'));
    lvm = new FakeLvm();
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('prepare runs lvchange -ay with the filter, no retries and the fd-warning switch, and links /dev/<vg>/<lv>', async () => {
    const s = storage({ lvmFilter: ['a|^/dev/mapper/36001405a1b2c3d4e5f6$|', 'r|.*|'] });
    expect(await s.prepareVolume(media)).toEqual({ path: link(media), diskType: 'block' });
    expect(await readlink(link(media))).toBe(`/dev/${VG}/${LV}`);
    expect(lvm.commands()).toEqual([
      `pvs --segments --units b --nosuffix --reportformat json -o pv_name,pe_start,pvseg_start,pvseg_size,vg_extent_size,vg_name,lv_name,lv_tags,lv_attr,vg_seqno,vg_uuid,pv_mda_used_count -S vg_name=${VG}`,
      `lvchange --activate y ${VG}/${LV}`,
    ]);
    const call = lvm.calls[1];
    expect(call?.args.slice(0, 2)).toEqual([
      '--config',
      'devices { filter = [ "a|^/dev/mapper/36001405a1b2c3d4e5f6$|", "r|.*|" ] } activation { retry_deactivation = 0 }',
    ]);
    expect(call?.options?.env).toEqual({ LVM_SUPPRESS_FD_WARNINGS: '1' });
  });

  it('without a configured filter the config carries only the activation section', async () => {
    await storage().prepareVolume(media);
    expect(lvm.calls[0]?.args.slice(0, 2)).toEqual(['--config', 'activation { retry_deactivation = 0 }']);
  });

  it('caches the LV lookup: a second prepare costs only the lvchange, a teardown only the lvchange', async () => {
    const s = storage();
    await s.prepareVolume(media);
    await s.prepareVolume(media);
    await s.prepareVolume(other);
    await s.teardownVolume(media);
    expect(lvm.commands().filter((c) => c.startsWith('pvs'))).toHaveLength(1);
  });

  const pvsCount = (): number => lvm.commands().filter((c) => c.startsWith('pvs')).length;

  it.each<[string, PvsOptions]>([
    ['its IU_ tag removed', { lvTags: 'MD_4' }],
    ['removed', { lvName: randomUUID() }],
    ['renamed', { lvName: `${LV}-renamed` }],
  ])('an LV cached and then %s is VOLUME_NOT_FOUND (the VG seqno changed: one pvs)', async (_, change) => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.change(change);
    expect((await codeOf(s.prepareVolume(media))).code).toBe('VOLUME_NOT_FOUND');
    expect(pvsCount()).toBe(2);
    // Changed back (seqno bumped again): found again.
    lvm.change({ lvTags: `IU_${IMAGE}`, lvName: LV });
    expect(await s.prepareVolume(media)).toEqual({ path: link(media), diskType: 'block' });
    expect(pvsCount()).toBe(3);
  });

  it('an unreadable metadata area, or none in use, means asking LVM every time', async () => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.disk.images.delete(PV);
    await s.prepareVolume(media);
    await s.prepareVolume(media);
    expect(pvsCount()).toBe(3);
    // Every PV --metadatacopies 0 (or ignored): nothing to watch, even if a PV could be read.
    lvm.change({ mdaUsed: 0 });
    const t = storage();
    await t.prepareVolume(media);
    await t.prepareVolume(media);
    expect(pvsCount()).toBe(5);
  });

  it('another VG of the same name (other VG id) on the PV is a change', async () => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.disk.images.set(PV, pvImage({ text: metadataText(VG, 7, 'aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa') }));
    await s.prepareVolume(media);
    expect(pvsCount()).toBe(2);
  });

  it('an LVM lookup that fails is PREPARE_FAILED, not retried', async () => {
    lvm.failNext(exit5(STDERR_NO_DM));
    const err = await codeOf(storage().prepareVolume(media));
    expect(err.code).toBe('PREPARE_FAILED');
    expect(err.retryable).toBe(false);
  });

  it('activation refused by LVM is PREPARE_FAILED and leaves no link', async () => {
    const failing: CommandRunner = async (file, args, options) => {
      if (file === 'lvchange') throw exit5(STDERR_NO_DM);
      return lvm.runner(file, args, options);
    };
    const err = await codeOf(storage({ runner: failing }).prepareVolume(media));
    expect(err.code).toBe('PREPARE_FAILED');
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/device-mapper/);
    await expect(lstat(link(media))).rejects.toThrow(/ENOENT/);
  });

  it('teardown: in use → in-use, volume and link stay; afterwards done, link removed; again done', async () => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.open.add(LV);
    expect(await s.teardownVolume(media)).toBe('in-use');
    expect(await s.volumeActivation(media)).toBe('active');
    expect(await readlink(link(media))).toBe(`/dev/${VG}/${LV}`);
    lvm.open.delete(LV);
    expect(await s.teardownVolume(media)).toBe('done');
    expect(await s.volumeActivation(media)).toBe('inactive');
    await expect(lstat(link(media))).rejects.toThrow(/ENOENT/);
    expect(await s.teardownVolume(media)).toBe('done');
  });

  it.each([STDERR_USED_BY_ANOTHER_DEVICE, STDERR_FILESYSTEM_IN_USE])('teardown refused with %j is in-use', async (stderr) => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.failNext(exit5(stderr));
    expect(await s.teardownVolume(media)).toBe('in-use');
  });

  it('any other deactivation failure is TEARDOWN_FAILED and keeps the link', async () => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.failNext(exit5(STDERR_NO_DM));
    const err = await codeOf(s.teardownVolume(media));
    expect(err.code).toBe('TEARDOWN_FAILED');
    expect((await lstat(link(media))).isSymbolicLink()).toBe(true);
  });

  it('a hung LVM command is a retryable TIMEOUT and its process is killed', async () => {
    const s = storage({ prepareTimeoutMs: 100, teardownTimeoutMs: 100 });
    await s.prepareVolume(media);
    lvm.hangNext();
    const err = await codeOf(s.teardownVolume(media));
    expect(err.code).toBe('TIMEOUT');
    expect(err.retryable).toBe(true);
    expect(lvm.calls.at(-1)?.options?.signal?.aborted).toBe(true);
    // A command the runner reports as timed out is classified the same way.
    lvm.failNext(new CommandFailure('timeout', null, '', '', 'lvchange timed out'));
    expect((await codeOf(s.teardownVolume(media))).code).toBe('TIMEOUT');
  });

  it('operations on one volume never overlap; other volumes run alongside', async () => {
    const s = storage();
    await Promise.all([s.prepareVolume(media), s.teardownVolume(media), s.prepareVolume(media), s.volumeActivation(media)]);
    expect(lvm.maxInFlight).toBe(1);
    await Promise.all([s.prepareVolume(media), s.prepareVolume(other)]);
    expect(lvm.maxInFlight).toBe(2);
  });

  it('unknown domain, missing LV, missing tag: VOLUME_NOT_FOUND without activating anything', async () => {
    const s = storage();
    expect((await codeOf(s.prepareVolume({ ...media, domainID: randomUUID() }))).code).toBe('VOLUME_NOT_FOUND');
    expect((await codeOf(s.prepareVolume({ ...media, volumeID: randomUUID() }))).code).toBe('VOLUME_NOT_FOUND');
    expect((await codeOf(s.prepareVolume({ ...media, imageID: OTHER_IMAGE }))).code).toBe('VOLUME_NOT_FOUND');
    expect(lvm.commands().some((c) => c.startsWith('lvchange'))).toBe(false);
  });

  it('ids that are not UUIDs never reach a command line', async () => {
    const err = await codeOf(storage().prepareVolume({ ...media, volumeID: `${LV} --select all` }));
    expect(err.code).toBe('INVALID_COMMAND');
    expect(lvm.calls).toHaveLength(0);
  });

  it('a domain directory of a file domain is found when there is no VG', async () => {
    lvm.vgExists = false;
    const dir = join(root, 'mnt', 'nfs:_export', VG, 'images', IMAGE);
    await mkdir(dir, { recursive: true });
    await symlink('/dev/null', join(dir, 'not-a-file'));
    const err = await codeOf(storage().prepareVolume(media));
    expect(err.code).toBe('VOLUME_NOT_FOUND');
    expect(err.message).toMatch(/file domain/);
  });

  it('listActiveVolumes: active LVs with an IU_ tag whose link we made', async () => {
    const s = storage();
    await s.prepareVolume(media);
    lvm.active.add(OTHER_LV); // activated by someone else: no link of ours
    expect(await s.listActiveVolumes()).toEqual([media]);
    // A restarted worker does not know the pool; vdsm's pool link tells it.
    await mkdir(join(root, POOL), { recursive: true });
    await symlink(join(root, 'mnt/blockSD', VG), join(root, POOL, VG));
    expect(await storage().listActiveVolumes()).toEqual([media]);
  });
});
