import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { silentLogger } from '../src/infra/logging.js';
import type { LvmCli, LvVolume } from '../src/infra/storage/lvm.command.js';
import { devNoOf, listLoopMappings, readLoopMapping, type LoopMapping } from '../src/infra/storage/loop-devices.js';
import { LoopActivator } from '../src/infra/storage/loop.activation.js';
import { blockHolders, loopAttach, loopDetach } from '../src/infra/storage/loop.native.js';
import { loopDeviceUser } from '../src/infra/storage/openers.js';
import { argInt, median, quantile, round, runSection, sleep, type Cleanup } from './lib/common.js';

/**
 * Item 7: loop devices and the opener check, the work a block-volume teardown does in
 * loop mode. No VMs, no LVM: a scratch file stands in for the PV, so it needs no host
 * lock and touches only the loop devices it attaches.
 *
 * - the opener check (`loopDeviceUser`: kernel holders, loop-on-loop, mounts, and the
 *   /proc/<pid>/fd scan in the addon) on a device nobody holds — the whole scan — and on
 *   one a child process holds; baseline: the scan as it was (async readdir/readlink/stat
 *   per fd through libuv), same run, same device;
 * - the longest event-loop stall while the checks run (monitorEventLoopDelay, 1 ms
 *   resolution), for the new check and the old scan, and over as many idle 1 ms sleeps
 *   (what a busy 2-core machine does to any event loop);
 * - loop attach + detach through the addon's ioctls against spawning `losetup` twice
 *   from this same process (a spawn costs more the bigger the heap: ~2 ms here, 9–12 ms
 *   from the worker);
 * - LoopActivator activate and deactivate (nobody holding it) end to end.
 */

export interface OpenersResult {
  readonly checks: number;
  /** fds on the host, as the full scan counted them */
  readonly hostFds: number;
  readonly hostProcesses: number;
  readonly free: { readonly p50: number; readonly p99: number };
  readonly held: { readonly p50: number; readonly p99: number };
  /** the scan as it was (libuv readdir/readlink/stat), on the device nobody holds */
  readonly oldScan: { readonly p50: number; readonly p99: number };
  /** longest event-loop delay (and p99 of it) while the new checks ran */
  readonly maxLoopDelayMs: number;
  readonly p99LoopDelayMs: number;
  readonly oldScanMaxLoopDelayMs: number;
  /** the same monitor over as many 1 ms sleeps: what the machine alone does to the loop */
  readonly idleMaxLoopDelayMs: number;
  readonly rounds: number;
  readonly ioctl: { readonly p50: number; readonly p99: number };
  readonly losetup: { readonly p50: number; readonly p99: number };
  readonly activateP50: number;
  readonly deactivateP50: number;
  readonly rssMb: number;
}

const argv = process.argv.slice(2);
const run = promisify(execFile);
const MiB = 2 ** 20;
const pct = (xs: number[]): { p50: number; p99: number } => ({ p50: round(median(xs)), p99: round(quantile(xs, 0.99)) });

/** The opener scan before the addon did it, kept here as the baseline. */
async function oldProcessesHolding(devNo: string): Promise<number[]> {
  const quietly = async <T>(fn: () => Promise<T>, fallback: T): Promise<T> => {
    try {
      return await fn();
    } catch {
      return fallback;
    }
  };
  const notAPath = /^(socket|pipe|anon_inode|net|mnt|user|pid|ipc|uts|cgroup|time):/;
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n));
  const holders = await Promise.all(
    pids.map(async (pid) => {
      const fds = await quietly(() => readdir(`/proc/${pid}/fd`), [] as string[]);
      for (const fd of fds) {
        const fdPath = `/proc/${pid}/fd/${fd}`;
        const target = await quietly(() => readlink(fdPath), '');
        if (target === '' || notAPath.test(target)) continue;
        const st = await quietly(() => stat(fdPath), null);
        if (st !== null && st.isBlockDevice() && devNoOf(st.rdev) === devNo) return Number(pid);
      }
      return null;
    }),
  );
  return holders.filter((p): p is number => p !== null);
}

async function timedRuns(n: number, fn: () => Promise<unknown>): Promise<{ ms: number[]; maxDelayMs: number; p99DelayMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  const ms: number[] = [];
  h.enable();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
    // let the delay monitor's timer run between checks, as other work would
    if (i % 10 === 9) await sleep(2);
  }
  h.disable();
  return { ms, maxDelayMs: round(h.max / 1e6), p99DelayMs: round(h.percentile(99) / 1e6) };
}

