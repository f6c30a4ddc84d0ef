import { performance } from 'node:perf_hooks';
import type { Pdiv } from '../src/domain/media.js';
import { argInt, median, quantile, round, runSection, sleep, type Cleanup } from './lib/common.js';
import { BenchStorage, BenchVms, takeHostLock, type BenchVm } from './lib/real-env.js';
import { startRealWorker, type RealWorker } from './lib/real-worker.js';

/**
 * Item 5: real parallelism. `vms` real VMs, each alternating between its own two ISO
 * volumes, one change after another per VM (closed loop), all VMs at once through one
 * worker — against the same per-VM chain on one VM alone, in the same run: rounds of
 * `round` changes alternate between the single-VM phase and the all-VMs phase.
 */

export interface PhaseStats {
  readonly changes: number;
  readonly seconds: number;
  readonly perSec: number;
  readonly p50: number;
  readonly p99: number;
}

export interface ParallelResult {
  readonly vms: number;
  readonly perVm: number;
  readonly round: number;
  readonly single: PhaseStats;
  readonly parallel: PhaseStats;
  readonly speedup: number;
}

const argv = process.argv.slice(2);

interface Lane {
  readonly vm: BenchVm;
  readonly vols: [Pdiv, Pdiv];
  holding: Pdiv | null;
}

async function chain(w: RealWorker, lane: Lane, n: number, lat: number[]): Promise<void> {
  for (let i = 0; i < n; i++) {
    const to = lane.holding?.volumeID === lane.vols[0].volumeID ? lane.vols[1] : lane.vols[0];
    const { ms } = await w.change(lane.vm.uuid, to, 120_000);
    lat.push(ms);
    lane.holding = to;
  }
}

export async function parallel(cleanup: Cleanup, opts: { vms: number; perVm: number; round: number }): Promise<ParallelResult> {
  await takeHostLock(cleanup, 900_000);
  const st = await BenchStorage.create(2 * opts.vms, cleanup);
  const vms = await BenchVms.open(cleanup);
  const made: BenchVm[] = [];
  // a few at a time: eight TCG boots at once starve everything else for seconds
  for (let i = 0; i < opts.vms; i += 4) made.push(...(await Promise.all(Array.from({ length: Math.min(4, opts.vms - i) }, () => vms.create(cleanup)))));
  const w = await startRealWorker(st, cleanup, { concurrency: 16 });
  const lanes: Lane[] = made.map((vm, i) => ({ vm, vols: [st.pdiv(2 * i), st.pdiv(2 * i + 1)], holding: null }));
  // first load of every VM (and the JIT) is not measured
  await Promise.all(lanes.map((l) => chain(w, l, 2, [])));
  await sleep(500);

  const single = { lat: [] as number[], ms: 0 };
  const par = { lat: [] as number[], ms: 0 };
  for (let done = 0, r = 0; done < opts.perVm; r++) {
    const n = Math.min(opts.round, opts.perVm - done);
    const runSingle = async (): Promise<void> => {
      const t0 = performance.now();
      await chain(w, lanes[0] as Lane, n, single.lat);
      single.ms += performance.now() - t0;
    };
    const runPar = async (): Promise<void> => {
      const t0 = performance.now();
      await Promise.all(lanes.map((l) => chain(w, l, n, par.lat)));
      par.ms += performance.now() - t0;
    };
    if (r % 2 === 0) {
      await runSingle();
      await runPar();
    } else {
      await runPar();
      await runSingle();
    }
    done += n;
    process.stderr.write(`parallel: ${done}/${opts.perVm} per VM\n`);
  }
  const stats = (p: { lat: number[]; ms: number }): PhaseStats => ({
    changes: p.lat.length,
    seconds: round(p.ms / 1000),
    perSec: round(p.lat.length / (p.ms / 1000)),
    p50: round(median(p.lat)),
    p99: round(quantile(p.lat, 0.99)),
  });
  const s = stats(single);
  const p = stats(par);
  return { vms: opts.vms, perVm: opts.perVm, round: opts.round, single: s, parallel: p, speedup: round(p.perSec / s.perSec) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('parallel', (cleanup) => parallel(cleanup, { vms: argInt(argv, 'vms', 8), perVm: argInt(argv, 'per-vm', 100), round: argInt(argv, 'round', 10) }));
}
