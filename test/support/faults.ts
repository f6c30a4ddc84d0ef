import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import type { Media } from '../../src/domain/media.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { LIBVIRT_URI, REPO, ovirtVmMetadata, waitUntil, type Adapters, type E2eStorage } from './e2e.js';

/**
 * Fault injection for end-to-end tests (CONTRACT 9): libvirtd killed or stopped, one
 * VM's QEMU stopped. Processes are signalled only by pid — libvirtd's from its pid file,
 * a VM's QEMU from libvirt's — and each pid is checked to be what it should be first.
 * `Faults.restore()` puts every service back (SIGCONT what was stopped, libvirtd started
 * when it is not running); call it from `finally`. Free of vitest, like e2e.ts.
 */

const run = promisify(execFile);

export const FAULT_LOCK = '/tmp/cdrom-fault.lock';
const LIBVIRTD_PID_FILE = '/run/libvirtd.pid';
const START_SCRIPT = join(REPO, 'scripts/libvirt-start.sh');

// ---- the host-wide fault lock ------------------------------------------------------

/** pid → parent pid chain of this process, itself included. */
function ancestors(): number[] {
  const out: number[] = [];
  for (let pid = process.pid; pid > 1 && out.length < 64; ) {
    out.push(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

/** The mode in which one of our ancestors (e.g. `flock -x FILE npx vitest …`) holds `file`. */
function heldByAncestor(file: string): 'WRITE' | 'READ' | null {
  if (!existsSync(file)) return null;
  const inode = String(statSync(file).ino);
  const mine = new Set(ancestors());
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    // "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"; waiters have "->" in column 2
    if (f[1] !== 'FLOCK' || f[5]?.split(':')[2] !== inode) continue;
    if (mine.has(Number(f[4]))) return f[3] === 'WRITE' ? 'WRITE' : 'READ';
  }
  return null;
}

/**
 * Takes `flock -x /tmp/cdrom-fault.lock` for as long as the returned release has not run:
 * a child `flock` holds it, so the lock goes away with this process however it ends
 * (the child's stdin closes). Other agents' tests that share libvirtd run under
 * `flock -s` on the same file. When an ancestor already holds it exclusively (a manual
 * `flock -x … npx vitest run …`) there is nothing to take.
 */
export async function holdFaultLock(timeoutMs = 900_000): Promise<() => Promise<void>> {
  const ancestor = heldByAncestor(FAULT_LOCK);
  if (ancestor === 'WRITE') return () => Promise.resolve();
  if (ancestor === 'READ') throw new Error(`${FAULT_LOCK} is held shared by this process's parent: fault tests must run under flock -x`);
  const child = spawn('flock', ['-x', '-w', String(Math.ceil(timeoutMs / 1000)), FAULT_LOCK, 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
  await new Promise<void>((done, fail) => {
    child.stdout.once('data', () => done());
    void exited.then((code) => fail(new Error(`flock -x ${FAULT_LOCK} gave up (exit ${code}) after ${timeoutMs} ms`)));
  });
  return async () => {
    child.stdin.end();
    await exited;
  };
}

// ---- processes ---------------------------------------------------------------------

function procStat(pid: number): { comm: string; state: string } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return { comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), state: stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) };
  } catch {
    return null;
  }
}

/** Alive and not a zombie. */
export function running(pid: number): boolean {
  const s = procStat(pid);
  return s !== null && s.state !== 'Z' && s.state !== 'X';
}

/** libvirtd's pid from its pid file, when that process is alive and is libvirtd. */
export function libvirtdPid(): number | null {
  const pid = Number(existsSync(LIBVIRTD_PID_FILE) ? readFileSync(LIBVIRTD_PID_FILE, 'utf8').trim() : '');
  if (!Number.isInteger(pid) || pid <= 1) return null;
  const s = procStat(pid);
  return s !== null && s.comm === 'libvirtd' && running(pid) ? pid : null;
}

/** The QEMU process of the running domain `vmName` (libvirt's pid file, checked against its command line). */
export function qemuPid(vmName: string): number {
  const file = `/run/libvirt/qemu/${vmName}.pid`;
  const pid = Number(readFileSync(file, 'utf8').trim());
  const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  if (!cmdline.some((a) => a === `guest=${vmName}` || a.startsWith(`guest=${vmName},`))) throw new Error(`pid ${pid} from ${file} is not ${vmName}'s QEMU`);
  return pid;
}