export async function openers(cleanup: Cleanup, opts: { checks: number; rounds: number }): Promise<OpenersResult> {
  const dir = await mkdtemp(join(tmpdir(), 'cdw-openers-'));
  cleanup.add('scratch directory', () => rm(dir, { recursive: true, force: true }));
  const backing = join(dir, 'pv.img');
  await writeFile(backing, Buffer.alloc(16 * MiB));
  const ours = new Set<string>();
  cleanup.add('loop devices of the bench', async () => {
    for (const device of ours) {
      const m = await readLoopMapping(device);
      if (m !== null && m.backingFile === backing) await loopDetach(device);
    }
  });
  const attach = async (offset: number, size: number): Promise<string> => {
    const device = await loopAttach(backing, offset, size);
    ours.add(device);
    return device;
  };

  // the opener check, on a device nobody holds (every process, every fd)
  const device = await attach(MiB, 4 * MiB);
  const mapping = (await readLoopMapping(device)) as LoopMapping;
  const [major, minor] = mapping.devNo.split(':').map(Number) as [number, number];
  const census = await blockHolders(major, minor, false);
  const list = (): Promise<LoopMapping[]> => listLoopMappings();
  for (let i = 0; i < 20; i++) await loopDeviceUser(mapping, list); // warm-up
  const free = await timedRuns(opts.checks, async () => {
    if ((await loopDeviceUser(mapping, list)) !== null) throw new Error(`${device} unexpectedly in use`);
  });
  const old = await timedRuns(Math.min(opts.checks, 200), async () => {
    if ((await oldProcessesHolding(mapping.devNo)).length > 0) throw new Error(`${device} unexpectedly in use`);
  });

  const idle = await timedRuns(opts.checks, () => sleep(1));

  // … and on one a child process holds (found among every process: it is no QEMU)
  const fd = openSync(device, 'r');
  const child = spawn('sleep', ['600'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
  closeSync(fd);
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  cleanup.add('holder process', async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
  });
  const held = await timedRuns(opts.checks, async () => {
    const user = await loopDeviceUser(mapping, list);
    if (user !== `open by pid ${child.pid}`) throw new Error(`expected the child as user, got ${user}`);
  });
  child.kill('SIGKILL');
  await exited;
  if ((await loopDetach(device)) !== 'detached') throw new Error(`${device} not detached`);

  // attach + detach: ioctls against two losetup processes
  const ioctl: number[] = [];
  const losetup: number[] = [];
  for (let i = 0; i < opts.rounds; i++) {
    let t0 = performance.now();
    const d = await attach(2 * MiB, 4 * MiB);
    await loopDetach(d);
    ioctl.push(performance.now() - t0);
    t0 = performance.now();
    const { stdout } = await run('losetup', ['--find', '--show', '--read-only', '--offset', String(2 * MiB), '--sizelimit', String(4 * MiB), backing]);
    const ld = stdout.trim();
    ours.add(ld);
    await run('losetup', ['--detach', ld]);
    losetup.push(performance.now() - t0);
  }

  // the activator end to end, the scratch file standing in for the PV
  const activator = new LoopActivator({ lvm: {} as unknown as LvmCli, logger: silentLogger() });
  const volume: LvVolume = { vg: 'bench', lv: 'openers', tags: [], attr: '', pv: backing, offset: 3 * MiB, size: 4 * MiB, contiguous: true };
  const signal = new AbortController().signal;
  const activate: number[] = [];
  const deactivate: number[] = [];
  for (let i = 0; i < opts.rounds; i++) {
    let t0 = performance.now();
    ours.add(await activator.activate(volume, signal));
    activate.push(performance.now() - t0);
    t0 = performance.now();
    if ((await activator.deactivate(volume, signal)) !== 'done') throw new Error('deactivate: in-use');
    deactivate.push(performance.now() - t0);
  }

  return {
    checks: opts.checks,
    hostFds: census.fds,
    hostProcesses: census.processes,
    free: pct(free.ms),
    held: pct(held.ms),
    oldScan: pct(old.ms),
    maxLoopDelayMs: Math.max(free.maxDelayMs, held.maxDelayMs),
    p99LoopDelayMs: Math.max(free.p99DelayMs, held.p99DelayMs),
    oldScanMaxLoopDelayMs: old.maxDelayMs,
    idleMaxLoopDelayMs: idle.maxDelayMs,
    rounds: opts.rounds,
    ioctl: pct(ioctl),
    losetup: pct(losetup),
    activateP50: round(median(activate)),
    deactivateP50: round(median(deactivate)),
    rssMb: round(process.memoryUsage().rss / MiB, 0),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('openers', (cleanup) => openers(cleanup, { checks: argInt(argv, 'checks', 1000), rounds: argInt(argv, 'rounds', 200) }));
}
