import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { performance } from 'node:perf_hooks';
import { loadVirt, type NativeConnection, type NativeDomain } from '../src/infra/libvirt/virt.native.js';
import { argInt, median, quantile, round, runSection, sleep, type Cleanup } from './lib/common.js';
import { DirectPath, plainVolumes, type DirectStep, type Held, type PlainVolume } from './lib/direct.js';
import { BenchStorage, BenchVms, LIBVIRT_URI, POOL_ID, takeHostLock, type BenchVm } from './lib/real-env.js';
import { startRealWorker, type RealWorker } from './lib/real-worker.js';
import { bounded, byStep, type Span, type StepStats } from './lib/spans.js';
import { probeSerialisation, verdicts, type Probes } from './lib/storm-probes.js';

/**
 * Item 7: a boot storm. `vms` small VMs (no disk, one empty SATA CD-ROM) each get a load
 * of a different ISO at the same moment, as when a pool of VMs starts with its payload
 * ISOs. Worker: all `vms` changeCD commands published at once, time from the first
 * publish to the last result event. Baselines in the same run on the same VMs, written
 * plainly (bench/lib/direct.ts): the same loads one after another, and with at most
 * `concurrency` in flight (the worker's own limit) — once with a libvirt connection per
 * lane (as the worker's pool has one per VM in flight) and once all on one connection.
 * Between modes everything is ejected again (not measured); the order of the modes
 * rotates from round to round. The direct runs record every step's span, and
 * storm-probes.ts runs each step alone, so the result says where the work serialises.
 *
 * The VMs start paused (`--paused 0` runs them): here an idle running test VM's vCPU
 * thread spends ~0.6 CPU in the kernel (KVM is nested on these machines), so 40 running
 * VMs put 40 runnable threads on 2 cores (load average 41, measured) and every step waits
 * for CPU: a lone updateDeviceFlags took 600 ms instead of 15, and starting the 40 VMs
 * 143 s. QEMU opens and closes a paused VM's tray the same way (no guest is involved with
 * an unlocked SATA tray), so the change path is the one a running pool goes through.
 */

export interface ModeStats {
  /** median over rounds of the time from the first load's start until the last one is done */
  readonly allDoneMs: number;
  /** each round's all-done time */
  readonly rounds: number[];
  /** each load's time from the storm's start until it was done, over all rounds */
  readonly p50: number;
  readonly p99: number;
  /** direct modes: each load's own duration, without the wait for a free lane */
  readonly serviceP50?: number;
  readonly serviceP99?: number;
}

export interface BootstormResult {
  readonly vms: number;
  readonly memoryMiB: number;
  /** the VMs' vCPUs during the storm */
  readonly vcpus: 'paused' | 'running';
  readonly concurrency: number;
  readonly rounds: number;
  readonly setup: { readonly storageMs: number; readonly vmsMs: number; readonly createConcurrency: number };
  /** the first storm, unmeasured warm-up: the worker reads each LV's placement with LVM once */
  readonly coldWorker: { readonly allDoneMs: number; readonly p99: number };
  readonly worker: ModeStats;
  readonly directSequential: ModeStats;
  readonly directParallel: ModeStats;
  readonly directParallelOneConnection: ModeStats;
  readonly bestDirectParallel: { readonly mode: 'directParallel' | 'directParallelOneConnection'; readonly allDoneMs: number };
  /** worker all-done / best direct parallel all-done */
  readonly ratio: number;
  /** the worker's activities in the measured storms: ms per load (summed over the storm's loads / loads), median over rounds */
  readonly workerSteps: Record<string, number>;
  /** per step of the direct runs, over all rounds (`metadata` is both writes of a load) */
  readonly steps: Record<'sequential' | 'parallel' | 'parallelOneConnection', Record<string, StepStats>>;
  /** the binding's executor during the direct parallel runs: most threads busy, most calls queued */
  readonly executor: { readonly maxBusy: number; readonly maxQueued: number };
  /** each step alone (absent with `--probes 0`, as in --quick) */
  readonly probes?: Probes;
  /** where it serialises, with figures */
  readonly serialisation: string[];
}

type Mode = 'worker' | 'directSequential' | 'directParallel' | 'directParallelOneConnection';
const MODES: readonly Mode[] = ['worker', 'directSequential', 'directParallel', 'directParallelOneConnection'];

interface Load {
  readonly vm: BenchVm;
  readonly volume: PlainVolume;
  readonly index: number;
}

interface Run {
  readonly allDoneMs: number;
  readonly done: number[];
  readonly service: number[];
}

const argv = process.argv.slice(2);
const run = promisify(execFile);
const LOAD_TIMEOUT = 120_000;

const began = performance.now();
const progress = (what: string): void => void process.stderr.write(`bootstorm +${((performance.now() - began) / 1000).toFixed(1)} s: ${what}\n`);

