import type { Pdiv } from '../media.js';
import { OVIRT_VM_NS } from '../ports.js';
import {
  type XmlElement,
  type XmlNode,
  appendIndented,
  attrOf,
  buildXml,
  childrenOf,
  element,
  elementChildren,
  isText,
  localName,
  parseXml,
  prefixOf,
  removeAt,
  setChildren,
  tagOf,
  text,
  textOf,
  withAttr,
} from './xml-tree.js';

/**
 * The CD-ROM part of a domain's `<ovirt-vm:vm>` metadata, as the design page writes it:
 *
 *   <ovirt-vm:device devtype="disk" name="sdc" state="loading">
 *     <ovirt-vm:domainID>…</ovirt-vm:domainID> … <ovirt-vm:volumeID>…</ovirt-vm:volumeID>
 *   </ovirt-vm:device>
 *
 * and vdsm's later form, where the pending change is a `<ovirt-vm:change>` child holding
 * `<ovirt-vm:state>` and the new PDIV. Every edit returns a new document; everything
 * else in the element is carried through untouched.
 */

export type CdState = 'loading' | 'ejecting';

export interface CdromEntry {
  readonly state: CdState | null;
  readonly pdiv: Pdiv | null;
}

/** vdsm's `<ovirt-vm:change>` form of a pending change. */
export interface PendingChange {
  readonly state: CdState;
  readonly pdiv: Pdiv | null;
}

export interface DriveMetadata {
  readonly entries: readonly CdromEntry[];
  readonly change: PendingChange | null;
}

const PDIV_KEYS = ['domainID', 'imageID', 'poolID', 'volumeID'] as const;

export class MetadataError extends Error {
  override readonly name = 'MetadataError';
}

export class VmMetadata {
  private xml: string | undefined;

  private constructor(
    private readonly root: XmlElement,
    private readonly prefix: string | null,
  ) {}

  /** `null` (the domain has no such metadata yet) gives an empty element. */
  static parse(xml: string | null): VmMetadata {
    const md = VmMetadata.read(xml);
    if (xml !== null) md.xml = xml;
    return md;
  }

  private static read(xml: string | null): VmMetadata {
    if (xml === null || xml.trim() === '') {
      const tag = `${OVIRT_VM_NS.prefix}:${OVIRT_VM_NS.key}`;
      return new VmMetadata(element(tag, { [`xmlns:${OVIRT_VM_NS.prefix}`]: OVIRT_VM_NS.uri }, []), OVIRT_VM_NS.prefix);
    }
    let root: XmlElement;
    try {
      root = parseXml(xml);
    } catch (err) {
      throw new MetadataError(`ovirt-vm metadata is not XML: ${(err as Error).message}`);
    }
    const tag = tagOf(root) ?? '';
    if (localName(tag) !== OVIRT_VM_NS.key) throw new MetadataError(`ovirt-vm metadata root is <${tag}>, expected <vm>`);
    return new VmMetadata(root, prefixOf(tag));
  }

  toXml(): string {
    this.xml ??= buildXml(this.root);
    return this.xml;
  }

  drive(drive: string): DriveMetadata {
    const devices = this.deviceIndexes(drive).map((i) => this.children[i] as XmlElement);
    const entries = devices.map((d) => ({ state: readState(attrOf(d, 'state')), pdiv: readPdiv(d) }));
    let change: PendingChange | null = null;
    for (const d of devices) {
      const c = elementChildren(d).find((n) => localName(tagOf(n) ?? '') === 'change');
      if (c === undefined) continue;
      const stateEl = elementChildren(c).find((n) => localName(tagOf(n) ?? '') === 'state');
      const state = readState(stateEl === undefined ? undefined : textOf(stateEl).trim());
      if (state !== null) change = { state, pdiv: readPdiv(c) };
    }
    return { entries, change };
  }

  /** Every drive name that has a disk device entry. */
  driveNames(): string[] {
    const names = new Set<string>();
    for (const n of this.children) {
      if (!isText(n) && this.isDevice(n)) {
        const name = attrOf(n, 'name');
        if (name !== undefined) names.add(name);
      }
    }
    return [...names];
  }