const PLAIN_ENV = { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8' };

/** No thread of `pid` is left and it holds no lock any more (its pid file is free), zombie or not. */
function fullyExited(pid: number): boolean {
  if (!existsSync(`/proc/${pid}`)) return true;
  if (running(pid)) return false;
  const tasks = (() => {
    try {
      return readdirSync(`/proc/${pid}/task`).length;
    } catch {
      return 0;
    }
  })();
  const locks = readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .some((l) => l.trim().split(/\s+/)[4] === String(pid));
  return tasks <= 1 && !locks;
}

async function answers(): Promise<boolean> {
  try {
    await run('virsh', ['-q', '-c', LIBVIRT_URI, 'version'], { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * libvirtd running and answering, started with `libvirtd -d` as ENVIRONMENT.md says when
 * it is not. Measured here: a killed libvirtd stays a zombie for a while (pid 1 reaps
 * late) and the start script's `kill -0` takes a zombie for alive, so the script alone
 * does not restart it; and a `libvirtd -d` started before the old one has let go of its
 * pid file exits quietly. So: wait for the old one to be fully gone, start, check it
 * answers, try again. The start script runs last for what else it ensures (virtlogd,
 * /dev/kvm). The daemon gets a plain environment: it outlives the test.
 */
export async function startLibvirtd(debug: (what: string) => void = () => undefined): Promise<void> {
  const old = Number(existsSync(LIBVIRTD_PID_FILE) ? readFileSync(LIBVIRTD_PID_FILE, 'utf8').trim() : '');
  for (let attempt = 1; libvirtdPid() === null || !(await answers()); attempt++) {
    if (attempt > 5) throw new Error('libvirtd does not start');
    if (libvirtdPid() === null) {
      if (Number.isInteger(old) && old > 1) await waitUntil(() => fullyExited(old), 10_000, `the killed libvirtd ${old} to let go`, 20);
      const child = spawn('libvirtd', ['-d'], { env: PLAIN_ENV, stdio: 'ignore' });
      const code = await new Promise<number | null>((done) => child.once('exit', (c) => done(c)));
      if (code !== 0) throw new Error(`libvirtd -d exited with ${code}`);
      debug(`libvirtd -d (pid file ${readFileSync(LIBVIRTD_PID_FILE, 'utf8').trim()})`);
    }
    await waitUntil(async () => libvirtdPid() !== null && (await answers()), 3000, 'libvirtd to answer', 50).catch(() => undefined);
  }
  debug('libvirtd answers');
  await run('bash', [START_SCRIPT], { env: PLAIN_ENV, timeout: 30_000 });
}

/** Destroys and undefines the domains `names` (by name: a connection opened before a libvirtd restart is dead). */
export async function removeVms(names: readonly string[]): Promise<void> {
  const gone = /failed to get domain|domain not found|not running|no domain/i;
  for (const name of names) {
    for (const cmd of ['destroy', 'undefine']) {
      await run('virsh', ['-c', LIBVIRT_URI, cmd, name]).catch((err: unknown) => {
        if (!gone.test(String((err as { stderr?: string }).stderr ?? err))) throw err;
      });
    }
  }
}

/**
 * Both drives empty and settled, every volume of `s` torn down: metadata first (so no
 * reconciler takes a volume for an orphan), then the drives, then the volumes — unlike
 * e2e's `setDrive`, which tears the others' volumes down while another VM may still hold one.
 */
export async function emptyDrives(a: Adapters, s: E2eStorage, vmIds: readonly string[]): Promise<void> {
  for (const vmId of vmIds) {
    await a.hypervisor.setMetadata(vmId, OVIRT_VM_NS, ovirtVmMetadata(null));
    if ((await a.hypervisor.readDrive(vmId, 'sdc')) !== null) await a.hypervisor.updateDevice(vmId, 'sdc', null);
  }
  for (let i = 0; i < s.domain.volumes.length; i++) {
    const p = s.pdiv(i);
    // QEMU closes the old medium right after the change; give it a moment.
    await waitUntil(async () => (await a.storage.teardownVolume(p)) === 'done', 10_000, `teardown of ${p.volumeID}`, 100);
  }
}

/**
 * The faults one test injects, so that `restore` can undo exactly them: SIGCONT for every
 * pid it stopped, and libvirtd started again when it is not running.
 */
export class Faults {
  private readonly stopped = new Set<number>();
  /** what was done, with times relative to the first fault, for reports */
  readonly log: string[] = [];
  private t0 = 0;

  constructor() {
    // Belt and braces: a process that dies in the middle of a test still continues what it stopped.
    process.once('exit', this.onExit);
  }

  private readonly onExit = (): void => {
    for (const pid of this.stopped) signal(pid, 'SIGCONT');
  };

  private note(what: string): void {
    if (this.t0 === 0) this.t0 = Date.now();
    this.log.push(`${what}@${Date.now() - this.t0}ms`);
  }

  /** SIGKILL libvirtd and wait until it is gone. */
  async killLibvirtd(): Promise<void> {
    const pid = libvirtdPid();
    if (pid === null) throw new Error('libvirtd is not running');
    signal(pid, 'SIGKILL');
    this.stopped.delete(pid);
    this.note(`libvirtd ${pid} SIGKILL`);
    await waitUntil(() => !running(pid), 10_000, `libvirtd ${pid} to die`, 10);
    // its threads may take a moment longer; a new libvirtd needs the pid file they hold
    await waitUntil(() => fullyExited(pid), 10_000, `libvirtd ${pid} to exit`, 10);
  }

  async startLibvirtd(): Promise<void> {
    await startLibvirtd((w) => this.note(w));
    this.note(`libvirtd started (${libvirtdPid()})`);
  }

  stopLibvirtd(): void {
    const pid = libvirtdPid();
    if (pid === null) throw new Error('libvirtd is not running');
    this.stop(pid, 'libvirtd');
  }

  contLibvirtd(): void {
    const pid = libvirtdPid();
    if (pid !== null) this.cont(pid, 'libvirtd');
  }

  stop(pid: number, what: string): void {
    this.stopped.add(pid);
    signal(pid, 'SIGSTOP');
    this.note(`${what} ${pid} SIGSTOP`);
  }

  cont(pid: number, what: string): void {
    signal(pid, 'SIGCONT');
    this.stopped.delete(pid);
    this.note(`${what} ${pid} SIGCONT`);
  }

  /** Everything back as it was; safe to call more than once. */
  async restore(): Promise<void> {
    for (const pid of this.stopped) signal(pid, 'SIGCONT');
    this.stopped.clear();
    if (libvirtdPid() === null) await this.startLibvirtd();
    // libvirtd may be alive but still reattaching its domains after a start
    await startLibvirtd();
  }

  dispose(): void {
    process.removeListener('exit', this.onExit);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

// ---- what the VMs saw ----------------------------------------------------------------


// ---- the worker's HTTP endpoints -----------------------------------------------------

/** `GET /healthz` status, 0 when there was no answer within a second. */
export async function healthz(port: number): Promise<number> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}

/** The value of a gauge without labels in `GET /metrics` (the sum over its series), null when absent. */
export async function metric(port: number, name: string): Promise<number | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(1000) });
    const text = await res.text();
    let sum: number | null = null;
    for (const line of text.split('\n')) {
      const m = new RegExp(`^${name}(\\{[^}]*\\})?\\s+(\\S+)`).exec(line);
      if (m !== null) sum = (sum ?? 0) + Number(m[2]);
    }
    return sum;
  } catch {
    return null;
  }
}

// ---- what the events must show --------------------------------------------------------

export interface Sent {
  readonly commandId: string;
  readonly vmId: string;
  readonly drive: string;
  readonly media: Media | null;
}

const sameMedia = (a: Media | null, b: Media | null): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * Every way the events break CONTRACT 4 for the commands `sent` (in publication order),
 * as readable lines; [] when they do not. Checked: exactly one final outcome per
 * commandId (repeats identical), every one `completed` with the requested media and a
 * `durationMs` that is `finishedAt − startedAt`, the
 * commands of one drive executed in the order they were queued, and each drive's events
 * chaining in publication order (`previous` = the `current` before) from `initial`.
 */
export function eventProblems(sent: readonly Sent[], events: readonly ResultEvent[], initial: (vmId: string) => Media | null, label: (m: Media | null) => string): string[] {
  const problems: string[] = [];
  const name = new Map(sent.map((s, i) => [s.commandId, `#${i + 1} ${s.media === null ? 'eject' : `→${label(s.media)}`}`]));
  for (const s of sent) {
    const mine = events.filter((e) => e.commandId === s.commandId);
    const n = name.get(s.commandId) as string;
    if (mine.length === 0) {
      problems.push(`${n}: no result event`);
      continue;
    }
    const first = mine[0] as ResultEvent;
    for (const again of mine.slice(1)) {
      if (again.type !== first.type || again.action !== first.action || !sameMedia(again.previous, first.previous) || !sameMedia(again.current, first.current)) {
        problems.push(`${n}: a repeat differs: ${first.type}/${first.action} ${label(first.previous)}→${label(first.current)} then ${again.type}/${again.action} ${label(again.previous)}→${label(again.current)}`);
      }
    }
    const took = Date.parse(first.finishedAt) - Date.parse(first.startedAt);
    if (Math.abs(took - first.durationMs) > 1) problems.push(`${n}: durationMs ${first.durationMs} but finishedAt − startedAt = ${took}`);
    if (first.type !== 'changeCD.completed') problems.push(`${n}: ${first.type} ${first.error?.code ?? ''}: ${first.error?.message ?? ''}`);
    else if (!sameMedia(first.current, s.media)) problems.push(`${n}: completed holding ${label(first.current)}`);
  }
  const drives = new Map<string, Sent[]>();
  for (const s of sent) drives.set(`${s.vmId}/${s.drive}`, [...(drives.get(`${s.vmId}/${s.drive}`) ?? []), s]);
  for (const [key, queued] of drives) {
    const ids = new Set(queued.map((s) => s.commandId));
    const seen = new Set<string>();
    const order: ResultEvent[] = [];
    for (const e of events) {
      if (e.commandId === null || !ids.has(e.commandId) || seen.has(e.commandId)) continue;
      seen.add(e.commandId);
      order.push(e);
    }
    const got = order.map((e) => name.get(e.commandId as string));
    const want = queued.filter((s) => seen.has(s.commandId)).map((s) => name.get(s.commandId));
    if (got.join(',') !== want.join(',')) problems.push(`${key}: events in the order ${got.join(', ')}; queued ${want.join(', ')}`);
    let before = initial(queued[0]?.vmId as string);
    for (const e of order) {
      if (!sameMedia(e.previous, before)) problems.push(`${key}: ${name.get(e.commandId as string)} has previous ${label(e.previous)}, the event before left ${label(before)}`);
      before = e.current;
    }
  }
  return problems;
}
