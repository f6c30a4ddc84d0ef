import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readlinkSync, renameSync, statSync, symlinkSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import type { NativeDomain, VirtBinding } from '../../src/infra/libvirt/virt.native.js';

/**
 * The bare work of a CD change, written plainly: what a script would do by hand, with
 * none of the worker's adapters. LV geometry is read once with `pvs` (as a cache would
 * hold it); activation is `losetup`, spawned; the medium is swapped with
 * `updateDeviceFlags` through the binding with a literal `<disk>`; the old loop device's
 * openers are checked by a synchronous `/proc/*\/fd` scan; the metadata writes are
 * `setMetadata` with literal documents, the design page's writes and nothing more.
 * The benchmarks measure the worker against this. Nothing here is imported from src/
 * but the binding's typed loader.
 */

const run = promisify(execFile);
const NS = 'http://ovirt.org/vm/1.0';
const LVM_ENV = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };

export interface PlainVolume {
  readonly poolID: string;
  readonly domainID: string;
  readonly imageID: string;
  readonly volumeID: string;
  readonly pv: string;
  readonly offset: number;
  readonly size: number;
}

/** A volume as the drive holds it: its loop device and its link. */
export interface Held {
  readonly volume: PlainVolume;
  readonly device: string;
  readonly link: string;
}

export interface DirectTimes {
  total: number;
  metadata: number;
  prepare: number;
  update: number;
  teardown: number;
}

/** The geometry of every LV of the VG, from one `pvs` (what the direct path "caches"). */
export async function plainVolumes(vg: string, lvmFilter: readonly string[], poolID: string, images: ReadonlyMap<string, string>): Promise<PlainVolume[]> {
  const config = `devices { filter = [ ${lvmFilter.map((f) => `"${f}"`).join(', ')} ] } global { activation = 0 }`;
  const fields = 'pv_name,pe_start,pvseg_start,pvseg_size,vg_extent_size,lv_name';
  const { stdout } = await run('pvs', ['--config', config, '--segments', '--units', 'b', '--nosuffix', '--reportformat', 'json', '-o', fields, '-S', `vg_name=${vg}`], { env: LVM_ENV });
  const rows = (JSON.parse(stdout) as { report: { pvseg: Record<string, string>[] }[] }).report.flatMap((r) => r.pvseg);
  const out: PlainVolume[] = [];
  for (const r of rows) {
    const lv = r['lv_name'] ?? '';
    const imageID = images.get(lv);
    if (lv === '' || imageID === undefined) continue;
    const extent = Number(r['vg_extent_size']);
    out.push({ poolID, domainID: vg, imageID, volumeID: lv, pv: r['pv_name'] ?? '', offset: Number(r['pe_start']) + Number(r['pvseg_start']) * extent, size: Number(r['pvseg_size']) * extent });
  }
  return out;
}

function pdivXml(v: PlainVolume): string {
  return `<domainID>${v.domainID}</domainID><imageID>${v.imageID}</imageID><poolID>${v.poolID}</poolID><volumeID>${v.volumeID}</volumeID>`;
}

function device(v: PlainVolume | null, state?: 'loading' | 'ejecting'): string {
  const st = state === undefined ? '' : ` state="${state}"`;
  return v === null ? `<device devtype="disk" name="sdc"${st}/>` : `<device devtype="disk" name="sdc"${st}>${pdivXml(v)}</device>`;
}

/** Linux dev_t as `major:minor`. */
function devNo(rdev: number): string {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return `${major}:${minor}`;
}

export type DirectStep = Exclude<keyof DirectTimes, 'total'>;

export class DirectPath {
  constructor(
    private readonly virt: VirtBinding,
    /** `<storage root>`: links go under mnt/blockSD as the contract has them */
    private readonly root: string,
    /** told of every step of `change` (performance.now() at its start and end), e.g. to see which steps overlap */
    private readonly observe?: (step: DirectStep, startMs: number, endMs: number) => void,
  ) {}

