import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { ChangeCdCommand } from '../src/contracts/schemas.js';
import { OVIRT_VM_NS, type HypervisorPort, type StoragePort } from '../src/domain/ports.js';
import { silentLogger } from '../src/infra/logging.js';
import { createActivities } from '../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../src/machines/drive.registry.js';
import { EMPTY_MD, ISO_A, ISO_B } from '../test/support/world.js';
import { argInt, round, runSection, sleep } from './lib/common.js';
import { RemoteHost, type HostMemory } from './lib/remote-ports.js';

/**
 * Item 4: RSS of the executor after 20,000 commands over 10,000 distinct drives (the
 * registry directly, over the fakes, at most `concurrency` commands in flight as the
 * consumer's prefetch allows), and once the idle actors are reaped.
 *
 * bench/run.ts runs it compiled (tsconfig.bench.json → .bench-dist/), on plain node the
 * way the worker runs dist/: tsx's loader thread and transform cache are not the
 * worker's memory. `node --expose-gc --import tsx bench/memory.bench.ts` works too, with
 * tsx's overhead in every figure.
 *
 * Right after the last command RSS is read as is and after a full GC (`afterRssMb`, as
 * before). From then on nothing is reaped or collected by hand: the registry's own idle
 * sweep stops the actors (idleTtlMs, 5 s by default) and RSS is sampled every 500 ms for
 * the idle window (`--idle-window`, 15 s), whatever V8 hands back on its own; the last
 * sample is read before and after a full GC (`reapedRssMb` is the latter). On its own V8
 * gave nothing back within 15 s here: its memory reducer shrank the heap 18–33 s after
 * the run, or later. The peak is the kernel's high-water mark (in-process the fakes
 * answer in microtasks, so a sampling timer would never fire mid-run).
 *
 * The fakes keep every VM's metadata and journal, which is the hypervisor's state, not
 * the worker's: in production it lives in libvirtd, another process. So by default the
 * fake hypervisor and storage run in a child process (bench/lib/fake-host.ts) and the
 * activities reach them over IPC (bench/lib/remote-ports.ts): every figure but `host`
 * is the worker's process alone. In the worker's heap the fakes replace 3–4 metadata
 * strings (1–7 KB) per command that die in the old generation, and that churn, not the
 * worker, set most of the peak (316 vs 176 MB here). `--in-process` (run.ts passes it
 * on) keeps the fakes there as before, for comparison. Either way `fakeStateMb` is the
 * heap freed when the fake forgets its VMs at the end (measured, not estimated), in
 * whichever process holds them; `heapUsedWithoutFakesMb` is the worker's heap without
 * them. RSS is not split: freed heap is not RSS given back.
 */

export interface IdleSample {
  /** since the last command settled */
  readonly ms: number;
  readonly rssMb: number;
  readonly heapUsedMb: number;
  readonly liveDrives: number;
}

/** The process of the fakes, when they run in one (the default): what libvirtd would weigh. */
export interface HostResult {
  /** after the VMs were defined, after a full GC */
  readonly startRssMb: number;
  /** at the end of the idle window, after a full GC */
  readonly rssMb: number;
  readonly peakRssMb: number;
  readonly heapUsedMb: number;
  readonly vms: number;
}

export interface MemoryResult {
  readonly commands: number;
  readonly drives: number;
  readonly concurrency: number;
  readonly idleTtlMs: number | 'default';
  /** `node`: compiled JS on plain node (as deployed); `tsx`: node --import tsx */
  readonly runtime: 'node' | 'tsx';
  readonly nodeFlags: readonly string[];
  /** where the fake hypervisor and storage live: their own process, as libvirtd and LVM do, or the worker's heap */
  readonly fakes: 'child-process' | 'in-process';
  readonly host: HostResult | null;
  readonly runMs: number;
  readonly commandsPerSec: number;
  /** user + system CPU of the process (GC threads included) while the commands ran */
  readonly runCpuMs: number;
  readonly startRssMb: number;
  /** the process's RSS high-water mark (getrusage ru_maxrss) */
  readonly peakRssMb: number;
  /** right after the last command, before any GC */
  readonly afterRawRssMb: number;
  /** right after the last command, after a full GC */
  readonly afterRssMb: number;
  readonly liveDrivesBeforeReap: number;
  /** when the idle sweep had stopped every actor, ms after the last command */
  readonly reapedAtMs: number | null;
  readonly idle: readonly IdleSample[];
  /** at the end of the idle window, before the final GC */
  readonly reapedNoGcRssMb: number;
  /** at the end of the idle window, after a full GC; no actor left (asserted) */
  readonly reapedRssMb: number;
  readonly liveDrivesAfter: number;
  readonly growthAfterReapMb: number;
  readonly heapTotalReapedMb: number;
  readonly heapUsedStartMb: number;
  readonly heapUsedReapedMb: number;
  /** heap the fakes' VMs hold at the end, in the host process or (in-process) the worker's */
  readonly fakeStateMb: number;
  /** the worker's heap once idle without the fakes' VMs (in a child process: heapUsedReapedMb) */
  readonly heapUsedWithoutFakesMb: number;
}

