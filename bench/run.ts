import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Cleanup, RESULT_PREFIX, argValue } from './lib/common.js';
import { topEntries, type ProfileEntry } from './lib/profile.js';
import { sweepLeftovers } from './lib/real-env.js';
import type { OverheadResult } from './overhead.bench.js';
import type { ParallelResult } from './parallel.bench.js';
import type { RecoveryResult } from './recovery.bench.js';
import type { MemoryResult } from './memory.bench.js';
import type { ThroughputResult } from './throughput.bench.js';
import type { HungResult } from './hung.bench.js';
import type { OpenersResult } from './openers.bench.js';
import type { BootstormResult } from './bootstorm.bench.js';

/**
 * `npm run bench`: every section runs in its own Node process (clean heap for the
 * memory figures, one CPU profile per section, and a crash or Ctrl-C in one cleans up
 * its own VMs, storage and queues), then bench/results.json and a markdown table.
 *
 *   npm run bench                      the full run (what results.json records)
 *   npm run bench -- --quick           items 1, 2 and the boot storm with smaller counts (≤ 3 min)
 *   npm run bench -- --quick --all     every section with smaller counts
 *   npm run bench -- --only overhead,memory
 *   npm run bench -- hung               the same: sections named as arguments
 *   npm run bench -- --only openers    loop attach/detach and the opener check (no VMs, ~20 s)
 *   npm run bench -- --profile         also node --cpu-prof of overhead and throughput
 *   npm run bench -- --only overhead,throughput --tracing
 *                                      also runs them with tracing on (OTLP/HTTP to a local
 *                                      sink): overhead-tracing, throughput-tracing
 *   npm run bench -- --only memory --in-process   the memory sections with the fakes in
 *                                      the worker's process (default: their own process)
 *   BENCH_QUICK=1, BENCH_ONLY=…, BENCH_PROFILE=1, BENCH_TRACING=1 do the same; BENCH_NO_LOCK=1 skips the
 *   end-to-end lock (faster while others run e2e tests, but their workers may then
 *   reconcile the bench VMs mid-change).
 * Counts can be overridden per section, e.g. `--overhead-changes 300 --parallel-per-vm 50`.
 * A run of some sections only keeps the other sections' figures from the results file it
 * writes (`merged` names them with the run they come from), so the file stays one table.
 */

const BENCH = resolve(import.meta.dirname);
const argv = process.argv.slice(2);
const quick = argv.includes('--quick') || process.env['BENCH_QUICK'] === '1';
const profile = argv.includes('--profile') || process.env['BENCH_PROFILE'] === '1';
const fakesInProcess = argv.includes('--in-process');
const tracing = argv.includes('--tracing') || process.env['BENCH_TRACING'] === '1';
const everything = argv.includes('--all');
const SECTION_NAMES = ['overhead', 'throughput', 'recovery', 'memory', 'memory-ttl0', 'parallel', 'hung', 'bootstorm', 'openers', 'overhead-tracing', 'throughput-tracing'] as const;
const named = argv.filter((a, i) => (SECTION_NAMES as readonly string[]).includes(a) && argv[i - 1] !== '--only');
const only = [...(argValue(argv, 'only') ?? process.env['BENCH_ONLY'] ?? '').split(',').filter(Boolean), ...named];
const out = argValue(argv, 'out') ?? join(BENCH, quick ? 'results.quick.json' : 'results.json');

type SectionName = (typeof SECTION_NAMES)[number];

interface Section {
  readonly name: SectionName;
  /** a variant of this section (same counts, same `--<base>-<arg>` overrides) */
  readonly base?: SectionName;
  readonly file: string;
  readonly args: Record<string, number>;
  readonly nodeFlags?: readonly string[];
  readonly profiled?: boolean;
  /** run as compiled JS on plain node (tsconfig.bench.json), the way the worker runs dist/ */
  readonly compiled?: boolean;
}

