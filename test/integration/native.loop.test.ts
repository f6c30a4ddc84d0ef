import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listLoopMappings, readLoopMapping } from '../../src/infra/storage/loop-devices.js';
import { blockHolders, loopAttach, loopDetach, type LoopSystemError } from '../../src/infra/storage/loop.native.js';
import { processesHolding } from '../../src/infra/storage/openers.js';
import { canUseLoopLvm, holdOpen } from '../support/storage.js';

const MiB = 2 ** 20;

async function sys(device: string, attr: string): Promise<string | null> {
  try {
    return (await readFile(`/sys/block/${device.slice(5)}/${attr}`, 'utf8')).trim();
  } catch {
    return null;
  }
}

async function rejection(p: Promise<unknown>): Promise<LoopSystemError> {
  try {
    await p;
  } catch (err) {
    return err as LoopSystemError;
  }
  throw new Error('expected a rejection');
}

describe.skipIf(!canUseLoopLvm())('native loop ioctls and block holder scan (scratch file, real loop devices)', () => {
  let dir: string;
  let backing: string;
  // Every device this file attached; whatever a failed test left is detached in afterAll.
  const attached = new Set<string>();
  const attach = async (offset: number, size: number): Promise<string> => {
    const device = await loopAttach(backing, offset, size);
    attached.add(device);
    return device;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cdw-loop-'));
    backing = join(dir, 'backing.img');
    await writeFile(backing, Buffer.alloc(8 * MiB, 0x5a));
  });

  afterAll(async () => {
    for (const device of attached) {
      const m = await readLoopMapping(device);
      if (m !== null && m.backingFile === backing) await loopDetach(device);
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('attaches read-only with offset and sizelimit, not autoclear; detaches and the mapping is gone', async () => {
    const device = await attach(MiB, 4 * MiB);
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(await sys(device, 'loop/backing_file')).toBe(backing);
    expect(await sys(device, 'loop/offset')).toBe(String(MiB));
    expect(await sys(device, 'loop/sizelimit')).toBe(String(4 * MiB));
    expect(await sys(device, 'loop/autoclear')).toBe('0');
    expect(await sys(device, 'ro')).toBe('1');
    expect(await sys(device, 'size')).toBe(String((4 * MiB) / 512));
    expect(await loopDetach(device)).toBe('detached');
    expect(await sys(device, 'loop/backing_file')).toBeNull();
    expect(await readLoopMapping(device)).toBeNull();
    // Already detached is not a failure.
    expect(await loopDetach(device)).toBe('not-attached');
  });

  it('lists bound loop devices as sysfs shows them, the same as one device read on its own', async () => {
    const device = await attach(2 * MiB, 3 * MiB);
    const listed = (await listLoopMappings()).find((m) => m.device === device);
    expect(listed).toEqual({ device, name: device.slice(5), devNo: await sys(device, 'dev'), backingFile: backing, offset: 2 * MiB, sizeLimit: 3 * MiB, autoclear: false });
    expect(await readLoopMapping(device)).toEqual(listed);
    expect(await loopDetach(device)).toBe('detached');
    expect((await listLoopMappings()).some((m) => m.device === device)).toBe(false);
  });

  it('detaching a device someone holds open only sets autoclear; it goes on their last close', async () => {
    const device = await attach(0, 2 * MiB);
    const holder = holdOpen(device);
    try {
      expect(await loopDetach(device)).toBe('autoclear');
      expect(await sys(device, 'loop/autoclear')).toBe('1');
      expect(await sys(device, 'loop/backing_file')).toBe(backing);
    } finally {
      await holder.release();
    }
    expect(await sys(device, 'loop/backing_file')).toBeNull();
  });

  it('concurrent attaches each get their own device (EBUSY on a device taken meanwhile is retried)', async () => {
    const devices = await Promise.all(Array.from({ length: 6 }, (_, i) => attach(i * MiB, MiB)));
    expect(new Set(devices).size).toBe(6);
    for (const [i, device] of devices.entries()) expect(await sys(device, 'loop/offset')).toBe(String(i * MiB));
    expect(await Promise.all(devices.map((d) => loopDetach(d)))).toEqual(devices.map(() => 'detached'));
  });

  it('rejects like a Node SystemError: errno name as code, negative errno, syscall, path', async () => {
    const missing = await rejection(loopAttach(join(dir, 'missing.img'), 0, MiB));
    expect(missing).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open', path: join(dir, 'missing.img') });
    expect(missing).toBeInstanceOf(Error);
    const notLoop = await rejection(loopDetach('/dev/null'));
    expect(notLoop).toMatchObject({ code: 'ENOTBLK', syscall: 'fstat', path: '/dev/null' });
    // Past the end of the backing file the kernel maps less than asked: refused, nothing left behind.
    const short = await rejection(loopAttach(backing, 6 * MiB, 4 * MiB));
    expect(short.code).toBe('EIO');
    expect(short.message).toMatch(/detached again/);
    // Argument errors are programming errors: thrown at once, nothing started.
    expect(() => loopAttach(backing, -1, MiB)).toThrow(RangeError);
  });

  it('finds the process of this test holding the device open, by pid; nobody once it let go', async () => {
    const device = await attach(0, MiB);
    const devNo = await sys(device, 'dev');
    if (devNo === null) throw new Error('no dev');
    const [major, minor] = devNo.split(':').map(Number) as [number, number];
    const none = await blockHolders(major, minor, false);
    expect(none.pids).toEqual([]);
    expect(none.fds).toBeGreaterThan(0);
    expect(none.processes).toBeGreaterThan(1);

    const holder = holdOpen(device);
    const fd = openSync(device, 'r');
    try {
      const all = await processesHolding(devNo);
      expect(all).toEqual(expect.arrayContaining([holder.pid, process.pid]));
      const first = await processesHolding(devNo, { firstOnly: true });
      expect(first).toHaveLength(1);
      expect([holder.pid, process.pid]).toContain(first[0]);
    } finally {
      closeSync(fd);
      await holder.release();
    }
    expect(await processesHolding(devNo)).toEqual([]);
    expect(await loopDetach(device)).toBe('detached');
  });

  it('looks at the processes of the QEMU pid files first and stops at the first holder', async () => {
    const device = await attach(0, MiB);
    const devNo = (await sys(device, 'dev')) ?? '';
    const [major, minor] = devNo.split(':').map(Number) as [number, number];
    const holder = holdOpen(device);
    const pidDir = join(dir, 'qemu-pids');
    try {
      await mkdir(pidDir, { recursive: true });
      await writeFile(join(pidDir, 'vm1.pid'), `${holder.pid}\n`);
      await writeFile(join(pidDir, 'not-a-pid.txt'), '1\n');
      const scan = await blockHolders(major, minor, true, pidDir);
      expect(scan.pids).toEqual([holder.pid]);
      // Found in the pid-file pass: only that one process was looked at.
      expect(scan.processes).toBe(1);
    } finally {
      await holder.release();
    }
    expect(await loopDetach(device)).toBe('detached');
  });

  it('a holder that exits mid-scan is no failure', async () => {
    const device = await attach(0, MiB);
    const devNo = (await sys(device, 'dev')) ?? '';
    const children = Array.from({ length: 8 }, () => spawn('sleep', ['0.01'], { stdio: 'ignore' }));
    const scans = await Promise.all(Array.from({ length: 8 }, () => processesHolding(devNo)));
    expect(scans.every((s) => s.length === 0)).toBe(true);
    await Promise.all(children.map((c) => new Promise((done) => (c.exitCode !== null ? done(null) : c.once('exit', done)))));
    expect(await loopDetach(device)).toBe('detached');
  });
});
