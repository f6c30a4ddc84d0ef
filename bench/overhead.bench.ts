import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Pdiv } from '../src/domain/media.js';
import { VmMetadata } from '../src/domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type HypervisorPort, type StoragePort } from '../src/domain/ports.js';
import { loadVirt } from '../src/infra/libvirt/virt.native.js';
import { DirectPath, plainVolumes, type DirectTimes, type Held, type PlainVolume } from './lib/direct.js';
import { argInt, median, quantile, round, runSection, sleep, withTimeout, type Cleanup } from './lib/common.js';
import { BenchStorage, BenchVms, takeHostLock, type BenchVm } from './lib/real-env.js';
import { startTraceSink } from './lib/trace-sink.js';
import { startRealWorker, type RealWorker, type StepName } from './lib/real-worker.js';

/**
 * Item 1: what the worker adds to one CD-ROM change on a real VM. Worker: a changeCD
 * published to the real broker → its result event received (real worker, libvirtd/QEMU,
 * loop-activated LVM). Baseline, in the same run on the same VM: the bare work of the
 * design page's change flow written plainly (bench/lib/direct.ts: literal setMetadata
 * writes, `losetup`, the binding's updateDeviceFlags, a synchronous /proc fd scan), which
 * shares no code with the worker's adapters. A third line calls the project's own
 * adapters directly in the same order, to show what the adapters cost. The three
 * alternate A↔B in batches (the order rotates) so they see the same machine load; each
 * batch starts with one unmeasured change, as something else changed the VM since.
 * With `--tracing 1` the worker traces every command (OTLP/HTTP export to a local sink,
 * bench/lib/trace-sink.ts).
 */

interface Stat {
  readonly p50: number;
  readonly p99: number;
  readonly mean: number;
}

export interface OverheadResult {
  readonly changes: number;
  /** tracing on: spans exported over OTLP/HTTP to a local sink (absent in older results: off) */
  readonly tracing?: { readonly exports: number; readonly kb: number };
  readonly batch: number;
  readonly vmsUsed: number;
  readonly worker: Stat;
  /** the bare work written plainly (bench/lib/direct.ts) */
  readonly direct: Stat;
  /** the project's adapters called directly, in the flow's order */
  readonly adapters?: Stat;
  readonly addedP50: number;
  readonly addedP99: number;
  /** worker / direct */
  readonly ratioP50: number;
  readonly ratioP99: number;
  /** per-change medians (ms) of what the worker spent in each activity */
  readonly workerSteps: Record<string, number>;
  /** per-change medians (ms) of the direct baseline's parts */
  readonly directSteps: Record<string, number>;
  readonly adapterSteps?: Record<string, number>;
}

const argv = process.argv.slice(2);
const CHANGES = argInt(argv, 'changes', 200);
const BATCH = argInt(argv, 'batch', 10);
/** libvirtd was seen to hang after ~500 changes on one TCG VM: a fresh VM after this many */
const PER_VM = argInt(argv, 'per-vm', 150);
const STEP_TIMEOUT = 60_000;
const TRACING = argInt(argv, 'tracing', 0) === 1;

/** Precomputed metadata the way the worker writes it, so the adapter line does no parsing. */
class MetadataForms {
  private readonly cache = new Map<string, string>();
  constructor(private readonly initial: string | null) {}

  begin(from: Pdiv | null, to: Pdiv): string {
    return this.memo(`b|${from?.volumeID ?? ''}|${to.volumeID}`, () => {
      let md = this.holding(from);
      if (from !== null) md = md.markEntry('sdc', from, 'ejecting');
      return md.addEntry('sdc', to, 'loading').toXml();
    });
  }

  /** A change's middle write (design page: remove state="loading" from the new drive spec). */
  loaded(from: Pdiv, to: Pdiv): string {
    return this.memo(`l|${from.volumeID}|${to.volumeID}`, () => this.holding(from).markEntry('sdc', from, 'ejecting').addEntry('sdc', to, 'loading').clearState('sdc', 'loading').toXml());
  }

  final(to: Pdiv): string {
    return this.memo(`f|${to.volumeID}`, () => this.holding(to).toXml());
  }