const argv = process.argv.slice(2);
const SAMPLE_MS = 500;

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) throw new Error('run with node --expose-gc');
  g();
  g();
}

const mb = (b: number): number => round(b / 2 ** 20, 1);

/** The fake hypervisor and storage with `vmIds` defined, wherever they run. */
interface Fakes {
  readonly hypervisor: HypervisorPort;
  readonly storage: StoragePort;
  /** the host process's memory after a GC; null in-process */
  hostMemory(): Promise<HostMemory | null>;
  /** heap freed when the fake forgets every VM (drops them), bytes */
  dropVms(): Promise<number>;
  close(): Promise<void>;
}

async function inProcessFakes(vmIds: readonly string[]): Promise<Fakes> {
  const { FakeHypervisor } = await import('../test/fakes/hypervisor.fake.js');
  const { FakeStorage } = await import('../test/fakes/storage.fake.js');
  const hv = new FakeHypervisor();
  const storage = new FakeStorage();
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  for (const vmId of vmIds) hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  return {
    hypervisor: hv,
    storage,
    hostMemory: () => Promise.resolve(null),
    dropVms: () => {
      gc();
      const before = process.memoryUsage().heapUsed;
      for (const vmId of vmIds) hv.removeVm(vmId);
      gc();
      return Promise.resolve(before - process.memoryUsage().heapUsed);
    },
    close: () => Promise.resolve(),
  };
}

async function childProcessFakes(vmIds: readonly string[]): Promise<Fakes> {
  // One request defines every VM: the host builds them as inProcessFakes does.
  const host = await RemoteHost.start({ vmIds, metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD }, volumes: [ISO_A, ISO_B] });
  return {
    hypervisor: host.hypervisor,
    storage: host.storage,
    hostMemory: () => host.call('memory', { dropVms: false }),
    dropVms: async () => {
      const before = await host.call('memory', { dropVms: false });
      const after = await host.call('memory', { dropVms: true });
      return before.heapUsed - after.heapUsed;
    },
    close: () => host.close(),
  };
}

export async function memory(commands: number, drives: number, concurrency: number, idleTtlMs?: number, idleWindowMs = 15_000, inProcess = false): Promise<MemoryResult> {
  const vmIds = Array.from({ length: drives }, () => randomUUID());
  const fakes = await (inProcess ? inProcessFakes(vmIds) : childProcessFakes(vmIds));
  try {
    return await measure(fakes, vmIds, commands, concurrency, idleTtlMs, idleWindowMs);
  } finally {
    await fakes.close();
  }
}

