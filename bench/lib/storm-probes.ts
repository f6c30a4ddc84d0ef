import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import type { NativeDomain, VirtBinding } from '../../src/infra/libvirt/virt.native.js';
import type { BenchVm } from './real-env.js';
import type { DirectPath, Held, PlainVolume } from './direct.js';
import { round } from './common.js';
import { bounded, compare, type Comparison, type Span, type StepStats } from './spans.js';

/**
 * Each step of a load alone, `n` calls one after another and then `concurrency` at once
 * (on a connection per lane, and on one connection for the libvirt calls): which of them
 * overlaps and which waits in line somewhere. Run on the storm's VMs while every drive is
 * empty; leaves them empty, with no loop device of its own attached.
 */

const run = promisify(execFile);

/** CPU while a run lasted: a step that is slow because both cores are busy is not waiting on a lock. */
export interface CpuUse {
  /** share of the machine's CPU time busy (all processes, 1 = every core) */
  readonly machine: number;
  /** libvirtd's CPU time (with the children it reaped) per ms of the run, in cores */
  readonly libvirtd: number;
}

export type Probe = Comparison & { readonly cpu: { readonly sequential: CpuUse; readonly parallel: CpuUse } };

export interface Probes {
  readonly concurrency: number;
  /** `execFile('true')`: what spawning a process costs the event loop */
  readonly spawn: Probe;
  /** `losetup --find --show` over each LV (detached afterwards, not timed) */
  readonly losetup: Probe;
  readonly setMetadata: Probe;
  readonly setMetadataOneConnection: Probe;
  /** updateDeviceFlags empty → block, the loop devices attached beforehand */
  readonly updateDevice: Probe;
  readonly updateDeviceOneConnection: Probe;
}

export interface ProbeEnv {
  readonly virt: VirtBinding;
  readonly direct: DirectPath;
  /** per lane: its connection's handle of every VM */
  readonly lanes: readonly ReadonlyMap<string, NativeDomain>[];
  readonly vms: readonly BenchVm[];
  readonly volumes: readonly PlainVolume[];
  readonly concurrency: number;
}

/** Jiffies (USER_HZ, 100 per second): the machine's busy and total time, libvirtd's own. */
function cpuTicks(): { busy: number; total: number; libvirtd: number } {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  let libvirtd = NaN;
  try {
    const pid = readFileSync('/run/libvirtd.pid', 'utf8').trim();
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const g = st.slice(st.lastIndexOf(')') + 2).split(' ').map(Number);
    // utime, stime, cutime, cstime (fields 14–17)
    libvirtd = (g[11] ?? 0) + (g[12] ?? 0) + (g[13] ?? 0) + (g[14] ?? 0);
  } catch {
    // no pid file: libvirtd's share stays unknown
  }
  return { busy: total - idle, total, libvirtd };
}

interface Timed {
  readonly spans: Span[];
  readonly cpu: CpuUse;
}

async function timedAll<T>(step: string, items: readonly T[], limit: number, fn: (item: T, lane: number) => Promise<void>): Promise<Timed> {
  const spans: Span[] = [];
  const c0 = cpuTicks();
  const t0 = performance.now();
  await bounded(items, limit, async (item, lane) => {
    const start = performance.now();
    await fn(item, lane);
    spans.push({ step, start, end: performance.now() });
  });
  const ms = performance.now() - t0;
  const c1 = cpuTicks();
  return { spans, cpu: { machine: round(c1.total > c0.total ? (c1.busy - c0.busy) / (c1.total - c0.total) : 0), libvirtd: round(((c1.libvirtd - c0.libvirtd) * 10) / ms) } };
}

function probe(sequential: Timed, parallel: Timed): Probe {
  return { ...compare(sequential.spans, parallel.spans), cpu: { sequential: sequential.cpu, parallel: parallel.cpu } };
}