  private holding(p: Pdiv | null): VmMetadata {
    const md = VmMetadata.parse(this.initial);
    return p === null ? md : md.addEntry('sdc', p, 'loading').clearState('sdc', 'loading');
  }

  private memo(key: string, make: () => string): string {
    let v = this.cache.get(key);
    if (v === undefined) this.cache.set(key, (v = make()));
    return v;
  }
}

/** The same flow through the project's adapters (what item 1 compared with until v1.1). */
async function adapterChange(h: HypervisorPort, s: StoragePort, forms: MetadataForms, vmId: string, from: Pdiv | null, to: Pdiv): Promise<DirectTimes> {
  const t: DirectTimes = { total: 0, metadata: 0, prepare: 0, update: 0, teardown: 0 };
  const lap = async <T>(k: Exclude<keyof DirectTimes, 'total'>, p: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const v = await withTimeout(p(), STEP_TIMEOUT, `adapters ${k} on ${vmId}`);
    t[k] += performance.now() - t0;
    return v;
  };
  const t0 = performance.now();
  await lap('metadata', () => h.setMetadata(vmId, OVIRT_VM_NS, forms.begin(from, to)));
  const prepared = await lap('prepare', () => s.prepareVolume(to));
  await lap('update', () => h.updateDevice(vmId, 'sdc', { type: prepared.diskType, path: prepared.path }));
  if (from !== null) {
    await lap('metadata', () => h.setMetadata(vmId, OVIRT_VM_NS, forms.loaded(from, to)));
    await lap('teardown', () => s.teardownVolume(from));
  }
  await lap('metadata', () => h.setMetadata(vmId, OVIRT_VM_NS, forms.final(to)));
  t.total = performance.now() - t0;
  return t;
}

