import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Pdiv } from '../../src/domain/media.js';
import type { DomainRef, HypervisorPort } from '../../src/domain/ports.js';
import { loadVirt, type NativeConnection, type NativeDomain } from '../../src/infra/libvirt/virt.native.js';
import { acquireE2eLock } from '../../test/support/e2e.js';
import { testVmXml } from '../../test/support/vm.js';
import { withTimeout, type Cleanup } from './common.js';

/**
 * The real stack for the benchmarks: a loop-backed LVM block storage domain and TCG/KVM
 * VMs named `cdw-bench-<pid>-…`. Everything is registered with the section's Cleanup
 * as soon as it exists; `sweepLeftovers` removes what a killed run (dead pid) left.
 */

const run = promisify(execFile);
export const REPO = resolve(import.meta.dirname, '../..');
const STORAGE_SCRIPT = join(REPO, 'scripts/test-storage.sh');
export const LIBVIRT_URI = process.env['CDROM_LIBVIRT_URI'] ?? 'qemu:///system';
export const VM_PREFIX = 'cdw-bench-';
export const POOL_ID = '6b1d7e4f-3c2e-4d9f-8a7b-1f2e3d4c5b6a';
const LVM_ENV = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };

interface BlockDomainJson {
  readonly vg: string;
  readonly pv: string;
  readonly lvmFilter: string[];
  readonly volumes: { imageID: string; volumeID: string }[];
}

export class BenchStorage {
  private constructor(
    readonly root: string,
    readonly domain: BlockDomainJson,
  ) {}

  /** A VG (named by a UUID) with `volumes` ISO LVs under a fresh storage root. */
  static async create(volumes: number, cleanup: Cleanup): Promise<BenchStorage> {
    const root = await mkdtemp(join(tmpdir(), `${VM_PREFIX}${process.pid}-`));
    const vg = randomUUID();
    cleanup.add(`storage domain ${vg}`, async () => {
      await run('bash', [STORAGE_SCRIPT, 'remove', root, vg], { env: LVM_ENV }).catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    });
    // QEMU runs as libvirt-qemu: it must be able to walk to the volume links
    await chmod(root, 0o755);
    const { stdout } = await run('bash', [STORAGE_SCRIPT, 'create-block', root, vg, String(volumes)], { env: LVM_ENV });
    return new BenchStorage(root, JSON.parse(stdout) as BlockDomainJson);
  }

  pdiv(i: number): Pdiv {
    const v = this.domain.volumes[i];
    if (v === undefined) throw new Error(`no volume ${i}`);
    return { poolID: POOL_ID, domainID: this.domain.vg, imageID: v.imageID, volumeID: v.volumeID };
  }
}

export interface BenchVm {
  readonly name: string;
  readonly uuid: string;
  readonly domain: NativeDomain;
}

/** Transient VMs (as vdsm runs them) with one empty SATA CD-ROM `sdc`. */
export class BenchVms {
  private constructor(readonly conn: NativeConnection) {}

  static async open(cleanup: Cleanup): Promise<BenchVms> {
    const conn = await loadVirt().open(LIBVIRT_URI, () => undefined, 5, 3);
    cleanup.add('libvirt connection of the VM helper', () => conn.close());
    return new BenchVms(conn);
  }

  /**
   * `memoryMiB`: the test VM's 128 MiB unless given. `paused`: started with its vCPU
   * stopped (its drives, QEMU's monitor and tray work as when it runs).
   */
  async create(cleanup: Cleanup, opts: { memoryMiB?: number; paused?: boolean } = {}): Promise<BenchVm> {
    const uuid = randomUUID();
    const name = `${VM_PREFIX}${process.pid}-${randomBytes(3).toString('hex')}`;
    // registered before creation: a create that times out may still leave the domain
    cleanup.add(`VM ${name}`, () => this.destroy(name));
    const domain = await withTimeout(this.conn.createXML(testVmXml(name, uuid, opts), opts.paused === true ? loadVirt().constants.VIR_DOMAIN_START_PAUSED : 0), 60_000, `starting VM ${name}`);
    return { name, uuid, domain };
  }

  async destroy(name: string): Promise<void> {
    try {
      const dom = await withTimeout(this.conn.lookupByName(name), 30_000, `lookup ${name}`);
      if (await dom.isActive()) await withTimeout(dom.destroy(), 30_000, `destroy ${name}`);
      if (await dom.isPersistent().catch(() => false)) await dom.undefine(0).catch(() => undefined);
    } catch (err) {
      // already gone is fine
      if (!/no domain|not found/i.test(err instanceof Error ? err.message : String(err))) throw err;
    }
  }

  /** VMs of bench runs whose process no longer exists. */
  async sweep(): Promise<string[]> {
    const all = await this.conn.listAllDomains(0);
    const dead = all.map((d) => d.name).filter((n) => n.startsWith(VM_PREFIX) && !alive(pidOf(n)));
    for (const name of dead) await this.destroy(name);
    return dead;
  }
}

function pidOf(name: string): number {
  return Number(name.slice(VM_PREFIX.length).split('-')[0]);
}

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes VMs and storage domains left by bench runs that were killed (SIGKILL). */
export async function sweepLeftovers(cleanup: Cleanup): Promise<string[]> {
  const removed: string[] = [];
  const vms = await BenchVms.open(cleanup);
  removed.push(...(await vms.sweep()));
  for (const entry of await readdir(tmpdir())) {
    if (!entry.startsWith(VM_PREFIX) || alive(pidOf(entry))) continue;
    const dir = join(tmpdir(), entry);
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (f.endsWith('.pv.img')) await run('bash', [STORAGE_SCRIPT, 'remove', dir, f.slice(0, -'.pv.img'.length)], { env: LVM_ENV }).catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/**
 * Other workers on this host (end-to-end tests) reconcile every domain at startup: they
 * would "recover" a bench VM in the middle of a change, and ours theirs. The e2e lock
 * makes them take turns.
 */
export async function takeHostLock(cleanup: Cleanup, timeoutMs: number): Promise<void> {
  if (process.env['BENCH_NO_LOCK'] === '1') return;
  process.stderr.write('bench: waiting for the end-to-end lock (other workers on this host)…\n');
  const release = await acquireE2eLock(timeoutMs);
  process.stderr.write('bench: lock taken\n');
  cleanup.add('e2e lock', release);
}

/** Only the domains this run made: a recovery pass must never touch anyone else's. */
export function onlyDomains(h: HypervisorPort, names: (n: string) => boolean): HypervisorPort {
  return new Proxy(h, {
    get(target, prop, receiver) {
      if (prop === 'listDomains') return async (): Promise<DomainRef[]> => (await target.listDomains()).filter((d) => names(d.name));
      const v: unknown = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