  /**
   * A new entry for `pdiv` with `state`. An empty element of the drive (the design page's
   * `<device devtype="disk" name="sdc"/>`) is filled in place, else a new one is added.
   */
  addEntry(drive: string, pdiv: Pdiv, state: CdState): VmMetadata {
    const indexes = this.deviceIndexes(drive);
    const pdivChildren = (el: XmlElement, at: number | undefined): XmlNode[] => {
      let kids = childrenOf(el).slice();
      if (kids.length === 0 && at !== undefined) {
        // Lay the new children out like the document does (the design page: one per line).
        const ws = this.children[at - 1];
        const outer = ws !== undefined && isText(ws) && ws['#text'].includes('\n') ? ws['#text'].slice(ws['#text'].lastIndexOf('\n')) : '';
        const inner = outer === '' || outer === '\n' ? outer : `${outer}  `;
        for (const key of PDIV_KEYS) kids.push(text(inner), element(this.tag(key), {}, [text(pdiv[key])]));
        if (outer !== '') kids.push(text(outer));
        return kids;
      }
      for (const key of PDIV_KEYS) kids = appendIndented(kids, element(this.tag(key), {}, [text(pdiv[key])]));
      return kids;
    };
    const emptyAt = indexes.find((i) => isEmptyDevice(this.children[i] as XmlElement));
    if (emptyAt !== undefined) {
      const el = withAttr(this.children[emptyAt] as XmlElement, 'state', state);
      return this.replaceAt(emptyAt, setChildren(el, pdivChildren(el, emptyAt)));
    }
    const fresh = element(this.tag('device'), { devtype: 'disk', name: drive, state }, []);
    const last = indexes[indexes.length - 1];
    const filled = setChildren(fresh, pdivChildren(fresh, last));
    if (last === undefined) return this.withChildren(appendIndented(this.children, setChildren(fresh, pdivChildren(fresh, undefined))));
    const kids = this.children.slice();
    const ws = kids[last - 1];
    const indent = ws !== undefined && isText(ws) && ws['#text'].trim() === '' ? [text(ws['#text'])] : [];
    kids.splice(last + 1, 0, ...indent, filled);
    return this.withChildren(kids);
  }

  /** The stateless entry naming `pdiv` gets `state` (the old CD of an eject or change). */
  markEntry(drive: string, pdiv: Pdiv, state: CdState): VmMetadata {
    const i = this.findEntry(drive, (e) => e.state === null && e.pdiv !== null && samePdiv(e.pdiv, pdiv));
    if (i === undefined) return this;
    return this.replaceAt(i, withAttr(this.children[i] as XmlElement, 'state', state));
  }

  /** Drop the `state` attribute of the entry in `state`; nothing to do is fine. */
  clearState(drive: string, state: CdState): VmMetadata {
    const i = this.findEntry(drive, (e) => e.state === state);
    if (i === undefined) return this;
    return this.replaceAt(i, withAttr(this.children[i] as XmlElement, 'state', undefined));
  }

  /**
   * Remove the entry in `state`. When it is the drive's only entry, the drive keeps its
   * empty element, as the design page says an empty CD-ROM does.
   */
  removeEntry(drive: string, state: CdState): VmMetadata {
    const i = this.findEntry(drive, (e) => e.state === state);
    if (i === undefined) return this;
    return this.dropOrEmpty(drive, i);
  }

  /** Remove the stateless entry naming `pdiv` (the same rule for the last entry). */
  removeEntryFor(drive: string, pdiv: Pdiv): VmMetadata {
    const i = this.findEntry(drive, (e) => e.state === null && e.pdiv !== null && samePdiv(e.pdiv, pdiv));
    if (i === undefined) return this;
    return this.dropOrEmpty(drive, i);
  }

  /** vdsm form: the drive holds the change's media now; make it the entry's PDIV. */
  commitChange(drive: string): VmMetadata {
    const i = this.deviceIndexes(drive).find((j) => changeIndex(this.children[j] as XmlElement) !== undefined);
    if (i === undefined) return this;
    const dev = this.children[i] as XmlElement;
    const pending = this.drive(drive).change;
    let kids = removeAt(childrenOf(dev), changeIndex(dev) as number);
    kids = kids.filter((n) => isText(n) || !(PDIV_KEYS as readonly string[]).includes(localName(tagOf(n) ?? '')));
    const base = setChildren(dev, kids);
    if (pending?.pdiv == null) return this.replaceAt(i, emptied(base));
    let filled = childrenOf(base);
    for (const key of PDIV_KEYS) filled = appendIndented(filled, element(this.tag(key), {}, [text(pending.pdiv[key])]));
    return this.replaceAt(i, setChildren(base, filled));
  }

