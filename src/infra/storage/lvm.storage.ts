import { lstat, mkdir, readdir, readlink, rename, symlink, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from '../logging.js';
import type { ErrorCode } from '../../domain/errors.js';
import { UUID_RE, type Pdiv } from '../../domain/media.js';
import type { PreparedVolume, TeardownResult, VolumeActivation } from '../../domain/ports.js';
import type { Activator } from './activation.js';
import type { LvmCli, LvVolume } from './lvm.command.js';
import { VgGeometry } from './lvm.geometry.js';
import type { VgMetadataHead } from './lvm.mda.js';
import { blockDevNo } from './loop-devices.js';
import { errnoOf, notFound, storageError } from './storage.errors.js';

export interface BlockDomainsOptions {
  readonly lvm: LvmCli;
  readonly activator: Activator;
  /** The VG metadata head on a PV (lvm.mda.ts), to know when cached geometry is stale. */
  readonly readMetadataHead: (pv: string) => Promise<VgMetadataHead>;
  readonly root: string;
  readonly logger: Logger;
}

/** vdsm writes no pool into LVM; listActiveVolumes falls back to this when nothing tells. */
export const UNKNOWN_POOL = '00000000-0000-0000-0000-000000000000';

const IMAGE_TAG = 'IU_';

function hasImageTag(volume: LvVolume, imageID: string): boolean {
  const want = `${IMAGE_TAG}${imageID}`.toLowerCase();
  return volume.tags.some((t) => t.toLowerCase() === want);
}

/**
 * Block storage domains: a VG per domain, an LV per volume, tagged `IU_<imageID>`.
 * Preparing activates the LV and points the vdsm-style link at its device.
 */
export class BlockDomains {
  private readonly geometry: VgGeometry;
  /** Pools learned from prepare requests; LVM itself does not know the pool. */
  private readonly pools = new Map<string, string>();

  constructor(private readonly options: BlockDomainsOptions) {
    this.geometry = new VgGeometry({ lvm: options.lvm, readHead: options.readMetadataHead, logger: options.logger });
  }

  get activationMode(): 'dm' | 'loop' {
    return this.options.activator.mode;
  }

  linkPath(domainID: string, imageID: string, volumeID: string): string {
    return join(this.options.root, 'mnt', 'blockSD', domainID, 'images', imageID, volumeID);
  }

  /**
   * The LV of `pdiv`, or null when no VG is named after the domain (not a block domain).
   * Throws VOLUME_NOT_FOUND when the VG lacks the LV or the LV lacks the image tag —
   * also for an LV removed, renamed or untagged after it was last looked up: the
   * geometry cache is checked against the VG's metadata seqno every time.
   */
  async find(pdiv: Pdiv, signal: AbortSignal, failure: ErrorCode): Promise<LvVolume | null> {
    let volume = await this.lookup(pdiv, signal, failure);
    // Loop mode maps the PV by name, which is not in the VG's metadata: a PV re-attached
    // under another name leaves the seqno alone. dm mode leaves PVs to LVM.
    if (volume !== undefined && volume !== null && this.options.activator.mode === 'loop' && (await blockDevNo(volume.pv)) === null) {
      this.geometry.forget(pdiv.domainID);
      volume = await this.lookup(pdiv, signal, failure);
    }
    if (volume === null) return null;
    if (volume === undefined) throw notFound(`no LV ${pdiv.volumeID} in VG ${pdiv.domainID}`);
    if (!hasImageTag(volume, pdiv.imageID)) {
      throw notFound(`LV ${pdiv.domainID}/${pdiv.volumeID} has no tag ${IMAGE_TAG}${pdiv.imageID}`);
    }
    return volume;
  }

  /** null: no such VG; undefined: no such LV in it. */
  private async lookup(pdiv: Pdiv, signal: AbortSignal, failure: ErrorCode): Promise<LvVolume | null | undefined> {
    try {
      const volumes = await this.geometry.volumes(pdiv.domainID, signal);
      return volumes === null ? null : volumes.get(pdiv.volumeID);
    } catch (err) {
      throw storageError(err, failure, `reading VG ${pdiv.domainID}`);
    }
  }

  forget(pdiv: Pdiv): void {
    this.geometry.forget(pdiv.domainID);
  }

  async prepare(volume: LvVolume, pdiv: Pdiv, signal: AbortSignal): Promise<PreparedVolume> {
    this.pools.set(pdiv.domainID, pdiv.poolID);
    let device: string;
    try {
      device = await this.options.activator.activate(volume, signal);
    } catch (err) {
      // The next attempt re-reads LVM, in case the placement was what went wrong.
      this.forget(pdiv);
      throw err;
    }
    const link = this.linkPath(pdiv.domainID, pdiv.imageID, pdiv.volumeID);
    try {
      await ensureLink(link, device);
    } catch (err) {
      // Without its link nobody can use the LV: leave nothing active behind.
      await this.options.activator.deactivate(volume, signal).catch((e: unknown) => {
        this.options.logger.warn({ err: e, vg: volume.vg, lv: volume.lv }, 'deactivation after failed link creation failed');
      });
      throw storageError(err, 'PREPARE_FAILED', `linking ${link}`);
    }
    return { path: link, diskType: 'block' };
  }

  async teardown(volume: LvVolume, pdiv: Pdiv, signal: AbortSignal): Promise<TeardownResult> {
    const result = await this.options.activator.deactivate(volume, signal);
    // `in-use` with no live mapping left: someone opened the device between the check and
    // the detach, which then only scheduled its removal on their last close. The link
    // would soon name a device that is no longer this LV's (and may become another's).
    if (result === 'done' || (await this.options.activator.activeDevice(volume, signal)) === null) await this.removeStaleLink(pdiv);
    return result;
  }

  /** Removes the volume's link (a volume torn down, inactive, or one LVM no longer knows). */
  async removeStaleLink(pdiv: Pdiv): Promise<void> {
    try {
      await removeLink(this.linkPath(pdiv.domainID, pdiv.imageID, pdiv.volumeID));
    } catch (err) {
      throw storageError(err, 'TEARDOWN_FAILED', 'removing the volume link');
    }
  }

  /**
   * Inactive with its link left behind (a worker killed between the detach and the
   * unlink; recovery asks this for every volume a recorded change names): the link is
   * removed, since it names a device that is not this LV's any more.
   */
  async activation(volume: LvVolume, pdiv: Pdiv, signal: AbortSignal): Promise<VolumeActivation> {
    if ((await this.options.activator.activeDevice(volume, signal)) !== null) return 'active';
    await this.removeStaleLink(pdiv);
    return 'inactive';
  }

  /**
   * Active ISO volumes with our link in place. dm mode: LVM cannot say who activated an
   * LV, so only the link tells (on a host where vdsm also links volumes, its links count
   * too). Loop mode: a mapping is an LV's by construction (PV + exact extent range), but
   * not necessarily this worker's — several storage roots share one machine in tests and
   * CI, and one worker's orphan reaping must not tear down another's volumes. An LV
   * mapped but not yet linked (a crash in between) is not listed; the flow's recorded
   * intent makes recovery tear it down.
   */
  async listActive(signal: AbortSignal): Promise<Pdiv[]> {
    const active = await this.options.activator.listActive(signal);
    const out: Pdiv[] = [];
    for (const lv of active) {
      if (!UUID_RE.test(lv.vg) || !UUID_RE.test(lv.lv)) continue;
      const imageID = lv.tags.find((t) => t.startsWith(IMAGE_TAG))?.slice(IMAGE_TAG.length);
      if (imageID === undefined || !UUID_RE.test(imageID)) continue;
      if (!(await isLinkTo(this.linkPath(lv.vg, imageID, lv.lv), lv.device))) continue;
      out.push({ poolID: await this.poolOf(lv.vg), domainID: lv.vg, imageID, volumeID: lv.lv });
    }
    return out;
  }

  /** The pool of a domain: as last requested, else vdsm's `<root>/<poolID>/<domainID>` link. */
  private async poolOf(domainID: string): Promise<string> {
    const known = this.pools.get(domainID);
    if (known !== undefined) return known;
    let entries: string[] = [];
    try {
      entries = await readdir(this.options.root);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
    }
    for (const entry of entries.filter((e) => UUID_RE.test(e))) {
      try {
        await lstat(join(this.options.root, entry, domainID));
        return entry;
      } catch {
        // not this pool
      }
    }
    return UNKNOWN_POOL;
  }
}

async function isLinkTo(link: string, target: string): Promise<boolean> {
  try {
    return (await readlink(link)) === target;
  } catch {
    return false;
  }
}

/** Atomic replace: a VM resolving the link never sees it missing or half-made. */
async function ensureLink(link: string, target: string): Promise<void> {
  if (await isLinkTo(link, target)) return;
  await mkdir(dirname(link), { recursive: true });
  const tmp = `${link}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await symlink(target, tmp);
  try {
    await rename(tmp, link);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Removes the link only if it is one: a file or directory there is not ours. */
async function removeLink(link: string): Promise<void> {
  try {
    if (!(await lstat(link)).isSymbolicLink()) return;
    await unlink(link);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}
