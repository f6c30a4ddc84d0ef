import { performance } from 'node:perf_hooks';
import type { Pdiv } from '../src/domain/media.js';
import { VmMetadata } from '../src/domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type HypervisorPort, type StoragePort } from '../src/domain/ports.js';
import { argInt, median, quantile, round, runSection, sleep, withTimeout, type Cleanup } from './lib/common.js';
import { BenchStorage, BenchVms, takeHostLock, type BenchVm } from './lib/real-env.js';
import { startTraceSink } from './lib/trace-sink.js';
import { startRealWorker, type RealWorker, type StepName } from './lib/real-worker.js';

/**
 * Item 1: what the worker adds to one CD-ROM change on a real VM. Worker: a changeCD
 * published to the real broker → its result event received (real worker, libvirtd/QEMU,
 * loop-activated LVM). Baseline, in the same run on the same VM and adapters: the
 * unavoidable work called directly — the metadata writes the design page's change flow
 * makes (begin: old spec ejecting + new spec loading; after the load: new spec's state
 * removed; final: old spec removed), prepareVolume, updateDevice, teardownVolume of the
 * old volume. Both alternate A↔B in batches
 * (who goes first alternates too) so they see the same machine load. With `--tracing 1`
 * the worker traces every command (OTLP/HTTP export to a local sink, bench/lib/trace-sink.ts).
 */

export interface OverheadResult {
  readonly changes: number;
  /** tracing on: spans exported over OTLP/HTTP to a local sink (absent in older results: off) */
  readonly tracing?: { readonly exports: number; readonly kb: number };
  readonly batch: number;
  readonly vmsUsed: number;
  readonly worker: { p50: number; p99: number; mean: number };
  readonly direct: { p50: number; p99: number; mean: number };
  readonly addedP50: number;
  readonly addedP99: number;
  /** per-change medians (ms) of what the worker spent in each activity */
  readonly workerSteps: Record<string, number>;
  /** per-change medians (ms) of the direct baseline's parts */
  readonly directSteps: Record<string, number>;
}

const argv = process.argv.slice(2);
const CHANGES = argInt(argv, 'changes', 200);
const BATCH = argInt(argv, 'batch', 10);
/** libvirtd was seen to hang after ~500 changes on one TCG VM: a fresh VM after this many */
const PER_VM = argInt(argv, 'per-vm', 150);
const STEP_TIMEOUT = 60_000;
const TRACING = argInt(argv, 'tracing', 0) === 1;

interface DirectTimes {
  total: number;
  metadata: number;
  prepare: number;
  update: number;
  teardown: number;
}

/** Precomputed metadata the way the worker writes it, so the baseline does no parsing. */
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

async function directChange(h: HypervisorPort, s: StoragePort, forms: MetadataForms, vmId: string, from: Pdiv | null, to: Pdiv): Promise<DirectTimes> {
  const t: DirectTimes = { total: 0, metadata: 0, prepare: 0, update: 0, teardown: 0 };
  const lap = async <T>(k: Exclude<keyof DirectTimes, 'total'>, p: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const v = await withTimeout(p(), STEP_TIMEOUT, `direct ${k} on ${vmId}`);
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

  let vm: BenchVm | null = null;
  let forms = new MetadataForms(null);
  let holding: Pdiv | null = null;
  let onVm = 0;
  let vmsUsed = 0;

  const freshVm = async (): Promise<void> => {
    if (vm !== null) await vms.destroy(vm.name);
    vm = await vms.create(cleanup);
    vmsUsed += 1;
    forms = new MetadataForms(await w.hypervisor.getMetadata(vm.uuid, OVIRT_VM_NS));
    holding = null;
    onVm = 0;
    // the first load of a fresh VM (and the JIT) is not what is measured
    await w.change(vm.uuid, A);
    holding = A;
    const to = other(holding);
    await directChange(w.hypervisor, w.storage, forms, vm.uuid, holding, to);
    holding = to;
    onVm += 2;
    await sleep(500);
  };

  const workerMs: number[] = [];
  const directMs: number[] = [];
  const wSteps: Map<StepName, number>[] = [];
  const dSteps: DirectTimes[] = [];
  const runWorker = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const cur = vm as unknown as BenchVm;
      const to = other(holding);
      w.steps.take();
      const { ms } = await w.change(cur.uuid, to, STEP_TIMEOUT);
      wSteps.push(w.steps.take());
      workerMs.push(ms);
      holding = to;
      onVm += 1;
    }
  };
  const runDirect = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const cur = vm as unknown as BenchVm;
      const to = other(holding);
      const t = await directChange(w.hypervisor, w.storage, forms, cur.uuid, holding, to);
      dSteps.push(t);
      directMs.push(t.total);
      holding = to;
      onVm += 1;
    }
  };

  await freshVm();
  for (let round = 0; workerMs.length < opts.changes || directMs.length < opts.changes; round++) {
    if (onVm + 2 * opts.batch > opts.perVm) await freshVm();
    const nw = Math.min(opts.batch, opts.changes - workerMs.length);
    const nd = Math.min(opts.batch, opts.changes - directMs.length);
    if (round % 2 === 0) {
      await runWorker(nw);
      await runDirect(nd);
    } else {
      await runDirect(nd);
      await runWorker(nw);
    }
    process.stderr.write(`overhead: ${workerMs.length}/${opts.changes} worker, ${directMs.length}/${opts.changes} direct (VM ${vmsUsed})\n`);
  }

  const stat = (xs: number[]) => ({ p50: round(median(xs)), p99: round(quantile(xs, 0.99)), mean: round(xs.reduce((a, b) => a + b, 0) / xs.length) });
  const wStat = stat(workerMs);
  const dStat = stat(directMs);
  const workerSteps: Record<string, number> = {};
  for (const name of ['inspect', 'writeJournal', 'editMetadata', 'prepareVolume', 'updateDevice', 'teardownVolume', 'recover'] as StepName[]) {
    const xs = wSteps.map((m) => m.get(name) ?? 0);
    if (xs.some((x) => x > 0)) workerSteps[name] = round(median(xs));
  }
  workerSteps['busAndMachine'] = round(median(wSteps.map((m, i) => (workerMs[i] as number) - [...m.values()].reduce((a, b) => a + b, 0))));
  const directSteps: Record<string, number> = {};
  for (const k of ['metadata', 'prepare', 'update', 'teardown'] as const) directSteps[k] = round(median(dSteps.map((t) => t[k])));
  return {
    changes: opts.changes,
    ...(sink === null ? {} : { tracing: { exports: sink.stats.requests, kb: round(sink.stats.bytes / 1024, 0) } }),
    batch: opts.batch,
    vmsUsed,
    worker: wStat,
    direct: dStat,
    addedP50: round(wStat.p50 - dStat.p50),
    addedP99: round(wStat.p99 - dStat.p99),
    workerSteps,
    directSteps,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('overhead', (cleanup) => overhead(cleanup, { changes: CHANGES, batch: BATCH, perVm: PER_VM, tracing: TRACING }));
}