const SECTIONS: readonly Section[] = [
  { name: 'throughput', file: 'throughput.run.ts', args: quick ? { total: 5000, drives: 1000, concurrency: 16, rounds: 1 } : { total: 20_000, drives: 1000, concurrency: 16, rounds: 3 }, profiled: true },
  { name: 'memory', file: 'memory.bench.ts', args: quick ? { commands: 5000, drives: 2500 } : { commands: 20_000, drives: 10_000 }, nodeFlags: ['--expose-gc'], compiled: true },
  { name: 'memory-ttl0', file: 'memory.bench.ts', args: quick ? { commands: 5000, drives: 2500, 'idle-ttl': 0 } : { commands: 20_000, drives: 10_000, 'idle-ttl': 0 }, nodeFlags: ['--expose-gc'], compiled: true },
  { name: 'recovery', file: 'recovery.bench.ts', args: quick ? { domains: 1000, 'real-vms': 3, rounds: 2 } : { domains: 1000, 'real-vms': 10, rounds: 5 } },
  // quick: 100 changes, so that p99 is not simply the slowest one
  { name: 'overhead', file: 'overhead.bench.ts', args: quick ? { changes: 100, batch: 10, 'per-vm': 150 } : { changes: 200, batch: 10, 'per-vm': 150 }, profiled: true },
  // --tracing: items 1 and 2 again with every command traced (run after the untraced ones)
  { name: 'overhead-tracing', base: 'overhead', file: 'overhead.bench.ts', args: quick ? { changes: 20, batch: 5, 'per-vm': 150, tracing: 1 } : { changes: 200, batch: 10, 'per-vm': 150, tracing: 1 } },
  { name: 'throughput-tracing', base: 'throughput', file: 'throughput.run.ts', args: quick ? { total: 5000, drives: 1000, concurrency: 16, rounds: 1, tracing: 1 } : { total: 20_000, drives: 1000, concurrency: 16, rounds: 3, tracing: 1 } },
  { name: 'parallel', file: 'parallel.bench.ts', args: quick ? { vms: 4, 'per-vm': 10, round: 5 } : { vms: 8, 'per-vm': 100, round: 10 } },
  { name: 'hung', file: 'hung.bench.ts', args: { changes: quick ? 30 : 40, 'hang-ms': 25_000, 'step-timeout-ms': 2000 } },
  { name: 'bootstorm', file: 'bootstorm.bench.ts', args: { vms: 40, concurrency: 16, rounds: quick ? 1 : 5, 'memory-mib': 64, paused: 1, 'create-concurrency': 8, probes: quick ? 0 : 1 } },
  { name: 'openers', file: 'openers.bench.ts', args: quick ? { checks: 300, rounds: 50 } : { checks: 2000, rounds: 200 } },
];

let current: ChildProcess | null = null;
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    // The child cleans up on its own SIGINT (same process group on Ctrl-C); a SIGTERM
    // sent to this process alone is passed on. Then no further section starts.
    interrupted = true;
    if (sig === 'SIGTERM') current?.kill('SIGTERM');
    process.stderr.write(`bench: ${sig}; waiting for the running section to clean up\n`);
  });
}

const ROOT = resolve(BENCH, '..');
const COMPILED = join(ROOT, '.bench-dist');
let compiling: Promise<void> | undefined;

/** tsc -p tsconfig.bench.json once per run; a tree that does not typecheck fails the sections that need it. */
function compileBench(): Promise<void> {
  return (compiling ??= new Promise<void>((done, fail) => {
    execFile(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.bench.json')], { cwd: ROOT, maxBuffer: 16 * 2 ** 20 }, (err, stdout) => {
      if (err === null) done();
      else fail(new Error(`tsc -p tsconfig.bench.json failed:\n${stdout.split('\n').slice(0, 20).join('\n')}`));
    });
  }));
}

