/**
 * Media as the engine names it: a PDIV ISO volume on a storage domain, or a legacy
 * ISO-domain path. `null` everywhere means "empty drive".
 */
export interface Pdiv {
  readonly poolID: string;
  readonly domainID: string;
  readonly imageID: string;
  readonly volumeID: string;
}

export interface LegacyPath {
  readonly path: string;
}

export type Media = Pdiv | LegacyPath;

export const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
export const DRIVE_RE = /^[a-z]{2,3}[a-z0-9]{0,8}$/;

export function isPdiv(media: Media | null): media is Pdiv {
  return media !== null && 'volumeID' in media;
}

export function isLegacyPath(media: Media | null): media is LegacyPath {
  return media !== null && 'path' in media;
}

/** Two media are the same when they name the same volume (PDIV) or the same path. */
export function sameMedia(a: Media | null, b: Media | null): boolean {
  if (a === null || b === null) return a === b;
  if (isPdiv(a) && isPdiv(b)) {
    return (
      a.poolID.toLowerCase() === b.poolID.toLowerCase() &&
      a.domainID.toLowerCase() === b.domainID.toLowerCase() &&
      a.imageID.toLowerCase() === b.imageID.toLowerCase() &&
      a.volumeID.toLowerCase() === b.volumeID.toLowerCase()
    );
  }
  if (isLegacyPath(a) && isLegacyPath(b)) return a.path === b.path;
  return false;
}

export function pdivOf(m: Pdiv): Pdiv {
  return { poolID: m.poolID, domainID: m.domainID, imageID: m.imageID, volumeID: m.volumeID };
}

export function describeMedia(m: Media | null): string {
  if (m === null) return 'empty';
  if (isPdiv(m)) return `${m.domainID}/${m.imageID}/${m.volumeID}`;
  return m.path;
}

/** The key of one CD-ROM: commands for the same key are executed one at a time, in order. */
export function driveKey(vmId: string, drive: string): string {
  return `${vmId.toLowerCase()}/${drive}`;
}

/** One command on one drive (a commandId may be sent to several drives). */
export function commandKey(vmId: string, drive: string, commandId: string): string {
  return `${driveKey(vmId, drive)}|${commandId.toLowerCase()}`;
}
