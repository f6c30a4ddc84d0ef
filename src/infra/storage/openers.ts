import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { devNoOf, type LoopMapping } from './loop-devices.js';
import { errnoOf } from './storage.errors.js';

/** Races with exiting processes and closing fds are normal while scanning /proc. */
const GONE = new Set(['ENOENT', 'ESRCH', 'EACCES', 'EPERM', 'ENOTDIR']);

async function quietly<T>(fn: () => Promise<T>, fallback: T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const code = errnoOf(err);
    if (code !== undefined && GONE.has(code)) return fallback;
    throw err;
  }
}

/** fd targets that can never be a block device, skipped to save a stat each. */
const NOT_A_PATH = /^(socket|pipe|anon_inode|net|mnt|user|pid|ipc|uts|cgroup|time):/;

/**
 * Processes holding the block device `devNo` open, by scanning /proc/<pid>/fd and
 * comparing device numbers. Names are useless here: libvirt runs QEMU in its own mount
 * namespace with its own copy of the node, which `fuser` does not see.
 */
export async function processesHolding(devNo: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n));
  const holders = await Promise.all(
    pids.map(async (pid) => {
      const fds = await quietly(() => readdir(`/proc/${pid}/fd`), [] as string[]);
      for (const fd of fds) {
        const fdPath = `/proc/${pid}/fd/${fd}`;
        const target = await quietly(() => readlink(fdPath), '');
        if (target === '' || NOT_A_PATH.test(target)) continue;
        const st = await quietly(() => stat(fdPath), null);
        if (st !== null && st.isBlockDevice() && devNoOf(st.rdev) === devNo) return Number(pid);
      }
      return null;
    }),
  );
  return holders.filter((p): p is number => p !== null);
}

/** Whether `devNo` is mounted in this mount namespace (a mount holds no fd). */
async function mounted(devNo: string): Promise<boolean> {
  const info = await quietly(() => readFile('/proc/self/mountinfo', 'utf8'), '');
  return info.split('\n').some((line) => line.split(' ')[2] === devNo);
}

/** Kernel users: device-mapper or md devices stacked on it. */
async function hasHolders(name: string): Promise<boolean> {
  const list = await quietly(() => readdir(`/sys/block/${name}/holders`), [] as string[]);
  return list.length > 0;
}

/**
 * Who keeps a loop device busy, or null when nobody does. Checked before detaching
 * because `losetup -d` on an open device succeeds while only scheduling the removal.
 */
export async function loopDeviceUser(mapping: LoopMapping, all: readonly LoopMapping[]): Promise<string | null> {
  if (await hasHolders(mapping.name)) return 'a kernel device is stacked on it';
  if (all.some((m) => m.backingFile === mapping.device)) return 'another loop device is backed by it';
  if (await mounted(mapping.devNo)) return 'it is mounted';
  const pids = await processesHolding(mapping.devNo);
  if (pids.length > 0) return `open by pid ${pids.join(', ')}`;
  return null;
}