export async function overhead(cleanup: Cleanup, opts: { changes: number; batch: number; perVm: number; tracing?: boolean }): Promise<OverheadResult> {
  await takeHostLock(cleanup, 900_000);
  const st = await BenchStorage.create(2, cleanup);
  const vms = await BenchVms.open(cleanup);
  const sink = opts.tracing === true ? await startTraceSink() : null;
  if (sink !== null) cleanup.add('trace sink', () => sink.close());
  const w: RealWorker = await startRealWorker(st, cleanup, { concurrency: 16, ...(sink === null ? {} : { otlpEndpoint: sink.url }) });
  const A = st.pdiv(0);
  const B = st.pdiv(1);
  const other = (p: Pdiv | null): Pdiv => (p?.volumeID === A.volumeID ? B : A);
  const plain = await plainVolumes(st.domain.vg, st.domain.lvmFilter, A.poolID, new Map(st.domain.volumes.map((v) => [v.volumeID, v.imageID])));
  const plainOf = (p: Pdiv): PlainVolume => {
    const v = plain.find((x) => x.volumeID === p.volumeID);
    if (v === undefined) throw new Error(`no geometry for ${p.volumeID}`);
    return v;
  };
  const direct = new DirectPath(loadVirt(), st.root);
  /** What the drive holds as the plain path sees it: the volume, its link and the device the link names. */
  const heldOf = (p: Pdiv): Held => {
    const v = plainOf(p);
    const link = join(st.root, 'mnt', 'blockSD', v.domainID, 'images', v.imageID, v.volumeID);
    return { volume: v, link, device: readlinkSync(link) };
  };

  let vm: BenchVm | null = null;
  let forms = new MetadataForms(null);
  let holding: Pdiv | null = null;
  let onVm = 0;
  let vmsUsed = 0;

  type Mode = 'worker' | 'direct' | 'adapters';
  const ms: Record<Mode, number[]> = { worker: [], direct: [], adapters: [] };
  const wSteps: Map<StepName, number>[] = [];
  const dSteps: DirectTimes[] = [];
  const aSteps: DirectTimes[] = [];

  /** One change A↔B in `mode`; its times, or null for the unmeasured first of a batch. */
  const changeBy = async (mode: Mode, measured: boolean): Promise<void> => {
    const cur = vm as unknown as BenchVm;
    const from = holding;
    const to = other(from);
    if (mode === 'worker') {
      w.steps.take();
      const r = await w.change(cur.uuid, to, STEP_TIMEOUT);
      const steps = w.steps.take();
      if (measured) {
        wSteps.push(steps);
        ms.worker.push(r.ms);
      }
    } else if (mode === 'direct') {
      const r = await withTimeout(direct.change(cur.domain, from === null ? null : heldOf(from), plainOf(to)), STEP_TIMEOUT, `direct change on ${cur.name}`);
      if (measured) {
        dSteps.push(r.times);
        ms.direct.push(r.times.total);
      }
    } else {
      const t = await adapterChange(w.hypervisor, w.storage, forms, cur.uuid, from, to);
      if (measured) {
        aSteps.push(t);
        ms.adapters.push(t.total);
      }
    }
    holding = to;
    onVm += 1;
  };

  const freshVm = async (): Promise<void> => {
    if (vm !== null) await vms.destroy(vm.name);
    vm = await vms.create(cleanup);
    vmsUsed += 1;
    forms = new MetadataForms(await w.hypervisor.getMetadata(vm.uuid, OVIRT_VM_NS));
    holding = null;
    onVm = 0;
    // the first load of a fresh VM (and the JIT) is not what is measured
    for (const mode of ['worker', 'direct', 'adapters'] as const) await changeBy(mode, false);
    await sleep(500);
  };

  const ORDERS: readonly (readonly Mode[])[] = [
    ['worker', 'direct', 'adapters'],
    ['direct', 'adapters', 'worker'],
    ['adapters', 'worker', 'direct'],
  ];
  await freshVm();
  for (let round = 0; (['worker', 'direct', 'adapters'] as const).some((m) => ms[m].length < opts.changes); round++) {
    if (onVm + 3 * (opts.batch + 1) > opts.perVm) await freshVm();
    for (const mode of ORDERS[round % ORDERS.length] as readonly Mode[]) {
      const n = Math.min(opts.batch, opts.changes - ms[mode].length);
      if (n === 0) continue;
      await changeBy(mode, false);
      for (let i = 0; i < n; i++) await changeBy(mode, true);
    }
    process.stderr.write(`overhead: ${ms.worker.length}/${opts.changes} worker, ${ms.direct.length} direct, ${ms.adapters.length} adapters (VM ${vmsUsed})\n`);
  }

  const stat = (xs: number[]): Stat => ({ p50: round(median(xs)), p99: round(quantile(xs, 0.99)), mean: round(xs.reduce((a, b) => a + b, 0) / xs.length) });
  const wStat = stat(ms.worker);
  const dStat = stat(ms.direct);
  const workerSteps: Record<string, number> = {};
  for (const name of ['inspect', 'writeJournal', 'editMetadata', 'prepareVolume', 'updateDevice', 'teardownVolume', 'recover'] as StepName[]) {
    const xs = wSteps.map((m) => m.get(name) ?? 0);
    if (xs.some((x) => x > 0)) workerSteps[name] = round(median(xs));
  }
  workerSteps['busAndMachine'] = round(median(wSteps.map((m, i) => (ms.worker[i] as number) - [...m.values()].reduce((a, b) => a + b, 0))));
  const partsOf = (ts: DirectTimes[]): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const k of ['metadata', 'prepare', 'update', 'teardown'] as const) out[k] = round(median(ts.map((t) => t[k])));
    return out;
  };
  return {
    changes: opts.changes,
    ...(sink === null ? {} : { tracing: { exports: sink.stats.requests, kb: round(sink.stats.bytes / 1024, 0) } }),
    batch: opts.batch,
    vmsUsed,
    worker: wStat,
    direct: dStat,
    adapters: stat(ms.adapters),
    addedP50: round(wStat.p50 - dStat.p50),
    addedP99: round(wStat.p99 - dStat.p99),
    ratioP50: round(wStat.p50 / dStat.p50, 3),
    ratioP99: round(wStat.p99 / dStat.p99, 3),
    workerSteps,
    directSteps: partsOf(dSteps),
    adapterSteps: partsOf(aSteps),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('overhead', (cleanup) => overhead(cleanup, { changes: CHANGES, batch: BATCH, perVm: PER_VM, tracing: TRACING }));
}