export async function bootstorm(cleanup: Cleanup, opts: { vms: number; concurrency: number; rounds: number; memoryMiB: number; paused: boolean; createConcurrency: number; probes: boolean }): Promise<BootstormResult> {
  await takeHostLock(cleanup, 900_000);
  // the VG and the VMs are independent: made side by side
  const vms = await BenchVms.open(cleanup);
  const made: BenchVm[] = [];
  const since = (t: number): number => performance.now() - t;
  const t0 = performance.now();
  const [[st, storageMs], vmsMs] = await Promise.all([
    BenchStorage.create(opts.vms, cleanup).then((x) => [x, since(t0)] as const),
    bounded(Array.from({ length: opts.vms }), opts.createConcurrency, async () => {
      made.push(await vms.create(cleanup, { memoryMiB: opts.memoryMiB, paused: opts.paused }));
    }).then(() => since(t0)),
  ]);
  // newest first: all of them at once, before the one-by-one undo of each create finds them gone
  cleanup.add(`${made.length} storm VMs`, () => bounded(made, 8, (vm) => vms.destroy(vm.name)));
  progress(`storage ${(storageMs / 1000).toFixed(1)} s, ${made.length} VMs ${(vmsMs / 1000).toFixed(1)} s (side by side)`);

  const w: RealWorker = await startRealWorker(st, cleanup, { concurrency: opts.concurrency });
  const virt = loadVirt();
  // a connection per lane, each with its own handle on every VM (a handle belongs to its connection)
  const lanes: { conn: NativeConnection; doms: Map<string, NativeDomain> }[] = [];
  for (let i = 0; i < opts.concurrency; i++) {
    const conn = await virt.open(LIBVIRT_URI, () => undefined, 5, 3);
    cleanup.add(`direct connection ${i}`, () => conn.close());
    const doms = new Map<string, NativeDomain>();
    for (const vm of made) doms.set(vm.uuid, await conn.lookupByUUIDString(vm.uuid));
    lanes.push({ conn, doms });
  }
  const dom = (lane: number, vm: BenchVm): NativeDomain => lanes[lane]?.doms.get(vm.uuid) as NativeDomain;

  let recording: Span[] | null = null;
  const direct = new DirectPath(virt, st.root, (step: DirectStep, start, end) => recording?.push({ step, start, end }));
  const images = new Map(st.domain.volumes.map((v) => [v.volumeID, v.imageID]));
  const volumes = await plainVolumes(st.domain.vg, st.domain.lvmFilter, POOL_ID, images);
  if (volumes.length !== opts.vms) throw new Error(`expected ${opts.vms} volumes, pvs shows ${volumes.length}`);
  // round r: VM i loads volume (i + r) mod n, a different ISO per VM
  const loadsOf = (r: number): Load[] => made.map((vm, i) => ({ vm, volume: volumes[(i + r) % volumes.length] as PlainVolume, index: i }));
  const pdivOf = (v: PlainVolume) => ({ poolID: v.poolID, domainID: v.domainID, imageID: v.imageID, volumeID: v.volumeID });

  const workerSteps = new Map<string, number[]>();
  const workerStorm = async (loads: readonly Load[]): Promise<Run> => {
    w.steps.take();
    const start = performance.now();
    const done = await Promise.all(loads.map(async (l) => (await w.change(l.vm.uuid, pdivOf(l.volume), LOAD_TIMEOUT)).ms));
    const allDoneMs = performance.now() - start;
    for (const [step, ms] of w.steps.take()) workerSteps.set(step, [...(workerSteps.get(step) ?? []), ms / loads.length]);
    await Promise.all(loads.map((l) => w.change(l.vm.uuid, null, LOAD_TIMEOUT)));
    return { allDoneMs, done, service: [] };
  };

  const execMax = { busy: 0, queued: 0 };
  const directStorm = async (loads: readonly Load[], limit: number, laneOf: (lane: number) => number, spans: Span[]): Promise<Run> => {
    const held = new Map<Load, Held>();
    const done: number[] = [];
    const service: number[] = [];
    const sampler = limit > 1 ? setInterval(() => {
      const s = virt.executorStats();
      execMax.busy = Math.max(execMax.busy, s.busy);
      execMax.queued = Math.max(execMax.queued, s.queued);
    }, 1) : null;
    recording = spans;
    const start = performance.now();
    try {
      await bounded(loads, limit, async (l, lane) => {
        const s = performance.now();
        const { held: h } = await direct.change(dom(laneOf(lane), l.vm), null, l.volume);
        const e = performance.now();
        held.set(l, h);
        service.push(e - s);
        done.push(e - start);
      });
    } finally {
      recording = null;
      if (sampler !== null) clearInterval(sampler);
    }
    const allDoneMs = performance.now() - start;
    await bounded([...held], opts.concurrency, async ([l, h], lane) => resetDrive(direct, dom(lane, l.vm), h));
    return { allDoneMs, done, service };
  };

  const spans: Record<'sequential' | 'parallel' | 'parallelOneConnection', Span[]> = { sequential: [], parallel: [], parallelOneConnection: [] };
  const runMode = (mode: Mode, loads: readonly Load[]): Promise<Run> => {
    switch (mode) {
      case 'worker':
        return workerStorm(loads);
      case 'directSequential':
        return directStorm(loads, 1, () => 0, spans.sequential);
      case 'directParallel':
        return directStorm(loads, opts.concurrency, (lane) => lane, spans.parallel);
      case 'directParallelOneConnection':
        return directStorm(loads, opts.concurrency, () => 0, spans.parallelOneConnection);
    }
  };

  // warm-up, not measured: every VM's first media, the worker's LV placement cache and JIT
  const cold = await workerStorm(loadsOf(0));
  workerSteps.clear();
  progress(`worker's first storm (cold) ${cold.allDoneMs.toFixed(0)} ms`);
  await sleep(500);

  const runs = new Map<Mode, Run[]>(MODES.map((m) => [m, []]));
  for (let r = 0; r < opts.rounds; r++) {
    const order = MODES.map((_, i) => MODES[(i + r) % MODES.length] as Mode);
    for (const mode of order) runs.get(mode)?.push(await runMode(mode, loadsOf(r + 1)));
    const line = order.map((m) => `${m} ${runs.get(m)?.at(-1)?.allDoneMs.toFixed(0)} ms`).join(', ');
    progress(`round ${r + 1}/${opts.rounds}: ${line}`);
  }

  const probes = opts.probes ? await probeSerialisation({ virt, direct, lanes: lanes.map((l) => l.doms), vms: made, volumes, concurrency: opts.concurrency }) : undefined;
  if (probes !== undefined) progress('probes done');

  const stats = (mode: Mode): ModeStats => {
    const rs = runs.get(mode) ?? [];
    const done = rs.flatMap((x) => x.done);
    const service = rs.flatMap((x) => x.service);
    return {
      allDoneMs: round(median(rs.map((x) => x.allDoneMs))),
      rounds: rs.map((x) => round(x.allDoneMs)),
      p50: round(median(done)),
      p99: round(quantile(done, 0.99)),
      ...(service.length === 0 ? {} : { serviceP50: round(median(service)), serviceP99: round(quantile(service, 0.99)) }),
    };
  };
  const worker = stats('worker');
  const directSequential = stats('directSequential');
  const directParallel = stats('directParallel');
  const directParallelOneConnection = stats('directParallelOneConnection');
  const best = directParallel.allDoneMs <= directParallelOneConnection.allDoneMs ? ('directParallel' as const) : ('directParallelOneConnection' as const);
  const bestMs = Math.min(directParallel.allDoneMs, directParallelOneConnection.allDoneMs);
  const steps = { sequential: byStep(spans.sequential), parallel: byStep(spans.parallel), parallelOneConnection: byStep(spans.parallelOneConnection) };
  const result = {
    vms: made.length,
    memoryMiB: opts.memoryMiB,
    vcpus: opts.paused ? ('paused' as const) : ('running' as const),
    concurrency: opts.concurrency,
    rounds: opts.rounds,
    setup: { storageMs: round(storageMs, 0), vmsMs: round(vmsMs, 0), createConcurrency: opts.createConcurrency },
    coldWorker: { allDoneMs: round(cold.allDoneMs), p99: round(quantile(cold.done, 0.99)) },
    worker,
    directSequential,
    directParallel,
    directParallelOneConnection,
    bestDirectParallel: { mode: best, allDoneMs: bestMs },
    ratio: round(worker.allDoneMs / bestMs),
    workerSteps: Object.fromEntries([...workerSteps].map(([k, xs]) => [k, round(median(xs))])),
    steps,
    executor: { maxBusy: execMax.busy, maxQueued: execMax.queued },
    ...(probes === undefined ? {} : { probes }),
  };
  return { ...result, serialisation: verdicts(result) };
}

/**
 * Back to an empty drive between modes, not measured: swap to empty, then `losetup -d`
 * without looking for openers first — on a device QEMU still holds it only schedules the
 * removal for the last close, which is all a reset needs (and no /proc scan per drive).
 */
async function resetDrive(direct: DirectPath, dom: NativeDomain, h: Held): Promise<void> {
  await direct.update(dom, null);
  await direct.setMetadata(dom, '<vm><device devtype="disk" name="sdc"/></vm>');
  await run('losetup', ['--detach', h.device]);
  await rm(h.link, { force: true });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('bootstorm', (cleanup) =>
    bootstorm(cleanup, {
      vms: argInt(argv, 'vms', 40),
      concurrency: argInt(argv, 'concurrency', 16),
      rounds: argInt(argv, 'rounds', 5),
      memoryMiB: argInt(argv, 'memory-mib', 64),
      paused: argInt(argv, 'paused', 1) === 1,
      createConcurrency: argInt(argv, 'create-concurrency', 8),
      probes: argInt(argv, 'probes', 1) === 1,
    }),
  );
}
