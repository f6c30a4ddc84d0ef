import { loadAddon } from '../libvirt/virt.native.js';

/**
 * Typed view of the loop-device and /proc functions of the project's addon (native/loop.cc).
 * Each returns a promise and runs on the addon's own executor, never on the JS thread or
 * the libuv pool. Rejections are shaped like Node's SystemError: `code` is the errno name
 * ('EBUSY', 'ENOENT'…), `errno` its negative number, `syscall` and `path` what failed.
 */

export interface LoopSystemError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path?: string;
}

/**
 * What LOOP_CLR_FD did: `detached` — nobody else held the device, it is unbound;
 * `autoclear` — someone holds it open, the kernel only marked it to unbind on their last
 * close (what `losetup -d` silently does too); `not-attached` — it was not bound (ENXIO).
 */
export type LoopDetachOutcome = 'detached' | 'autoclear' | 'not-attached';

export interface BlockHolderScan {
  /** processes with the device open (the first one found only, with `firstOnly`) */
  readonly pids: readonly number[];
  /** fds looked at */
  readonly fds: number;
  /** processes looked at */
  readonly processes: number;
}

/** A bound loop device as sysfs shows it (`/sys/block/<name>/loop/*`, `/sys/block/<name>/dev`). */
export interface LoopSysfsEntry {
  readonly name: string;
  readonly backingFile: string;
  readonly devNo: string;
  readonly offset: number;
  readonly sizeLimit: number;
  readonly autoclear: boolean;
}

interface LoopBinding {
  loopAttach(backingFile: string, offset: number, sizeLimit: number): Promise<string>;
  loopDetach(device: string): Promise<LoopDetachOutcome>;
  blockHolders(major: number, minor: number, firstOnly: boolean, qemuPidDir: string): Promise<BlockHolderScan>;
  listLoops(): Promise<LoopSysfsEntry[]>;
}

const binding = (): LoopBinding => loadAddon() as LoopBinding;

/**
 * A read-only loop device over `sizeLimit` bytes of `backingFile` from `offset`, not
 * autoclear: LOOP_CTL_GET_FREE + LOOP_CONFIGURE (LOOP_SET_FD + LOOP_SET_STATUS64 on old
 * kernels), a device taken meanwhile (EBUSY) retried with the next free one. Resolves
 * `/dev/loopN` once LOOP_GET_STATUS64 and the device size show what was asked for.
 */
export function loopAttach(backingFile: string, offset: number, sizeLimit: number): Promise<string> {
  return binding().loopAttach(backingFile, offset, sizeLimit);
}

/** LOOP_CLR_FD on `device` (must be a loop device); see LoopDetachOutcome. */
export function loopDetach(device: string): Promise<LoopDetachOutcome> {
  return binding().loopDetach(device);
}

/** Where libvirt keeps the pid files of the QEMU processes it runs. */
export const QEMU_PID_DIR = '/run/libvirt/qemu';

/**
 * Processes holding the block device `major:minor` open: one statx per /proc/<pid>/fd
 * entry, comparing device numbers, QEMU processes (pid files in `qemuPidDir`) first.
 */
export function blockHolders(major: number, minor: number, firstOnly: boolean, qemuPidDir = QEMU_PID_DIR): Promise<BlockHolderScan> {
  return binding().blockHolders(major, minor, firstOnly, qemuPidDir);
}

/** Every bound loop device, read from sysfs in one call (~0.1 ms; ~1.6 ms as libuv reads). */
export function listLoops(): Promise<LoopSysfsEntry[]> {
  return binding().listLoops();
}