  /** Synchronous scan of every process's fds for the block device `dev`. */
  holders(dev: string): number[] {
    const want = devNo(statSync(dev).rdev);
    const found: number[] = [];
    for (const pid of readdirSync('/proc')) {
      if (pid.charCodeAt(0) > 57) continue;
      let fds: string[];
      try {
        fds = readdirSync(`/proc/${pid}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        const p = `/proc/${pid}/fd/${fd}`;
        try {
          if (!readlinkSync(p).startsWith('/')) continue;
          const st = statSync(p);
          if (st.isBlockDevice() && devNo(st.rdev) === want) {
            found.push(Number(pid));
            break;
          }
        } catch {
          // the fd or the process went away
        }
      }
    }
    return found;
  }

  async attach(v: PlainVolume): Promise<Held> {
    const { stdout } = await run('losetup', ['--find', '--show', '--read-only', '--offset', String(v.offset), '--sizelimit', String(v.size), v.pv]);
    const dev = stdout.trim();
    const link = join(this.root, 'mnt', 'blockSD', v.domainID, 'images', v.imageID, v.volumeID);
    mkdirSync(dirname(link), { recursive: true });
    const tmp = `${link}.tmp`;
    symlinkSync(dev, tmp);
    renameSync(tmp, link);
    return { volume: v, device: dev, link };
  }

  /** Detaches unless someone holds it open; true when detached. */
  async detach(h: Held): Promise<boolean> {
    if (this.holders(h.device).length > 0) return false;
    await run('losetup', ['--detach', h.device]);
    unlinkSync(h.link);
    return true;
  }

  setMetadata(dom: NativeDomain, xml: string): Promise<void> {
    const k = this.virt.constants;
    return dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, xml, 'ovirt-vm', NS, k.VIR_DOMAIN_AFFECT_LIVE);
  }

  update(dom: NativeDomain, source: string | null): Promise<void> {
    const k = this.virt.constants;
    const src = source === null ? `<source startupPolicy='optional'/>` : `<source dev='${source}'/>`;
    const xml = `<disk type='${source === null ? 'file' : 'block'}' device='cdrom'><driver name='qemu' error_policy='report'/>${src}<target dev='sdc' bus='sata'/><readonly/><address type='drive' controller='0' bus='0' target='0' unit='2'/></disk>`;
    return dom.updateDeviceFlags(xml, k.VIR_DOMAIN_AFFECT_LIVE | (source === null ? k.VIR_DOMAIN_DEVICE_MODIFY_FORCE : 0));
  }

  /**
   * The design page's change flow (a load when `from` is null): begin (old ejecting, new
   * loading), activate, swap, new loaded, old torn down, final. Returns what it now holds.
   */
  async change(dom: NativeDomain, from: Held | null, to: PlainVolume, t: DirectTimes = { total: 0, metadata: 0, prepare: 0, update: 0, teardown: 0 }): Promise<{ held: Held; times: DirectTimes }> {
    const lap = async <T>(k: DirectStep, fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const v = await fn();
      const t1 = performance.now();
      t[k] += t1 - t0;
      this.observe?.(k, t0, t1);
      return v;
    };
    const t0 = performance.now();
    const old = from?.volume ?? null;
    await lap('metadata', () => this.setMetadata(dom, `<vm>${old === null ? '' : device(old, 'ejecting')}${device(to, 'loading')}</vm>`));
    const held = await lap('prepare', () => this.attach(to));
    await lap('update', () => this.update(dom, held.link));
    if (from !== null && old !== null) {
      await lap('metadata', () => this.setMetadata(dom, `<vm>${device(old, 'ejecting')}${device(to)}</vm>`));
      await lap('teardown', () => this.detach(from));
    }
    await lap('metadata', () => this.setMetadata(dom, `<vm>${device(to)}</vm>`));
    t.total = performance.now() - t0;
    return { held, times: t };
  }

  /** The eject flow: ejecting, swap to empty, teardown, final. */
  async eject(dom: NativeDomain, from: Held): Promise<void> {
    await this.setMetadata(dom, `<vm>${device(from.volume, 'ejecting')}</vm>`);
    await this.update(dom, null);
    await this.detach(from);
    await this.setMetadata(dom, `<vm>${device(null)}</vm>`);
  }
}
