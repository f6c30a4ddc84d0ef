import { isPdiv, type Media } from './media.js';

/**
 * Which drives on this host have a volume in a change that is not finished (CONTRACT §5
 * v1.1): a drive claims the volume its command loads from the start of the command until
 * the command has ended and no call of it can still land. Another drive's teardown of a
 * claimed volume leaves it active ("in use"), because an open device is not the only use:
 * between a prepare and its updateDeviceFlags, or while that call hangs, nothing holds the
 * volume open yet. A drive that holds a volume after its change is seen by the storage
 * adapter's opener check; only legacy paths and file volumes are never claimed (their
 * teardown does nothing).
 */
export class VolumeClaims {
  private readonly byVolume = new Map<string, Set<string>>();
  private readonly byDrive = new Map<string, string>();

  /** `drive` (a drive key) now has `media` in an unfinished change; replaces its claim. */
  claim(drive: string, media: Media | null): void {
    this.release(drive);
    const volume = volumeKey(media);
    if (volume === null) return;
    this.byDrive.set(drive, volume);
    let drives = this.byVolume.get(volume);
    if (drives === undefined) this.byVolume.set(volume, (drives = new Set()));
    drives.add(drive);
  }

  release(drive: string): void {
    const volume = this.byDrive.get(drive);
    if (volume === undefined) return;
    this.byDrive.delete(drive);
    const drives = this.byVolume.get(volume);
    drives?.delete(drive);
    if (drives?.size === 0) this.byVolume.delete(volume);
  }

  /** Whether a drive other than `drive` (any drive, without it) claims the volume. */
  claimedByOthers(media: Media | null, drive?: string): boolean {
    const volume = volumeKey(media);
    const drives = volume === null ? undefined : this.byVolume.get(volume);
    if (drives === undefined) return false;
    return drive === undefined ? drives.size > 0 : drives.size > (drives.has(drive) ? 1 : 0);
  }

  get size(): number {
    return this.byDrive.size;
  }
}

function volumeKey(media: Media | null): string | null {
  return isPdiv(media) ? media.volumeID.toLowerCase() : null;
}
