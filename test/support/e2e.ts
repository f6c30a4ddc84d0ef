import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readdir, readFile, readlink, rm, unlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { connect, type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import ts from 'typescript';
import type { ChangeCdCommand, ResultEvent } from '../../src/contracts/schemas.js';
import { COMMANDS_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, removeHostQueues } from '../../src/consumers/topology.js';
import type { Media, Pdiv } from '../../src/domain/media.js';
import { VmMetadata, type DriveMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import { OVIRT_VM_NS, type HypervisorPort, type StoragePort } from '../../src/domain/ports.js';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';

/**
 * End-to-end helpers: the real worker as a child process (`cdrom-worker run`), a block
 * storage domain on loop-backed LVM, the broker, and what an operator would look at —
 * `virsh domblklist`, `virsh metadata`, the storage link and the loop devices. Free of
 * vitest so the soak script uses them too. Everything made here is removed by the
 * matching cleanup, which touches nothing it did not make.
 */

const run = promisify(execFile);
export const REPO = resolve(import.meta.dirname, '../..');
export const AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672';
export const LIBVIRT_URI = process.env['CDROM_LIBVIRT_URI'] ?? 'qemu:///system';
const STORAGE_SCRIPT = join(REPO, 'scripts/test-storage.sh');

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Bounded polling: resolves when `pred` holds, throws after `timeoutMs`. */
export async function waitUntil(pred: () => boolean | Promise<boolean>, timeoutMs: number, what: string, everyMs = 25): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---- one end-to-end run at a time ---------------------------------------------------

const LOCK = join(tmpdir(), 'cdrom-worker-e2e.lock');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * End-to-end files take turns (vitest runs files in parallel): their workers are scoped
 * to their own VMs (`domainFilter`) and storage roots, but several workers, QEMUs and LVM
 * scans at once on two cores would make the timings of each meaningless. They take turns
 * through this lock file; a holder that died is detected by its pid. Returns the release function.
 */
export async function acquireE2eLock(timeoutMs = 600_000): Promise<() => Promise<void>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fh = await open(LOCK, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      return async () => {
        const owner = await readFile(LOCK, 'utf8').catch(() => '');
        if (owner.trim() === String(process.pid)) await unlink(LOCK).catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = Number((await readFile(LOCK, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(owner) && owner > 0 && !alive(owner)) {
      await unlink(LOCK).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) throw new Error(`the end-to-end lock ${LOCK} is held by pid ${owner}`);
    await sleep(200);
  }
}

// ---- storage ------------------------------------------------------------------------

export interface E2eVolume {
  readonly imageID: string;
  readonly volumeID: string;
  readonly label: string;
  readonly offset: number;
  readonly size: number;
}

interface BlockDomainJson {
  readonly vg: string;
  readonly pv: string;
  readonly image: string;
  readonly lvmFilter: string[];
  readonly volumes: E2eVolume[];
}

export const POOL_ID = '5a0c6f3e-2b1d-4c8e-9f7a-0e1d2c3b4a59';

/**
 * A block storage domain (a VG named by its UUID on a loop-backed PV) with N ISO LVs,
 * under a fresh directory that is the worker's storage root.
 */
export class E2eStorage {
  private constructor(
    readonly root: string,
    readonly domain: BlockDomainJson,
  ) {}

  static async create(volumes: number): Promise<E2eStorage> {
    const root = await mkdtemp(join(tmpdir(), 'cdw-e2e-'));
    const vg = randomUUID();
    try {
      // QEMU runs as libvirt-qemu and opens the link under this directory.
      await chmod(root, 0o755);
      const { stdout } = await run('bash', [STORAGE_SCRIPT, 'create-block', root, vg, String(volumes)], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
      return new E2eStorage(root, JSON.parse(stdout) as BlockDomainJson);
    } catch (err) {
      await run('bash', [STORAGE_SCRIPT, 'remove', root, vg]).catch(() => undefined);
      await rm(root, { recursive: true, force: true });
      throw err;
    }
  }

  get domainID(): string {
    return this.domain.vg;
  }

  /** ISO volume i (0-based) as a PDIV. */
  pdiv(i: number): Pdiv {
    const v = this.domain.volumes[i];
    if (v === undefined) throw new Error(`no volume ${i}`);
    return { poolID: POOL_ID, domainID: this.domain.vg, imageID: v.imageID, volumeID: v.volumeID };
  }

  volumeOf(p: Pdiv): E2eVolume {
    const v = this.domain.volumes.find((x) => x.volumeID === p.volumeID);
    if (v === undefined) throw new Error(`volume ${p.volumeID} is not in this domain`);
    return v;
  }

  /** The link the worker makes for a prepared volume: the `<source dev>` the VM sees. */
  linkPath(p: Pdiv): string {
    return join(this.root, 'mnt', 'blockSD', p.domainID, 'images', p.imageID, p.volumeID);
  }

  /** Live (not auto-clearing) loop devices over this domain's PV, by LV offset. */
  async mappings(): Promise<{ device: string; offset: number }[]> {
    const { stdout } = await run('losetup', ['--json', '--list', '--output', 'NAME,OFFSET,SIZELIMIT,AUTOCLEAR', '--associated', this.domain.pv]);
    if (stdout.trim() === '') return [];
    const doc = JSON.parse(stdout) as { loopdevices: { name: string; offset: number | string; autoclear: boolean | string | number }[] };
    return doc.loopdevices
      .filter((d) => !(d.autoclear === true || d.autoclear === '1' || d.autoclear === 1))
      .map((d) => ({ device: d.name, offset: Number(d.offset) }));
  }

  /**
   * Volume ids that are active on the host: a loop device maps the LV's extents. For an
   * active volume the link must point at that device; a link left for an inactive one is
   * reported too (`stale link`), as a leak.
   */
  async activeVolumes(): Promise<{ active: string[]; problems: string[] }> {
    const maps = await this.mappings();
    const active: string[] = [];
    const problems: string[] = [];
    for (let i = 0; i < this.domain.volumes.length; i++) {
      const v = this.domain.volumes[i] as E2eVolume;
      const mine = maps.filter((m) => m.offset === v.offset);
      const link = await readlink(this.linkPath(this.pdiv(i))).catch(() => null);
      if (mine.length > 0) {
        active.push(v.volumeID);
        if (mine.length > 1) problems.push(`${v.label}: ${mine.length} loop devices`);
        if (link === null) problems.push(`${v.label}: active without its link`);
        else if (!mine.some((m) => m.device === link)) problems.push(`${v.label}: link points at ${link}, not at ${mine.map((m) => m.device).join(',')}`);
      } else if (link !== null) {
        problems.push(`${v.label}: stale link to ${link}`);
      }
    }
    return { active, problems };
  }

  async remove(): Promise<void> {
    try {
      await run('bash', [STORAGE_SCRIPT, 'remove', this.root, this.domain.vg], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
    } finally {
      await rm(this.root, { recursive: true, force: true });
    }
  }
}

// ---- what libvirt shows --------------------------------------------------------------

/** `virsh domblklist --details`: target → source (null for an empty tray). */
export async function domblklist(vmName: string): Promise<Map<string, string | null>> {
  const { stdout } = await run('virsh', ['-c', LIBVIRT_URI, 'domblklist', '--details', vmName]);
  const out = new Map<string, string | null>();
  const lines = stdout.split('\n');
  const sep = lines.findIndex((l) => /^-{5,}/.test(l.trim()));
  for (const line of lines.slice(sep + 1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 4) continue;
    const [, , target, ...rest] = cols;
    const source = rest.join(' ');
    if (target !== undefined) out.set(target, source === '-' ? null : source);
  }
  return out;
}

/** `virsh metadata VM http://ovirt.org/vm/1.0`, or null when the domain has none. */
export async function virshMetadata(vmName: string): Promise<string | null> {
  try {
    const { stdout } = await run('virsh', ['-c', LIBVIRT_URI, 'metadata', vmName, OVIRT_VM_NS.uri]);
    return stdout.trim() === '' ? null : stdout.trim();
  } catch (err) {
    if (/metadata not found|no domain metadata/i.test(String((err as { stderr?: string }).stderr ?? err))) return null;
    throw err;
  }
}

export async function driveMetadata(vmName: string, drive = 'sdc'): Promise<{ xml: string | null; drive: DriveMetadata }> {
  const xml = await virshMetadata(vmName);
  return { xml, drive: VmMetadata.parse(xml).drive(drive) };
}

// ---- the worker process --------------------------------------------------------------

export interface WorkerEnv {
  readonly hostId: string;
  readonly storageRoot: string;
  /**
   * CDROM_DOMAIN_FILTER: the names of the test's own VMs (`onlyDomains`). Without it a
   * worker recovers every domain on the host — other tests' VMs in the middle of their
   * flows included — so it is required.
   */
  readonly domainFilter: string;
  /** `<point>:<crash|error>[,…]` */
  readonly failpoint?: string;
  /** the compiled CLI (`compileWorker`); default: the sources through tsx */
  readonly entry?: string;
  readonly extraEnv?: Record<string, string>;
}

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface WorkerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly exited: Promise<ExitStatus>;
  /** the last lines the worker logged (stdout and stderr) */
  logs(): string;
  /** SIGTERM, wait; SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<ExitStatus>;
  /** SIGKILL, wait. */
  kill(): Promise<ExitStatus>;
  running(): boolean;
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

export function workerEnv(w: WorkerEnv, port: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    UV_THREADPOOL_SIZE: '16',
    CDROM_HOST_ID: w.hostId,
    CDROM_AMQP_URL: AMQP_URL,
    CDROM_LIBVIRT_URI: LIBVIRT_URI,
    CDROM_HTTP_PORT: String(port),
    CDROM_STORAGE_ROOT: w.storageRoot,
    CDROM_ISO_DIRS: join(w.storageRoot, 'mnt'),
    CDROM_LVM_ACTIVATION: 'loop',
    CDROM_LOG_LEVEL: process.env['E2E_LOG_LEVEL'] ?? 'info',
    // Background passes would race the test's own checks; startup recovery is what is tested.
    CDROM_RECONCILE_INTERVAL_MS: '0',
    CDROM_RETRY_BASE_MS: '200',
    CDROM_RETRY_MAX_MS: '2000',
    CDROM_DRAIN_TIMEOUT_MS: '10000',
    ...w.extraEnv,
    CDROM_DOMAIN_FILTER: w.domainFilter,
  };
  delete env['CDROM_FAILPOINT'];
  delete env['CDROM_ENABLE_FAILPOINTS'];
  if (w.failpoint !== undefined) {
    env['CDROM_ENABLE_FAILPOINTS'] = '1';
    env['CDROM_FAILPOINT'] = w.failpoint;
  }
  return env;
}

/** CDROM_DOMAIN_FILTER matching exactly these domain names. */
export function onlyDomains(...names: string[]): string {
  if (names.length === 0) throw new Error('onlyDomains needs at least one domain name');
  return `^(?:${names.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})$`;
}

/** The command line of the worker: the CLI, compiled or from source, as `npx cdrom-worker` runs it. */
export function cliArgs(entry: string | undefined, ...args: string[]): string[] {
  return entry === undefined ? ['--import', 'tsx', join(REPO, 'src/cli/main.ts'), ...args] : [entry, ...args];
}

/**
 * The current sources transpiled (no type check, `isolatedModules` makes that exact) into
 * a private directory under the repository's git-ignored `.tmp/`: a worker then starts
 * ~1 s sooner than through tsx, which adds up over the crash matrix's restarts, and no
 * shared `dist/` is touched. Returns the CLI entry and a cleanup.
 */
export async function compileWorker(): Promise<{ entry: string; remove: () => Promise<void> }> {
  const base = join(REPO, '.tmp');
  await mkdir(base, { recursive: true });
  const out = await mkdtemp(join(base, 'e2e-worker-'));
  const src = join(REPO, 'src');
  const options: ts.CompilerOptions = { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022, verbatimModuleSyntax: true, isolatedModules: true };
  const walk = async (dir: string): Promise<string[]> => {
    const entries = await readdir(dir, { withFileTypes: true });
    const files = await Promise.all(entries.map((e) => (e.isDirectory() ? walk(join(dir, e.name)) : Promise.resolve(e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : []))));
    return files.flat();
  };
  for (const file of await walk(src)) {
    const js = ts.transpileModule(await readFile(file, 'utf8'), { compilerOptions: options, fileName: file }).outputText;
    const target = join(out, relative(src, file)).replace(/\.ts$/, '.js');
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, js);
  }
  return { entry: join(out, 'cli', 'main.js'), remove: () => rm(out, { recursive: true, force: true }) };
}

async function readyz(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/**
 * Starts `cdrom-worker run` and resolves once `/readyz` is 200 (recovery finished, the
 * consumer attached). With `waitReady: false` it resolves as soon as it is spawned.
 */
export async function startWorkerProcess(w: WorkerEnv, opts: { readyTimeoutMs?: number; waitReady?: boolean } = {}): Promise<WorkerProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, cliArgs(w.entry, 'run'), { cwd: REPO, env: workerEnv(w, port), stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const keep = (d: Buffer): void => {
    for (const l of d.toString('utf8').split('\n')) if (l.trim() !== '') lines.push(l);
    if (lines.length > 400) lines.splice(0, lines.length - 400);
    if (process.env['E2E_VERBOSE']) process.stderr.write(d);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let status: ExitStatus | null = null;
  const exited = new Promise<ExitStatus>((done) => {
    child.once('exit', (code, signal) => {
      status = { code, signal };
      done(status);
    });
  });
  const handle: WorkerProcess = {
    child,
    port,
    exited,
    logs: () => lines.join('\n'),
    running: () => status === null,
    async stop(graceMs = 15_000) {
      if (status !== null) return status;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const s = await exited;
      clearTimeout(t);
      return s;
    },
    async kill() {
      if (status !== null) return status;
      child.kill('SIGKILL');
      return exited;
    },
  };
  if (opts.waitReady === false) return handle;
  try {
    await waitUntil(
      async () => {
        if (status !== null) throw new Error(`worker exited (${JSON.stringify(status)}) before it was ready:\n${handle.logs().slice(-4000)}`);
        return readyz(port);
      },
      opts.readyTimeoutMs ?? 60_000,
      'worker readiness',
      50,
    );
  } catch (err) {
    await handle.kill();
    throw err;
  }
  return handle;
}

/** Runs a `cdrom-worker` tool to completion. */
export async function runCli(w: WorkerEnv, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done, reject) => {
    const child = execFile(process.execPath, cliArgs(w.entry, ...args), { cwd: REPO, env: workerEnv(w, 0), timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err === null) return done({ code: 0, stdout, stderr });
      if (typeof err.code !== 'number') return reject(new Error(`${args.join(' ')}: ${err.message}`));
      done({ code: err.code, stdout, stderr });
    });
    child.stdin?.end();
  });
}

// ---- the broker -----------------------------------------------------------------------

export function changeCd(vmId: string, media: Media | null, commandId: string = randomUUID(), drive = 'sdc'): ChangeCdCommand {
  return { type: 'changeCD', version: 1, commandId, vmId, drive, media };
}

/**
 * The engine's side of the broker: publishes commands to `cdrom.commands` with the host
 * id as routing key, and collects result events through an exclusive queue bound to
 * `cdrom.events` with `<hostId>.#`.
 */
export class Engine {
  readonly events: ResultEvent[] = [];
  private wake: (() => void)[] = [];

  private constructor(
    readonly hostId: string,
    private readonly model: ChannelModel,
    private readonly pub: ConfirmChannel,
    private readonly sub: Channel,
  ) {}

  static async open(hostId: string): Promise<Engine> {
    const model = await connect(AMQP_URL, { noDelay: true });
    model.on('error', () => undefined);
    const pub = await model.createConfirmChannel();
    const sub = await model.createChannel();
    await pub.assertExchange(COMMANDS_EXCHANGE, 'direct', { durable: true });
    await pub.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
    const engine = new Engine(hostId, model, pub, sub);
    const { queue } = await sub.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
    await sub.bindQueue(queue, EVENTS_EXCHANGE, `${hostId}.#`);
    await sub.consume(
      queue,
      (msg) => {
        if (msg === null) return;
        engine.events.push(JSON.parse(msg.content.toString('utf8')) as ResultEvent);
        for (const w of engine.wake.splice(0)) w();
      },
      { noAck: true },
    );
    return engine;
  }

  async send(command: ChangeCdCommand): Promise<void> {
    this.pub.publish(COMMANDS_EXCHANGE, this.hostId, Buffer.from(JSON.stringify(command)), {
      persistent: true,
      contentType: 'application/json',
      messageId: command.commandId,
    });
    await this.pub.waitForConfirms();
  }

  eventsFor(commandId: string): ResultEvent[] {
    return this.events.filter((e) => e.commandId === commandId);
  }

  /** Waits for at least `n` events of `commandId`; returns them all. */
  async waitFor(commandId: string, n = 1, timeoutMs = 60_000): Promise<ResultEvent[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.eventsFor(commandId).length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${n} event(s) for ${commandId} within ${timeoutMs} ms; last events: ${JSON.stringify(this.events.slice(-3))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.eventsFor(commandId);
  }

  async commandsWaiting(): Promise<number> {
    const ch = await this.model.createChannel();
    ch.on('error', () => undefined);
    try {
      return (await ch.checkQueue(commandsQueue(this.hostId))).messageCount;
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  /** Closes the connection and deletes the host's queues (they exist only for this test). */
  async close(): Promise<void> {
    await this.model.close().catch(() => undefined);
    const model = await connect(AMQP_URL, { noDelay: true });
    model.on('error', () => undefined);
    try {
      await removeHostQueues(model, this.hostId);
    } finally {
      await model.close().catch(() => undefined);
    }
  }
}

export const uniqueHostId = (tag: string): string => `e2e-${tag}-${randomUUID().slice(0, 8)}`;

// ---- the adapters, for setting a drive up between cases -----------------------------

export interface Adapters {
  readonly hypervisor: HypervisorPort & { close(): Promise<void> };
  readonly storage: StoragePort;
}

/** The worker's own libvirt and storage adapters, in the test process, scoped to `s`. */
export async function openAdapters(s: E2eStorage): Promise<Adapters> {
  const hypervisor = await LibvirtHypervisor.open({ uri: LIBVIRT_URI, logger: silentLogger() });
  const storage = createStorage({
    storageRoot: s.root,
    activation: 'loop',
    isoDirs: [join(s.root, 'mnt')],
    lvmFilter: s.domain.lvmFilter,
    logger: silentLogger(),
  });
  return { hypervisor, storage };
}

/** Content of the ovirt-vm element that is not the worker's: it must survive every flow. */
export const FOREIGN_MD = '<ovirt-vm:clusterVersion>4.5</ovirt-vm:clusterVersion>';
/** FOREIGN_MD as `virsh metadata` prints it (without the prefix). */
export const FOREIGN_MD_SEEN = /<(ovirt-vm:)?clusterVersion>4\.5<\/(ovirt-vm:)?clusterVersion>/;

/** The design page's metadata for `sdc` holding `p` (or its empty element). */
export function ovirtVmMetadata(p: Pdiv | null): string {
  const device =
    p === null
      ? '<ovirt-vm:device devtype="disk" name="sdc"/>'
      : `<ovirt-vm:device devtype="disk" name="sdc"><ovirt-vm:domainID>${p.domainID}</ovirt-vm:domainID><ovirt-vm:imageID>${p.imageID}</ovirt-vm:imageID><ovirt-vm:poolID>${p.poolID}</ovirt-vm:poolID><ovirt-vm:volumeID>${p.volumeID}</ovirt-vm:volumeID></ovirt-vm:device>`;
  return `<ovirt-vm:vm xmlns:ovirt-vm="${OVIRT_VM_NS.uri}">${FOREIGN_MD}${device}</ovirt-vm:vm>`;
}

/**
 * Puts `sdc` of `vmId` into a settled state holding `holding`: metadata first (so no
 * reconciler takes the volume for an orphan), then the volume and the drive, then every
 * other volume of the domain torn down.
 */
export async function setDrive(a: Adapters, s: E2eStorage, vmId: string, holding: Pdiv | null): Promise<void> {
  await a.hypervisor.setMetadata(vmId, OVIRT_VM_NS, ovirtVmMetadata(holding));
  const now = await a.hypervisor.readDrive(vmId, 'sdc');
  if (holding !== null) {
    const p = await a.storage.prepareVolume(holding);
    if (now?.path !== p.path) await a.hypervisor.updateDevice(vmId, 'sdc', { type: p.diskType, path: p.path });
  } else if (now !== null) {
    await a.hypervisor.updateDevice(vmId, 'sdc', null);
  }
  for (let i = 0; i < s.domain.volumes.length; i++) {
    const p = s.pdiv(i);
    if (holding !== null && p.volumeID === holding.volumeID) continue;
    // QEMU closes the old medium right after the change; give it a moment.
    await waitUntil(async () => (await a.storage.teardownVolume(p)) === 'done', 10_000, `teardown of ${p.volumeID}`, 100);
  }
}

// ---- one look at a drive -------------------------------------------------------------

export interface DriveSnapshot {
  /** `virsh domblklist`'s source for the drive */
  readonly source: string | null;
  readonly entries: DriveMetadata['entries'];
  readonly change: DriveMetadata['change'];
  /** the metadata content that is not the worker's is still there */
  readonly foreignKept: boolean;
  /** volume ids active on the host (a loop device over the LV) */
  readonly active: string[];
  readonly problems: string[];
  /** one line for logs and reports, volumes named by their ISO labels */
  readonly summary: string;
}

export async function observeDrive(vmName: string, s: E2eStorage, drive = 'sdc'): Promise<DriveSnapshot> {
  const [blk, md, act] = await Promise.all([domblklist(vmName), driveMetadata(vmName, drive), s.activeVolumes()]);
  const source = blk.get(drive) ?? null;
  const label = (volumeID: string | undefined): string => s.domain.volumes.find((v) => v.volumeID === volumeID)?.label ?? `?${volumeID ?? ''}`;
  const held = source === null ? 'empty' : (s.domain.volumes.find((v) => source.endsWith(`/${v.volumeID}`))?.label ?? source);
  const entries = md.drive.entries.map((e) => (e.pdiv === null ? '(empty)' : label(e.pdiv.volumeID)) + (e.state === null ? '' : `:${e.state}`));
  const summary = `drive=${held} metadata=[${entries.join(', ')}]${md.drive.change ? ` change=${md.drive.change.state}` : ''} active=[${act.active.map(label).join(', ')}]${act.problems.length > 0 ? ` problems=${act.problems.join('; ')}` : ''}`;
  return {
    source,
    entries: md.drive.entries,
    change: md.drive.change,
    foreignKept: FOREIGN_MD_SEEN.test(md.xml ?? ''),
    active: act.active,
    problems: act.problems,
    summary,
  };
}

/** What a settled drive holding `p` looks like, for `toMatchObject`/`toEqual` on a snapshot. */
export function settledAs(s: E2eStorage, p: Pdiv | null): Omit<DriveSnapshot, 'summary'> {
  return {
    source: p === null ? null : s.linkPath(p),
    entries: [{ state: null, pdiv: p }],
    change: null,
    foreignKept: true,
    active: p === null ? [] : [p.volumeID],
    problems: [],
  };
}