async function measure(fakes: Fakes, vmIds: readonly string[], commands: number, concurrency: number, idleTtlMs: number | undefined, idleWindowMs: number): Promise<MemoryResult> {
  const drives = vmIds.length;
  const registry = new DriveRegistry({ activities: createActivities({ hypervisor: fakes.hypervisor, storage: fakes.storage }), concurrency, stepTimeoutMs: 60_000, log: silentLogger(), ...(idleTtlMs === undefined ? {} : { idleTtlMs }) });
  const command = (i: number): ChangeCdCommand => ({
    type: 'changeCD',
    version: 1,
    commandId: randomUUID(),
    vmId: vmIds[i % drives] as string,
    drive: 'sdc',
    media: Math.floor(i / drives) % 2 === 0 ? ISO_A : ISO_B,
  });
  const hostStart = await fakes.hostMemory();
  await sleep(50);
  gc();
  const start = process.memoryUsage();
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < commands; i = next++) {
      const e = await registry.execute(command(i));
      if (e.kind !== 'result' || e.result.outcome !== 'completed') throw new Error(`command ${i}: ${JSON.stringify(e)}`);
    }
  };
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: concurrency }, lane));
  const cpu = process.cpuUsage(cpu0);
  const runMs = performance.now() - t0;
  const lastSettled = performance.now();
  const afterRaw = process.memoryUsage.rss();
  const liveDrivesBeforeReap = registry.liveDrives;
  gc();
  const after = process.memoryUsage();

  // Idle as in production: no reap(0), no GC until the last sample.
  const idle: IdleSample[] = [];
  let reapedAtMs: number | null = null;
  const samples = Math.max(1, Math.floor(idleWindowMs / SAMPLE_MS));
  let reaped = after;
  let reapedNoGc = after.rss;
  for (let k = 1; k <= samples; k++) {
    await sleep(lastSettled + k * SAMPLE_MS - performance.now());
    if (k === samples) {
      reapedNoGc = process.memoryUsage.rss();
      gc();
    }
    reaped = process.memoryUsage();
    const ms = Math.round(performance.now() - lastSettled);
    idle.push({ ms, rssMb: mb(reaped.rss), heapUsedMb: mb(reaped.heapUsed), liveDrives: registry.liveDrives });
    if (reapedAtMs === null && registry.liveDrives === 0) reapedAtMs = ms;
  }
  const peak = process.resourceUsage().maxRSS * 1024;
  const liveDrivesAfter = registry.liveDrives;
  if (liveDrivesAfter !== 0) throw new Error(`${liveDrivesAfter} actors still alive ${idleWindowMs} ms after the last command`);

  // The fake hypervisor's VMs (metadata and journal of every domain) are libvirt's
  // state in production: measure what they hold by letting the fake forget them.
  const hostEnd = await fakes.hostMemory();
  const fakeState = await fakes.dropVms();
  const withoutFakes = hostEnd === null ? process.memoryUsage() : reaped;

  return {
    commands,
    drives,
    concurrency,
    idleTtlMs: idleTtlMs ?? 'default',
    runtime: import.meta.url.endsWith('.ts') ? 'tsx' : 'node',
    nodeFlags: process.execArgv,
    fakes: hostEnd === null ? 'in-process' : 'child-process',
    host:
      hostStart === null || hostEnd === null
        ? null
        : { startRssMb: mb(hostStart.rss), rssMb: mb(hostEnd.rss), peakRssMb: mb(hostEnd.maxRss), heapUsedMb: mb(hostEnd.heapUsed), vms: hostEnd.vms },
    runMs: round(runMs, 0),
    commandsPerSec: round(commands / (runMs / 1000), 0),
    runCpuMs: round((cpu.user + cpu.system) / 1000, 0),
    startRssMb: mb(start.rss),
    peakRssMb: mb(peak),
    afterRawRssMb: mb(afterRaw),
    afterRssMb: mb(after.rss),
    liveDrivesBeforeReap,
    reapedAtMs,
    idle,
    reapedNoGcRssMb: mb(reapedNoGc),
    reapedRssMb: mb(reaped.rss),
    liveDrivesAfter,
    growthAfterReapMb: mb(reaped.rss - start.rss),
    heapTotalReapedMb: mb(reaped.heapTotal),
    heapUsedStartMb: mb(start.heapUsed),
    heapUsedReapedMb: mb(reaped.heapUsed),
    fakeStateMb: mb(fakeState),
    heapUsedWithoutFakesMb: mb(withoutFakes.heapUsed),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const ttl = argv.includes('--idle-ttl') ? argInt(argv, 'idle-ttl', 0) : undefined;
  await runSection('memory', () => memory(argInt(argv, 'commands', 20_000), argInt(argv, 'drives', 10_000), argInt(argv, 'concurrency', 16), ttl, argInt(argv, 'idle-window', 15_000), argv.includes('--in-process')));
}
