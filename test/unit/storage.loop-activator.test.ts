import { describe, expect, it } from 'vitest';
import { isCdromError } from '../../src/domain/errors.js';
import { silentLogger } from '../../src/infra/logging.js';
import type { LvmCli, LvVolume } from '../../src/infra/storage/lvm.command.js';
import type { LoopMapping } from '../../src/infra/storage/loop-devices.js';
import { LoopActivator, type LoopControl, type LoopTable } from '../../src/infra/storage/loop.activation.js';
import type { LoopDetachOutcome } from '../../src/infra/storage/loop.native.js';

const MiB = 2 ** 20;

function volume(lv: string, offset: number, pv = '/dev/fake-pv0'): LvVolume {
  return { vg: 'vg0', lv, tags: [], attr: '-wi-------', pv, offset, size: 4 * MiB, contiguous: true };
}

interface Device {
  mapping: LoopMapping;
  openers: number;
}

/**
 * The kernel's loop devices as the activator sees them: attach/detach (LOOP_CONFIGURE,
 * LOOP_CLR_FD semantics: an open device only gets autoclear), sysfs reads, openers.
 */
class FakeLoops implements LoopControl, LoopTable {
  readonly devices = new Map<string, Device>();
  readonly calls = { attach: 0, detach: [] as string[], list: 0, read: 0, user: 0 };
  /** Called between the opener check and the detach: someone opening it right then. */
  beforeDetach: ((device: string) => void) | null = null;
  private next = 0;
  private failures: Error[] = [];

  failNextAttach(err: Error): void {
    this.failures.push(err);
  }

  /** A mapping made by someone else (another process, another worker). */
  add(backingFile: string, offset: number, sizeLimit: number, autoclear = false): string {
    const name = `loop${this.next++}`;
    this.devices.set(`/dev/${name}`, { mapping: { device: `/dev/${name}`, name, devNo: `7:${this.next - 1}`, backingFile, offset, sizeLimit, autoclear }, openers: 0 });
    return `/dev/${name}`;
  }

  open(device: string): void {
    const d = this.devices.get(device);
    if (d === undefined) throw new Error(`no ${device}`);
    d.openers++;
  }

  close(device: string): void {
    const d = this.devices.get(device);
    if (d === undefined) return;
    d.openers--;
    if (d.openers === 0 && d.mapping.autoclear) this.devices.delete(device);
  }

  attach(backingFile: string, offset: number, sizeLimit: number): Promise<string> {
    this.calls.attach++;
    const failure = this.failures.shift();
    if (failure !== undefined) return Promise.reject(failure);
    return Promise.resolve(this.add(backingFile, offset, sizeLimit));
  }

  detach(device: string): Promise<LoopDetachOutcome> {
    this.calls.detach.push(device);
    this.beforeDetach?.(device);
    const d = this.devices.get(device);
    if (d === undefined) return Promise.resolve('not-attached');
    if (d.openers > 0) {
      d.mapping = { ...d.mapping, autoclear: true };
      return Promise.resolve('autoclear');
    }
    this.devices.delete(device);
    return Promise.resolve('detached');
  }

  list(): Promise<LoopMapping[]> {
    this.calls.list++;
    return Promise.resolve([...this.devices.values()].map((d) => d.mapping));
  }

  read(device: string): Promise<LoopMapping | null> {
    this.calls.read++;
    return Promise.resolve(this.devices.get(device)?.mapping ?? null);
  }

  async user(mapping: LoopMapping, all: () => Promise<readonly LoopMapping[]>): Promise<string | null> {
    this.calls.user++;
    if ((await all()).some((m) => m.backingFile === mapping.device)) return 'another loop device is backed by it';
    const d = this.devices.get(mapping.device);
    return d !== undefined && d.openers > 0 ? 'open by pid 4242' : null;
  }

  reset(): void {
    this.calls.attach = 0;
    this.calls.detach = [];
    this.calls.list = 0;
    this.calls.read = 0;
    this.calls.user = 0;
  }
}

function activator(loops: FakeLoops): LoopActivator {
  return new LoopActivator({ lvm: {} as unknown as LvmCli, logger: silentLogger(), loop: loops, table: loops });
}

const signal = (): AbortSignal => new AbortController().signal;