async function runChild(s: Section): Promise<{ result: unknown; profile?: { totalMs: number; idleMs: number; entries: ProfileEntry[] } }> {
  const args: string[] = [];
  for (const [k, v] of Object.entries(s.args)) {
    const override = argValue(argv, `${s.name}-${k}`) ?? (s.base === undefined ? undefined : argValue(argv, `${s.base}-${k}`));
    args.push(`--${k}`, override ?? String(v));
  }
  if (fakesInProcess && s.file === 'memory.bench.ts') args.push('--in-process');
  const profDir = join(BENCH, 'profiles', s.name);
  const flags = [...(s.nodeFlags ?? [])];
  if (profile && s.profiled === true) {
    await rm(profDir, { recursive: true, force: true });
    await mkdir(profDir, { recursive: true });
    flags.push('--cpu-prof', `--cpu-prof-dir=${profDir}`);
  }
  if (s.compiled === true) await compileBench();
  const entry = s.compiled === true ? [join(COMPILED, 'bench', s.file.replace(/\.ts$/, '.js'))] : ['--import', 'tsx', join(BENCH, s.file)];
  const child = spawn(process.execPath, [...flags, ...entry, ...args], {
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env['UV_THREADPOOL_SIZE'] ?? '16' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  current = child;
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  const code = await new Promise<number | null>((done) => child.on('exit', (c) => done(c)));
  current = null;
  const line = stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  if (code !== 0 || line === undefined) throw new Error(`section ${s.name} exited with ${code}`);
  const result: unknown = JSON.parse(line.slice(RESULT_PREFIX.length));
  return profile && s.profiled === true && existsSync(profDir) ? { result, profile: await topEntries(profDir) } : { result };
}

interface Row {
  readonly item: string;
  readonly metric: string;
  readonly value: string;
  readonly baseline: string;
  readonly target: string;
  readonly pass: boolean | null;
}

function rows(r: Partial<Record<SectionName, unknown>>): Row[] {
  const out: Row[] = [];
  const ms = (x: number): string => `${x.toFixed(1)} ms`;
  const o = r.overhead as OverheadResult | undefined;
  if (o) {
    const x = (v: number): string => `${v.toFixed(2)}×`;
    out.push({ item: '1 overhead', metric: `change A↔B on a real VM, p50 (n=${o.changes})`, value: ms(o.worker.p50), baseline: `${ms(o.direct.p50)} direct (plain)`, target: '≤ 1.1× direct', pass: o.ratioP50 <= 1.1 });
    out.push({ item: '1 overhead', metric: `change A↔B on a real VM, p99 (n=${o.changes})`, value: ms(o.worker.p99), baseline: `${ms(o.direct.p99)} direct (plain)`, target: '≤ 1.3× direct', pass: o.ratioP99 <= 1.3 });
    out.push({ item: '1 overhead', metric: 'worker / direct, p50 / p99', value: `${x(o.ratioP50)} / ${x(o.ratioP99)}`, baseline: `added ${ms(o.addedP50)} / ${ms(o.addedP99)}`, target: '≤ 1.1× / ≤ 1.3×', pass: o.ratioP50 <= 1.1 && o.ratioP99 <= 1.3 });
    if (o.adapters !== undefined) out.push({ item: '1 overhead', metric: "the same flow through the project's adapters, called directly, p50 / p99", value: `${ms(o.adapters.p50)} / ${ms(o.adapters.p99)}`, baseline: `${ms(o.direct.p50)} / ${ms(o.direct.p99)} direct`, target: 'report', pass: null });
    const steps = Object.entries(o.workerSteps).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    const dsteps = Object.entries(o.directSteps).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    out.push({ item: '1 overhead', metric: 'breakdown, median ms per change', value: `worker: ${steps}`, baseline: `direct: ${dsteps}`, target: '', pass: null });
    if (o.adapterSteps !== undefined) out.push({ item: '1 overhead', metric: 'breakdown of the adapter line, median ms per change', value: Object.entries(o.adapterSteps).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', '), baseline: '', target: '', pass: null });
  }
  const ot = r['overhead-tracing'] as OverheadResult | undefined;
  if (ot) {
    const off = o === undefined ? '' : ` (off: ${ms(o.addedP50)} / ${ms(o.addedP99)})`;
    out.push({ item: '1 overhead', metric: `tracing on: change A↔B, p50 / p99 (n=${ot.changes}; OTLP/HTTP to a local sink, ${ot.tracing?.exports ?? 0} exports)`, value: `${ms(ot.worker.p50)} / ${ms(ot.worker.p99)}`, baseline: `${ms(ot.direct.p50)} / ${ms(ot.direct.p99)} direct`, target: '', pass: null });
    out.push({ item: '1 overhead', metric: 'tracing on: added by the worker at p50 / p99', value: `${ms(ot.addedP50)} / ${ms(ot.addedP99)}`, baseline: off, target: 'report', pass: null });
  }
  const t = r.throughput as ThroughputResult | undefined;
  if (t) {
    out.push({ item: '2 throughput', metric: `${t.commands} commands, ${t.drives} drives, concurrency ${t.concurrency} (fakes)`, value: `${t.workerPerSec.toFixed(0)}/s`, baseline: `${t.barePerSec.toFixed(0)}/s bare loop`, target: '≥ 3,000/s', pass: t.workerPerSec >= 3000 });
    out.push({ item: '2 throughput', metric: 'worker / bare amqplib loop', value: t.ratio.toFixed(2), baseline: '', target: '≥ 0.5', pass: t.ratio >= 0.5 });
  }
  const tt = (r['throughput-tracing'] as ThroughputResult | undefined)?.tracing;
  if (tt) {
    out.push({ item: '2 throughput', metric: `tracing on: instrumented worker, every command traced (OTLP/HTTP to a local sink, ${tt.exports} exports, ${tt.kb} KiB)`, value: `${tt.tracedPerSec.toFixed(0)}/s`, baseline: `${tt.untracedPerSec.toFixed(0)}/s untraced, same rounds`, target: '≥ 3,000/s', pass: tt.tracedPerSec >= 3000 });
    out.push({ item: '2 throughput', metric: 'tracing on / off', value: tt.ratio.toFixed(2), baseline: '', target: 'report', pass: null });
  }
  const rec = r.recovery as RecoveryResult | undefined;
  if (rec) {
    out.push({ item: '3 recovery', metric: `reconcileAll, ${rec.fake.domains} fake domains (${rec.fake.pending} half-done)`, value: ms(rec.fake.p50Ms), baseline: `max ${ms(rec.fake.maxMs)}`, target: '< 1 s', pass: rec.fake.p50Ms < 1000 });
    if (rec.real) out.push({ item: '3 recovery', metric: `reconcileAll, ${rec.real.domains} real VMs (${rec.real.pending} half-done)`, value: ms(rec.real.p50Ms), baseline: `max ${ms(rec.real.maxMs)}`, target: '< 300 ms', pass: rec.real.p50Ms < 300 });
  }
  const mb = (x: number): string => `${x.toFixed(0)} MB`;
  const signedMb = (x: number): string => `${x < 0 ? '−' : '+'}${mb(Math.abs(x))}`;
  const idleAt = (m: MemoryResult, s: number): string => mb(m.idle.filter((x) => x.ms <= s * 1000 + 250).at(-1)?.rssMb ?? NaN);
  const m = r.memory as MemoryResult | undefined;
  if (m) {
    const window = `+${((m.idle.at(-1)?.ms ?? 0) / 1000).toFixed(0)} s`;
    const where = m.host === null ? 'fakes in-process' : 'fakes in a child process';
    out.push({ item: '4 memory', metric: `RSS after ${m.commands} commands over ${m.drives} drives (${m.commandsPerSec}/s, ${m.runtime}, ${where}), after GC (peak)`, value: `${mb(m.afterRssMb)} (peak ${mb(m.peakRssMb)})`, baseline: `${mb(m.startRssMb)} at start, ${mb(m.afterRawRssMb)} before GC`, target: '< 150 MB', pass: m.afterRssMb < 150 && m.peakRssMb < 150 });
    out.push({ item: '4 memory', metric: `RSS once the idle sweep stopped ${m.liveDrivesBeforeReap} actors, ${window} after GC`, value: `${mb(m.reapedRssMb)} (${signedMb(m.growthAfterReapMb)})`, baseline: `+2/+5/+10 s: ${idleAt(m, 2)}, ${idleAt(m, 5)}, ${idleAt(m, 10)}; ${mb(m.reapedNoGcRssMb)} before GC`, target: '≤ start + 20 MB', pass: m.liveDrivesAfter === 0 && m.growthAfterReapMb <= 20 });
    if (m.host === null) out.push({ item: '4 memory', metric: 'heap used, start → once idle; of it the fakes (the hypervisor\'s state)', value: `${mb(m.heapUsedStartMb)} → ${mb(m.heapUsedReapedMb)}`, baseline: `fakes ${mb(m.fakeStateMb)}, the rest ${mb(m.heapUsedWithoutFakesMb)}`, target: '', pass: null });
    else out.push({ item: '4 memory', metric: 'heap used, start → once idle; the fakes\' process (the hypervisor\'s state), informative', value: `${mb(m.heapUsedStartMb)} → ${mb(m.heapUsedReapedMb)}`, baseline: `fakes: RSS ${mb(m.host.startRssMb)} → ${mb(m.host.rssMb)} (peak ${mb(m.host.peakRssMb)}), VMs' heap ${mb(m.fakeStateMb)}`, target: '', pass: null });
  }
  const m0 = r['memory-ttl0'] as MemoryResult | undefined;
  if (m0) {
    out.push({ item: '4 memory', metric: `same with idleTtlMs 0 (${m0.commandsPerSec}/s, informative)`, value: `${mb(m0.afterRssMb)} (peak ${mb(m0.peakRssMb)})`, baseline: `${mb(m0.reapedRssMb)} (${signedMb(m0.growthAfterReapMb)}) once idle`, target: '', pass: null });
  }
  const p = r.parallel as ParallelResult | undefined;
  if (p) {
    out.push({ item: '5 parallel', metric: `${p.vms} real VMs × ${p.perVm} changes, interleaved`, value: `${p.parallel.perSec.toFixed(1)} changes/s, p99 ${ms(p.parallel.p99)}`, baseline: `1 VM: ${p.single.perSec.toFixed(1)}/s, p99 ${ms(p.single.p99)}`, target: 'report', pass: null });
    out.push({ item: '5 parallel', metric: 'speedup over one VM', value: `${p.speedup.toFixed(2)}×`, baseline: `p50 ${ms(p.parallel.p50)} vs ${ms(p.single.p50)}`, target: 'report', pass: null });
  }
  const hv = r.hung as HungResult | undefined;
  if (hv) {
    const during = `${hv.hangMs / 1000} s SIGSTOP of the other VM's QEMU, 3 commands queued for it, step timeout ${hv.stepTimeoutMs / 1000} s`;
    out.push({ item: '6 hung VM', metric: `change A↔B on a real VM during a ${during}, p50 (n=${hv.hung.n})`, value: ms(hv.hung.p50), baseline: `${ms(hv.normal.p50)} without (n=${hv.normal.n})`, target: '≤ 1.2×', pass: hv.ratioP50 <= 1.2 });
    out.push({ item: '6 hung VM', metric: 'same, p99 (max)', value: `${ms(hv.hung.p99)} (${ms(hv.hung.max)})`, baseline: `${ms(hv.normal.p99)} (${ms(hv.normal.max)})`, target: 'report', pass: null });
    out.push({ item: '6 hung VM', metric: "the hung VM's commands after SIGCONT (ms from SIGSTOP)", value: hv.hungVm.map((c) => `${c.outcome === 'completed' ? 'completed' : 'FAILED'} ${(c.ms / 1000).toFixed(1)} s`).join(', '), baseline: '', target: 'report', pass: null });
  }
  const bs = r.bootstorm as BootstormResult | undefined;
  if (bs) {
    const lanes = `${bs.concurrency} at once`;
    out.push({ item: '7 boot storm', metric: `${bs.vms} VMs (${bs.memoryMiB} MiB, no disk, ${bs.vcpus}) each load a different ISO at once, all done (median of ${bs.rounds})`, value: ms(bs.worker.allDoneMs), baseline: `${ms(bs.bestDirectParallel.allDoneMs)} direct ${lanes}; ${ms(bs.directSequential.allDoneMs)} one after another`, target: 'all done ≤ 1.5× best direct parallel', pass: bs.ratio <= 1.5 });
    out.push({ item: '7 boot storm', metric: 'worker / best direct parallel', value: `${bs.ratio.toFixed(2)}×`, baseline: '', target: '≤ 1.5×', pass: bs.ratio <= 1.5 });
    out.push({ item: '7 boot storm', metric: `p99 of each load's time from the storm's start (n=${bs.vms * bs.rounds})`, value: ms(bs.worker.p99), baseline: `${ms(bs.directParallel.p99)} direct ${lanes}; ${ms(bs.directSequential.p99)} one after another`, target: 'report', pass: null });
    const sp = (c: { speedup: number }): string => `${c.speedup.toFixed(1)}×`;
    const pr = bs.probes;
    if (pr) out.push({ item: '7 boot storm', metric: `each step alone, ${bs.vms} calls ${lanes} against one after another (1× = serialised)`, value: `losetup ${sp(pr.losetup)}, spawn ${sp(pr.spawn)}, updateDeviceFlags ${sp(pr.updateDevice)} (one connection ${sp(pr.updateDeviceOneConnection)}), setMetadata ${sp(pr.setMetadata)} (one connection ${sp(pr.setMetadataOneConnection)})`, baseline: '', target: 'report', pass: null });
  }
  const op = r.openers as OpenersResult | undefined;
  if (op) {
    const pp = (x: { p50: number; p99: number }): string => `${ms(x.p50)} / ${ms(x.p99)}`;
    out.push({ item: '8 loop', metric: `opener check, device nobody holds: every fd on the host (${op.hostFds} fds, ${op.hostProcesses} processes), p50 / p99 (n=${op.checks})`, value: pp(op.free), baseline: `${pp(op.oldScan)} old libuv scan`, target: '≤ 5 ms', pass: op.free.p50 <= 5 });
    out.push({ item: '8 loop', metric: 'opener check, device a child process holds, p50 / p99', value: pp(op.held), baseline: '', target: 'report', pass: null });
    out.push({ item: '8 loop', metric: 'event-loop delay during the checks, max (p99)', value: `${ms(op.maxLoopDelayMs)} (${ms(op.p99LoopDelayMs)})`, baseline: `${ms(op.oldScanMaxLoopDelayMs)} old scan; ${ms(op.idleMaxLoopDelayMs)} idle`, target: 'report', pass: null });
    out.push({ item: '8 loop', metric: `loop attach + detach, p50 / p99 (n=${op.rounds}, RSS ${op.rssMb} MB)`, value: `${pp(op.ioctl)} ioctls`, baseline: `${pp(op.losetup)} two losetup spawns`, target: 'report', pass: null });
    out.push({ item: '8 loop', metric: 'LoopActivator activate / deactivate (nobody holding it), p50', value: `${ms(op.activateP50)} / ${ms(op.deactivateP50)}`, baseline: '', target: 'report', pass: null });
  }
  return out;
}

function table(rs: Row[]): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const lines = ['| item | metric | value | baseline (same run) | target | pass |', '|---|---|---|---|---|---|'];
  for (const r of rs) lines.push(`| ${r.item} | ${esc(r.metric)} | ${esc(r.value)} | ${esc(r.baseline)} | ${r.target} | ${r.pass === null ? '' : r.pass ? 'PASS' : 'FAIL'} |`);
  return lines.join('\n');
}

