import { describe, expect, it } from 'vitest';
import { KeyedMutex } from '../../src/domain/keyed-mutex.js';
import { devNoOf } from '../../src/infra/storage/loop-devices.js';
import { lvmConfig, parsePvSegments, validateLvmFilter, volumesOf, type PvSegment } from '../../src/infra/storage/lvm.command.js';
import { IMAGE, LV, OTHER_LV, PVS_EMPTY, VG, VG_UUID, pvsSegments } from './storage.lvm-fixtures.js';

describe('LVM report parsing and loop geometry', () => {
  it('places each LV on its PV in bytes: pe_start + first extent * extent size', () => {
    const volumes = volumesOf(parsePvSegments(pvsSegments()));
    expect(volumes.map((v) => v.lv)).toEqual(['metadata', LV, OTHER_LV]);
    const iso = volumes.find((v) => v.lv === LV);
    expect(iso).toMatchObject({
      vg: VG,
      pv: '/dev/mapper/36001405a1b2c3d4e5f6',
      offset: 135266304 + 8 * 134217728,
      size: 3 * 134217728,
      contiguous: true,
    });
    expect(iso?.tags).toContain(`IU_${IMAGE}`);
  });

  it('an empty report (no such VG) has no volumes', () => {
    expect(parsePvSegments(PVS_EMPTY)).toEqual([]);
  });

  const seg = (over: Partial<PvSegment>): PvSegment => ({
    pvName: '/dev/loop3', peStart: 1048576, segStart: 0, segSize: 1, extentSize: 4194304,
    vgName: VG, lvName: LV, lvTags: [], lvAttr: '', vgSeqno: 1, vgUuid: VG_UUID, pvMdaUsedCount: 1, ...over,
  });

  it('adjacent segments merge; a gap or a second PV makes the LV unmappable by one loop device', () => {
    expect(volumesOf([seg({ segStart: 4, segSize: 2 }), seg({ segStart: 2, segSize: 2 })])[0]).toMatchObject({
      offset: 1048576 + 2 * 4194304,
      size: 4 * 4194304,
      contiguous: true,
    });
    expect(volumesOf([seg({ segStart: 0 }), seg({ segStart: 5 })])[0]?.contiguous).toBe(false);
    expect(volumesOf([seg({ segStart: 0 }), seg({ segStart: 1, pvName: '/dev/loop4' })])[0]?.contiguous).toBe(false);
  });

  it('builds the --config string: filter when configured, never retrying deactivation, no dm in loop mode', () => {
    expect(lvmConfig(['a|^/dev/sdb$|', 'r|.*|'], false)).toBe(
      'devices { filter = [ "a|^/dev/sdb$|", "r|.*|" ] } activation { retry_deactivation = 0 }',
    );
    expect(lvmConfig(undefined, true)).toBe('activation { retry_deactivation = 0 } global { activation = 0 }');
  });

  it('refuses filter entries that could break out of the config string', () => {
    expect(() => validateLvmFilter(['a|^/dev/sdb$|'])).not.toThrow();
    for (const bad of ['a|x" ] } global { activation = 1 } devices { filter = [ "|', 'x|.*|', 'a|unterminated', 'a|x\n|']) {
      expect(() => validateLvmFilter([bad])).toThrow(/invalid LVM filter/);
    }
  });

  it('decodes device numbers as sysfs prints them', () => {
    expect(devNoOf(1792)).toBe('7:0');
    // loop300: minor above 255 uses the high minor bits
    expect(devNoOf((300 & 0xff) | (7 << 8) | ((300 & ~0xff) << 12))).toBe('7:300');
    expect(devNoOf((259 << 8) | 5)).toBe('259:5');
  });
});

describe('KeyedMutex', () => {
  it('runs one operation per key at a time, in arrival order, surviving failures', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    const op = (name: string, ms: number, fail = false) => async () => {
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`end ${name}`);
      if (fail) throw new Error(name);
      return name;
    };
    const results = await Promise.allSettled([m.run('a', op('a1', 20, true)), m.run('a', op('a2', 1)), m.run('b', op('b1', 5))]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled']);
    expect(log.indexOf('start a2')).toBeGreaterThan(log.indexOf('end a1'));
    expect(log.indexOf('start b1')).toBeLessThan(log.indexOf('end a1'));
    await new Promise((r) => setTimeout(r, 0));
    expect(m.size).toBe(0);
  });
});