export async function probeSerialisation(env: ProbeEnv): Promise<Probes> {
  const c = env.concurrency;
  const dom = (lane: number, vm: BenchVm): NativeDomain => env.lanes[lane]?.get(vm.uuid) as NativeDomain;
  const ticks = Array.from({ length: env.vms.length }, (_, i) => i);

  const spawnOf = (limit: number) => timedAll('spawn', ticks, limit, async () => void (await run('true', [])));
  const spawn = probe(await spawnOf(1), await spawnOf(c));

  const losetupOf = async (limit: number): Promise<Timed> => {
    const devices: string[] = [];
    try {
      return await timedAll('losetup', env.volumes, limit, async (v) => {
        const { stdout } = await run('losetup', ['--find', '--show', '--read-only', '--offset', String(v.offset), '--sizelimit', String(v.size), v.pv]);
        devices.push(stdout.trim());
      });
    } finally {
      // nobody opened them: a plain detach removes them (the storage's cleanup would too)
      for (const d of devices) await run('losetup', ['--detach', d]).catch(() => undefined);
    }
  };
  const losetup = probe(await losetupOf(1), await losetupOf(c));

  const empty = '<vm><device devtype="disk" name="sdc"/></vm>';
  const metadataOf = (limit: number, lane: (l: number) => number) => timedAll('setMetadata', env.vms, limit, (vm, l) => env.direct.setMetadata(dom(lane(l), vm), empty));
  const mdSeq = await metadataOf(1, () => 0);
  const setMetadata = probe(mdSeq, await metadataOf(c, (l) => l));
  const setMetadataOneConnection = probe(mdSeq, await metadataOf(c, () => 0));

  const held: Held[] = [];
  try {
    for (const v of env.volumes) held.push(await env.direct.attach(v));
    const pairs = env.vms.map((vm, i) => ({ vm, h: held[i] as Held }));
    const updateOf = async (limit: number, lane: (l: number) => number): Promise<Timed> => {
      const timed = await timedAll('updateDevice', pairs, limit, ({ vm, h }, l) => env.direct.update(dom(lane(l), vm), h.link));
      await bounded(pairs, c, ({ vm }, l) => env.direct.update(dom(l, vm), null));
      return timed;
    };
    const upSeq = await updateOf(1, () => 0);
    const updateDevice = probe(upSeq, await updateOf(c, (l) => l));
    const updateDeviceOneConnection = probe(upSeq, await updateOf(c, () => 0));
    return { concurrency: c, spawn, losetup, setMetadata, setMetadataOneConnection, updateDevice, updateDeviceOneConnection };
  } finally {
    for (const h of held) {
      // QEMU may close the device a moment after the swap to empty
      for (let i = 0; i < 20 && !(await env.direct.detach(h).catch(() => false)); i++) await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const f0 = (x: number): string => x.toFixed(0);
const f1 = (x: number): string => x.toFixed(1);

const pct = (x: number): string => `${(x * 100).toFixed(0)} %`;

function line(what: string, c: Probe, n: number, concurrency: number): string {
  const how = c.speedup < 1.3 ? 'serialised' : c.speedup < concurrency / 2 ? `overlaps only ${f1(c.speedup)}×` : `overlaps ${f1(c.speedup)}×`;
  const cpu = (u: CpuUse): string => `CPU ${pct(u.machine)}${Number.isFinite(u.libvirtd) ? `, libvirtd ${f1(u.libvirtd)} cores` : ''}`;
  return `${what}: ${how} — ${n} one after another p50 ${f1(c.sequential.p50)} ms (${f0(c.sequential.busyMs)} ms in all; ${cpu(c.cpu.sequential)}); ${concurrency} at once: up to ${c.parallel.maxInFlight} in flight, p50 ${f1(c.parallel.p50)} ms, p99 ${f1(c.parallel.p99)} ms, done in ${f0(c.parallel.busyMs)} ms (${cpu(c.cpu.parallel)})`;
}

function inRun(step: string, seq: StepStats | undefined, par: StepStats | undefined): string | null {
  if (seq === undefined || par === undefined) return null;
  return `${step}: p50 ${f1(seq.p50)} → ${f1(par.p50)} ms, p99 ${f1(seq.p99)} → ${f1(par.p99)} ms, up to ${par.maxInFlight} in flight (mean ${f1(par.meanInFlight)})`;
}

/** Short conclusions with their figures, for the result's `serialisation` field. */
export function verdicts(r: {
  readonly vms: number;
  readonly concurrency: number;
  readonly worker: { allDoneMs: number; p99: number };
  readonly directSequential: { allDoneMs: number };
  readonly directParallel: { allDoneMs: number; serviceP50?: number };
  readonly directParallelOneConnection: { allDoneMs: number; serviceP50?: number };
  readonly steps: Record<'sequential' | 'parallel' | 'parallelOneConnection', Record<string, StepStats>>;
  readonly executor: { maxBusy: number; maxQueued: number };
  readonly probes?: Probes;
}): string[] {
  const p = r.probes;
  const n = r.vms;
  const out = [
    `all done: direct ${r.concurrency} at once ${f0(r.directParallel.allDoneMs)} ms (a connection per lane) / ${f0(r.directParallelOneConnection.allDoneMs)} ms (one connection) against ${f0(r.directSequential.allDoneMs)} ms one after another: ${f1(r.directSequential.allDoneMs / Math.min(r.directParallel.allDoneMs, r.directParallelOneConnection.allDoneMs))}× for ${r.concurrency} lanes`,
  ];
  if (p !== undefined) {
    out.push(
      line('losetup --find --show alone', p.losetup, n, r.concurrency),
      line('process spawn alone (execFile true)', p.spawn, n, r.concurrency),
      line('updateDeviceFlags alone, a connection per lane', p.updateDevice, n, r.concurrency),
      line('updateDeviceFlags alone, one connection', p.updateDeviceOneConnection, n, r.concurrency),
      line('setMetadata alone, a connection per lane', p.setMetadata, n, r.concurrency),
      line('setMetadata alone, one connection', p.setMetadataOneConnection, n, r.concurrency),
    );
  }
  for (const [label, k] of [
    ['in the storms, sequential → parallel (per lane): prepare (losetup + link)', 'prepare'],
    ['update (updateDeviceFlags)', 'update'],
    ['metadata (2 setMetadata)', 'metadata'],
  ] as const) {
    const s = inRun(label, r.steps.sequential[k], r.steps.parallel[k]);
    if (s !== null) out.push(s);
  }
  out.push(`binding executor during the direct parallel storms: at most ${r.executor.maxBusy} threads busy, ${r.executor.maxQueued} calls queued`);
  return out;
}
