import { performance } from 'node:perf_hooks';
import type { Pdiv } from '../src/domain/media.js';
import { holdFaultLock, qemuPid } from '../test/support/faults.js';
import { argInt, median, quantile, round, runSection, sleep, type Cleanup } from './lib/common.js';
import { BenchStorage, BenchVms, takeHostLock } from './lib/real-env.js';
import { startRealWorker, type RealWorker } from './lib/real-worker.js';

/**
 * Item 6: a hung VM delays only its own drives (CONTRACT 9). Two real VMs, one real
 * worker with `CDROM_STEP_TIMEOUT_MS` short (2 s by default). The other VM's change A↔B
 * is measured while the first VM's QEMU is stopped (SIGSTOP) for `hangMs` with three
 * commands queued for its drive — the step timeout expires during the hang, and the
 * worker's retries, hung calls and libvirt connection are all in play — and with nothing
 * wrong, half before the hang and half after it; all paced alike, one change per
 * `hangMs / changes`. SIGCONT in `finally` and in the section's cleanup (Ctrl-C).
 * Target: p50 during the hang ≤ 1.2 × p50 without it.
 */

export interface LatencyStats {
  readonly n: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

export interface HungResult {
  readonly changes: number;
  readonly hangMs: number;
  readonly stepTimeoutMs: number;
  readonly normal: LatencyStats;
  readonly hung: LatencyStats;
  readonly ratioP50: number;
  readonly ratioP99: number;
  /** the hung VM's three commands, after SIGCONT: outcome and ms from SIGSTOP to its event */
  readonly hungVm: { readonly outcome: string; readonly ms: number }[];
}

const argv = process.argv.slice(2);

const stats = (xs: number[]): LatencyStats => ({ n: xs.length, p50: round(median(xs)), p99: round(quantile(xs, 0.99)), max: round(Math.max(...xs)) });

/**
 * `n` changes of `vmId` between `vols`, one every `everyMs` (or right after the previous
 * when slower), none started after `until` (performance.now()).
 */
async function paced(w: RealWorker, vmId: string, vols: [Pdiv, Pdiv], holding: { p: Pdiv }, n: number, everyMs: number, until = Infinity): Promise<number[]> {
  const lat: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n && performance.now() < until; i++) {
    const to = holding.p.volumeID === vols[0].volumeID ? vols[1] : vols[0];
    const { ms } = await w.change(vmId, to, 120_000);
    lat.push(ms);
    holding.p = to;
    const next = t0 + (i + 1) * everyMs;
    await sleep(Math.max(0, next - performance.now()));
  }
  return lat;
}

export async function hung(cleanup: Cleanup, opts: { changes: number; hangMs: number; stepTimeoutMs: number }): Promise<HungResult> {
  // stopping a QEMU makes libvirtd's job on it wait: others' measurements would suffer, and ours from theirs
  const releaseFaultLock = await holdFaultLock(900_000);
  cleanup.add('fault lock', releaseFaultLock);
  await takeHostLock(cleanup, 900_000);
  const st = await BenchStorage.create(4, cleanup);
  const vms = await BenchVms.open(cleanup);
  const [stuck, other] = await Promise.all([vms.create(cleanup), vms.create(cleanup)]);
  const w = await startRealWorker(st, cleanup, { stepTimeoutMs: opts.stepTimeoutMs, retry: { limit: 30, baseMs: 200, maxMs: 1000 } });
  const vols: [Pdiv, Pdiv] = [st.pdiv(2), st.pdiv(3)];
  const holding = { p: vols[0] };
  await w.change(other.uuid, vols[0], 60_000);
  await paced(w, other.uuid, vols, holding, 4, 0); // warm-up, not measured
  const everyMs = opts.hangMs / opts.changes;

  // half of the baseline before the hang and half after it, so that a drift of the shared machine's load does not pass for the hang's effect
  const half = Math.ceil(opts.changes / 2);
  process.stderr.write(`hung: ${half} changes without a hang\n`);
  const normal = await paced(w, other.uuid, vols, holding, half, everyMs);

  const pid = qemuPid(stuck.name);
  let stopped = false;
  const cont = (): void => {
    if (stopped) process.kill(pid, 'SIGCONT');
    stopped = false;
  };
  cleanup.add(`SIGCONT of ${stuck.name}'s QEMU`, () => Promise.resolve(cont()));
  process.stderr.write(`hung: SIGSTOP ${stuck.name}'s QEMU (${pid}) for ${opts.hangMs} ms; ${opts.changes} changes of the other VM\n`);
  const t0 = performance.now();
  process.kill(pid, 'SIGSTOP');
  stopped = true;
  let queued: Promise<{ outcome: string; ms: number }>[] = [];
  let during: number[];
  try {
    queued = [st.pdiv(0), st.pdiv(1), null].map((m) =>
      w.change(stuck.uuid, m, opts.hangMs + 120_000).then(
        () => ({ outcome: 'completed', ms: round(performance.now() - t0) }),
        (err: unknown) => ({ outcome: err instanceof Error ? err.message : String(err), ms: round(performance.now() - t0) }),
      ),
    );
    during = await paced(w, other.uuid, vols, holding, opts.changes, everyMs, t0 + opts.hangMs);
    await sleep(Math.max(0, opts.hangMs - (performance.now() - t0)));
  } finally {
    cont();
  }
  const hungVm = await Promise.all(queued);
  process.stderr.write(`hung: ${opts.changes - half} changes without a hang\n`);
  normal.push(...(await paced(w, other.uuid, vols, holding, opts.changes - half, everyMs)));
  const n = stats(normal);
  const h = stats(during);
  return { changes: opts.changes, hangMs: opts.hangMs, stepTimeoutMs: opts.stepTimeoutMs, normal: n, hung: h, ratioP50: round(h.p50 / n.p50), ratioP99: round(h.p99 / n.p99), hungVm };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runSection('hung', (cleanup) => hung(cleanup, { changes: argInt(argv, 'changes', 40), hangMs: argInt(argv, 'hang-ms', 25_000), stepTimeoutMs: argInt(argv, 'step-timeout-ms', 2000) }));
}