describe('LoopActivator over a fake loop subsystem', () => {
  it('maps once; later calls verify just the remembered device instead of listing every one', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    expect(loops.calls.attach).toBe(1);
    expect(loops.devices.get(device)?.mapping).toMatchObject({ backingFile: v.pv, offset: MiB, sizeLimit: 4 * MiB, autoclear: false });
    loops.reset();
    expect(await a.activate(v, signal())).toBe(device);
    expect(await a.activeDevice(v)).toBe(device);
    expect(loops.calls).toMatchObject({ attach: 0, list: 0, read: 2 });
  });

  it('a restarted worker (a fresh activator) finds the mapping on the system and reuses it', async () => {
    const loops = new FakeLoops();
    const v = volume('lv1', MiB);
    const device = await activator(loops).activate(v, signal());
    const restarted = activator(loops);
    expect(await restarted.activeDevice(v)).toBe(device);
    expect(await restarted.activate(v, signal())).toBe(device);
    expect(loops.calls.attach).toBe(1);
    expect(await restarted.deactivate(v, signal())).toBe('done');
    expect(loops.devices.size).toBe(0);
  });

  it("never reuses or detaches others' loop devices: another backing file, another range, or autoclear", async () => {
    const loops = new FakeLoops();
    const v = volume('lv1', MiB);
    const others = [loops.add('/other/file.img', MiB, 4 * MiB), loops.add(v.pv, 2 * MiB, 4 * MiB), loops.add(v.pv, MiB, 8 * MiB)];
    const a = activator(loops);
    expect(await a.activeDevice(v)).toBeNull();
    const device = await a.activate(v, signal());
    expect(others).not.toContain(device);
    expect(await a.deactivate(v, signal())).toBe('done');
    expect(loops.calls.detach).toEqual([device]);
    expect([...loops.devices.keys()]).toEqual(others);
  });

  it('a remembered device that is no longer the LV\'s mapping falls back to the full list', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    // Someone else detached it and the kernel handed the number to another mapping.
    loops.devices.delete(device);
    loops.devices.set(device, { mapping: { device, name: device.slice(5), devNo: '7:0', backingFile: '/other.img', offset: MiB, sizeLimit: 4 * MiB, autoclear: false }, openers: 0 });
    loops.reset();
    expect(await a.activeDevice(v)).toBeNull();
    expect(loops.calls.list).toBe(1);
    const again = await a.activate(v, signal());
    expect(again).not.toBe(device);
    expect(await a.deactivate(v, signal())).toBe('done');
    expect(loops.devices.get(device)?.mapping.backingFile).toBe('/other.img');
  });

  it('teardown with nobody holding it: one opener check, no waiting, one detach, no re-list', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    loops.reset();
    const t0 = performance.now();
    expect(await a.deactivate(v, signal())).toBe('done');
    expect(performance.now() - t0).toBeLessThan(40);
    expect(loops.calls.user).toBe(1);
    expect(loops.calls.detach).toEqual([device]);
    // The one list is the opener check's (a loop device backed by this one); none after the detach.
    expect(loops.calls.list).toBe(1);
    expect(await a.activeDevice(v)).toBeNull();
    expect(await a.deactivate(v, signal())).toBe('done');
    expect(loops.calls.detach).toEqual([device]);
  });

  it('a holder that stays: in-use after the rechecks, nothing detached, still active', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    loops.open(device);
    loops.reset();
    expect(await a.deactivate(v, signal())).toBe('in-use');
    expect(loops.calls.user).toBe(3);
    expect(loops.calls.detach).toEqual([]);
    expect(await a.activeDevice(v)).toBe(device);
    loops.close(device);
    expect(await a.deactivate(v, signal())).toBe('done');
  });

  it('a transient opener (a scanner) gone at the first recheck: done', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    loops.open(device);
    setTimeout(() => loops.close(device), 10);
    expect(await a.deactivate(v, signal())).toBe('done');
    expect(loops.devices.has(device)).toBe(false);
  });

  it('opened between the check and the detach: the kernel only sets autoclear, so in-use', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    loops.beforeDetach = (d) => loops.open(d);
    expect(await a.deactivate(v, signal())).toBe('in-use');
    expect(loops.devices.get(device)?.mapping.autoclear).toBe(true);
    // An autoclear mapping is on its way out: not active, and the next prepare maps anew.
    expect(await a.activeDevice(v)).toBeNull();
    loops.beforeDetach = null;
    const fresh = await a.activate(v, signal());
    expect(fresh).not.toBe(device);
    loops.close(device);
    expect(loops.devices.has(device)).toBe(false);
    expect(await a.deactivate(v, signal())).toBe('done');
  });

  it('a loop device backed by ours counts as a user', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    const device = await a.activate(v, signal());
    const stacked = loops.add(device, 0, 0);
    expect(await a.deactivate(v, signal())).toBe('in-use');
    loops.devices.delete(stacked);
    expect(await a.deactivate(v, signal())).toBe('done');
  });

  it('an attach failure (errno-coded) is PREPARE_FAILED; the next attempt maps', async () => {
    const loops = new FakeLoops();
    const a = activator(loops);
    const v = volume('lv1', MiB);
    loops.failNextAttach(Object.assign(new Error('EBUSY: Device or resource busy, ioctl LOOP_CONFIGURE'), { code: 'EBUSY', errno: -16, syscall: 'ioctl LOOP_CONFIGURE' }));
    const err = await a.activate(v, signal()).catch((e: unknown) => e);
    expect(isCdromError(err) && err.code).toBe('PREPARE_FAILED');
    expect(String((err as Error).message)).toMatch(/EBUSY/);
    expect(await a.activate(v, signal())).toMatch(/^\/dev\/loop\d+$/);
  });

  it('a non-contiguous LV is refused before anything is mapped', async () => {
    const loops = new FakeLoops();
    const err = await activator(loops).activate({ ...volume('lv1', MiB), contiguous: false }, signal()).catch((e: unknown) => e);
    expect(isCdromError(err) && err.code).toBe('PREPARE_FAILED');
    expect(loops.calls.attach).toBe(0);
  });
});
