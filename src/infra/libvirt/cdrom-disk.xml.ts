import type { DriveSource } from '../../domain/ports.js';
import {
  attrOf,
  buildXml,
  childrenOf,
  element,
  elementChildren,
  isText,
  parseXml,
  tagOf,
  withAttr,
  type XmlElement,
  type XmlNode,
} from '../../domain/metadata/xml-tree.js';

/**
 * The CD-ROM `<disk>` element of a domain: finding it in the domain XML, reading what it
 * holds, and building the element `virDomainUpdateDeviceFlags` needs to change it. Pure:
 * no libvirt here, so every rule is unit-testable.
 */

export interface CdromDisk {
  /** target dev, e.g. `sdc` */
  readonly drive: string;
  readonly element: XmlElement;
}

function devicesOf(domainXml: string): XmlElement[] {
  const root = parseXml(domainXml);
  const devices = elementChildren(root).find((e) => tagOf(e) === 'devices');
  return devices === undefined ? [] : elementChildren(devices);
}

function targetDev(disk: XmlElement): string | undefined {
  const target = elementChildren(disk).find((e) => tagOf(e) === 'target');
  return target === undefined ? undefined : attrOf(target, 'dev');
}

/** Every `device='cdrom'` disk of the domain, in document order. */
export function cdromDisks(domainXml: string): CdromDisk[] {
  const out: CdromDisk[] = [];
  for (const dev of devicesOf(domainXml)) {
    if (tagOf(dev) !== 'disk' || attrOf(dev, 'device') !== 'cdrom') continue;
    const drive = targetDev(dev);
    if (drive !== undefined) out.push({ drive, element: dev });
  }
  return out;
}

export function findCdromDisk(domainXml: string, drive: string): CdromDisk | null {
  return cdromDisks(domainXml).find((d) => d.drive === drive) ?? null;
}

/** What libvirt says the drive holds; `null` when the source names no path. */
export function sourceOf(disk: XmlElement): DriveSource | null {
  const source = elementChildren(disk).find((e) => tagOf(e) === 'source');
  if (source === undefined) return null;
  const type = attrOf(disk, 'type');
  if (type === 'block') {
    const dev = attrOf(source, 'dev');
    return dev === undefined || dev === '' ? null : { type: 'block', path: dev };
  }
  if (type === 'file') {
    const file = attrOf(source, 'file');
    return file === undefined || file === '' ? null : { type: 'file', path: file };
  }
  return null;
}

/** The device alias (`<alias name=…/>`), which libvirt's device events name. */
export function aliasOf(disk: XmlElement): string | undefined {
  const alias = elementChildren(disk).find((e) => tagOf(e) === 'alias');
  return alias === undefined ? undefined : attrOf(alias, 'name');
}

/**
 * libvirt's record of QEMU's tray (`<target tray='open'/>`, live XML only). Open with a
 * source named means libvirt's view and QEMU's may have diverged (see
 * libvirt.hypervisor.ts).
 */
export function trayOpen(disk: XmlElement): boolean {
  const target = elementChildren(disk).find((e) => tagOf(e) === 'target');
  return target !== undefined && attrOf(target, 'tray') === 'open';
}

/** Children that only describe the current medium or libvirt's runtime state. */
const DROPPED = new Set(['source', 'backingStore', 'mirror', 'privateData']);

function checkPath(path: string): void {
  // eslint-disable-next-line no-control-regex
  if (!path.startsWith('/') || /[\u0000-\u001f]/.test(path)) {
    throw new Error(`CD-ROM source must be an absolute path without control characters: ${JSON.stringify(path)}`);
  }
}

function newSource(old: XmlElement | undefined, source: DriveSource | null): XmlElement {
  // `optional` lets the VM start even when the medium vanished; libvirt allows it on
  // file sources only. The empty form is the one the design page shows.
  const optional = old === undefined || attrOf(old, 'startupPolicy') !== undefined;
  if (source === null) return element('source', { startupPolicy: 'optional' }, []);
  checkPath(source.path);
  if (source.type === 'block') return element('source', { dev: source.path }, []);
  return element('source', optional ? { file: source.path, startupPolicy: 'optional' } : { file: source.path }, []);
}

/**
 * The `<disk>` to hand to updateDeviceFlags, built from the drive's existing element:
 * target, bus, alias, address, readonly and driver (error_policy included) are kept,
 * the source is replaced, and runtime-only bits (source index, seclabel, backingStore,
 * the tray state) are dropped so that libvirt accepts it as a device definition.
 */
export function buildCdromDiskXml(disk: XmlElement, source: DriveSource | null): string {
  if (tagOf(disk) !== 'disk' || attrOf(disk, 'device') !== 'cdrom') throw new Error('not a CD-ROM <disk> element');
  const oldSource = elementChildren(disk).find((e) => tagOf(e) === 'source');
  const children: XmlNode[] = [];
  let placed = false;
  const put = (): void => {
    if (!placed) children.push(newSource(oldSource, source));
    placed = true;
  };
  for (const child of childrenOf(disk)) {
    if (isText(child)) continue;
    const tag = tagOf(child);
    if (tag === null) continue;
    if (tag === 'source') {
      put();
      continue;
    }
    if (DROPPED.has(tag)) continue;
    if (tag === 'target') {
      if (!placed) put();
      children.push(withAttr(child, 'tray', undefined));
      continue;
    }
    children.push(child);
  }
  put();
  let out = element('disk', { type: source?.type ?? 'file' }, children);
  for (const [key, value] of Object.entries(disk[':@'] ?? {})) {
    const name = key.slice(2);
    if (name !== 'type') out = withAttr(out, name, value);
  }
  return buildXml(out);
}