  /** vdsm form: the change did not happen; forget it. */
  discardChange(drive: string): VmMetadata {
    const i = this.deviceIndexes(drive).find((j) => changeIndex(this.children[j] as XmlElement) !== undefined);
    if (i === undefined) return this;
    const dev = this.children[i] as XmlElement;
    return this.replaceAt(i, setChildren(dev, removeAt(childrenOf(dev), changeIndex(dev) as number)));
  }

  private dropOrEmpty(drive: string, i: number): VmMetadata {
    if (this.deviceIndexes(drive).length > 1) return this.withChildren(removeAt(this.children, i));
    return this.replaceAt(i, emptied(this.children[i] as XmlElement));
  }

  private findEntry(drive: string, pred: (e: CdromEntry) => boolean): number | undefined {
    return this.deviceIndexes(drive).find((i) => {
      const d = this.children[i] as XmlElement;
      return pred({ state: readState(attrOf(d, 'state')), pdiv: readPdiv(d) });
    });
  }

  private get children(): XmlNode[] {
    return childrenOf(this.root);
  }

  private tag(local: string): string {
    return this.prefix === null ? local : `${this.prefix}:${local}`;
  }

  private isDevice(n: XmlElement): boolean {
    const devtype = attrOf(n, 'devtype');
    return localName(tagOf(n) ?? '') === 'device' && (devtype === undefined || devtype === 'disk');
  }

  private deviceIndexes(drive: string): number[] {
    const out: number[] = [];
    this.children.forEach((n, i) => {
      if (!isText(n) && this.isDevice(n) && attrOf(n, 'name') === drive) out.push(i);
    });
    return out;
  }

  private replaceAt(i: number, el: XmlElement): VmMetadata {
    const kids = this.children.slice();
    kids[i] = el;
    return this.withChildren(kids);
  }

  private withChildren(kids: XmlNode[]): VmMetadata {
    return new VmMetadata(setChildren(this.root, kids), this.prefix);
  }
}

function readState(value: string | undefined): CdState | null {
  return value === 'loading' || value === 'ejecting' ? value : null;
}

function readPdiv(el: XmlElement): Pdiv | null {
  const values: Partial<Record<(typeof PDIV_KEYS)[number], string>> = {};
  for (const child of elementChildren(el)) {
    const name = localName(tagOf(child) ?? '');
    if ((PDIV_KEYS as readonly string[]).includes(name)) values[name as (typeof PDIV_KEYS)[number]] = textOf(child).trim();
  }
  if (!values.domainID || !values.imageID || !values.volumeID) return null;
  return { poolID: values.poolID ?? '', domainID: values.domainID, imageID: values.imageID, volumeID: values.volumeID };
}

function samePdiv(a: Pdiv, b: Pdiv): boolean {
  return (
    a.domainID.toLowerCase() === b.domainID.toLowerCase() &&
    a.imageID.toLowerCase() === b.imageID.toLowerCase() &&
    a.volumeID.toLowerCase() === b.volumeID.toLowerCase()
  );
}

function isEmptyDevice(el: XmlElement): boolean {
  return attrOf(el, 'state') === undefined && elementChildren(el).length === 0;
}

function changeIndex(dev: XmlElement): number | undefined {
  const i = childrenOf(dev).findIndex((n) => !isText(n) && localName(tagOf(n) ?? '') === 'change');
  return i < 0 ? undefined : i;
}

/** The design page's empty drive element: its identifying attributes, no children. */
function emptied(el: XmlElement): XmlElement {
  const tag = tagOf(el) as string;
  const attrs: Record<string, string> = {};
  for (const name of ['devtype', 'name']) {
    const v = attrOf(el, name);
    if (v !== undefined) attrs[name] = v;
  }
  return element(tag, attrs, []);
}