/** `--quick` without a list: items 1, 2 and the boot storm, the run to repeat on every performance change (≤ 3 min). */
const QUICK_SET: readonly SectionName[] = ['overhead', 'throughput', 'bootstorm'];
const wanted = (name: SectionName): boolean => (only.length === 0 ? !quick || everything || QUICK_SET.includes(name) : only.includes(name));
const selected = SECTIONS.filter((s) =>
  s.base !== undefined ? only.includes(s.name) || (tracing && wanted(s.base)) : wanted(s.name) || (s.name === 'memory-ttl0' && only.includes('memory')),
);
const started = new Date();
const sweeper = new Cleanup();
const swept = await sweepLeftovers(sweeper).catch((err: unknown) => {
  process.stderr.write(`bench: sweeping leftovers failed: ${String(err)}\n`);
  return [] as string[];
});
await sweeper.runAll();
if (swept.length > 0) process.stderr.write(`bench: removed leftovers of killed runs: ${swept.join(', ')}\n`);

const results: Partial<Record<SectionName, unknown>> = {};
const profiles: Record<string, unknown> = {};
const failures: Record<string, string> = {};
for (const s of selected) {
  if (interrupted) break;
  process.stderr.write(`\n=== ${s.name} ===\n`);
  const t0 = Date.now();
  try {
    const r = await runChild(s);
    results[s.name] = r.result;
    if (r.profile) profiles[s.name] = r.profile;
    process.stderr.write(`=== ${s.name}: ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  } catch (err) {
    failures[s.name] = err instanceof Error ? err.message : String(err);
    process.stderr.write(`=== ${s.name} failed: ${failures[s.name]}\n`);
  }
}

// A partial run keeps the other sections' figures of the file it replaces (same mode).
const options: Record<string, unknown> = Object.fromEntries(selected.map((s) => [s.name, s.args]));
const merged: Record<string, string> = {};
if (only.length > 0 && existsSync(out)) {
  const previous = JSON.parse(await readFile(out, 'utf8')) as { startedAt?: string; mode?: string; results?: Record<string, unknown>; options?: Record<string, unknown>; profiles?: Record<string, unknown>; merged?: Record<string, string> };
  if (previous.mode === (quick ? 'quick' : 'full')) {
    for (const [name, result] of Object.entries(previous.results ?? {})) {
      if (name in results || selected.some((s) => s.name === name)) continue;
      (results as Record<string, unknown>)[name] = result;
      options[name] = previous.options?.[name];
      if (previous.profiles?.[name] !== undefined && !(name in profiles)) profiles[name] = previous.profiles[name];
      merged[name] = previous.merged?.[name] ?? previous.startedAt ?? '?';
    }
  }
}
const rs = rows(results);
const doc = {
  startedAt: started.toISOString(),
  finishedAt: new Date().toISOString(),
  mode: quick ? 'quick' : 'full',
  interrupted,
  machine: { cpus: cpus().length, node: process.version, kvm: existsSync('/dev/kvm'), uvThreadpool: process.env['UV_THREADPOOL_SIZE'] ?? '16' },
  options,
  merged,
  table: rs,
  results,
  failures,
  profiles,
};
await writeFile(out, `${JSON.stringify(doc, null, 2)}\n`);
process.stdout.write(`\n${table(rs)}\n\n`);
for (const [name, p] of Object.entries(profiles)) {
  const prof = p as { totalMs: number; idleMs: number; entries: ProfileEntry[] };
  process.stdout.write(`profile ${name}: ${prof.totalMs} ms sampled, ${prof.idleMs} ms idle; top self time:\n`);
  for (const e of prof.entries.slice(0, 12)) process.stdout.write(`  ${e.selfMs.toFixed(1).padStart(8)} ms ${e.selfPct.toFixed(1).padStart(5)}%  ${e.fn}  ${e.where}\n`);
}
process.stdout.write(`results: ${out}\n`);
if (Object.keys(failures).length > 0 || interrupted) process.exitCode = interrupted ? 130 : 1;
