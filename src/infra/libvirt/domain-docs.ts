import type { CdromDisk } from './cdrom-disk.xml.js';

/**
 * What the adapter last read or wrote of each domain's metadata (per namespace) and of
 * its CD-ROM `<disk>` elements, so that the worker does not read back what it has just
 * written nor read a drive no one has touched since. Kept only while domain events can
 * say that someone else changed it:
 *
 * - metadata: every successful `virDomainSetMetadata` emits one metadata-change event.
 *   Our own writes are counted (`own`); an event while none of ours is outstanding is
 *   someone else's (vdsm writes its namespace too) and forgets the entry. A foreign
 *   event taken for one of ours only delays the forgetting to our own event, which
 *   then finds nothing outstanding. A write that failed expects no event; one that
 *   failed but lands after all only forgets the entry, which is always safe. An own
 *   write whose event never came is not trusted beyond OWN_EVENT_GRACE_MS.
 * - disks: a medium changed by anyone opens and closes the tray (QEMU's tray events),
 *   and both events arrive before `updateDeviceFlags` returns. Tray events while one of
 *   our updates of that domain is running are that update's; any other one forgets the
 *   domain's disks. After our update the drive holds the element we sent.
 * - lifecycle and device-removed events, a vanished domain, and the events connection
 *   going down (events missed) forget everything concerned; nothing is kept until the
 *   link is up again.
 * - only documents of domains `keeps` accepts are kept (the adapter: those known to be
 *   running — a change to an inactive domain's persistent definition moves no tray and
 *   may send no other event).
 *
 * Reads race events: a read keeps its answer only if no invalidation came since its
 * `version` was taken. Bounded: when full it starts over.
 */

/** An own metadata write's event is overdue after this; the entry is then distrusted. */
export const OWN_EVENT_GRACE_MS = 2_000;

interface MetadataEntry {
  /** the document (port form), null when absent, undefined when not known */
  xml: string | null | undefined;
  version: number;
  /** own writes whose event has not come yet */
  own: number;
  ownAt: number;
}

interface DisksEntry {
  drives: Map<string, CdromDisk>;
  version: number;
  /** own updates running on the domain */
  updating: number;
}

export class DomainDocs {
  private readonly metadata = new Map<string, MetadataEntry>();
  private readonly disks = new Map<string, DisksEntry>();
  private enabled = false;
  /** versions come from one counter: an entry made again never reuses an old one */
  private seq = 0;

  constructor(
    private readonly max: number,
    private readonly keeps: (vmId: string) => boolean = () => true,
    private readonly now: () => number = Date.now,
  ) {}

  // ---- metadata ------------------------------------------------------------------------

  /** The namespace's document as last seen; `undefined` when it must be read. */
  metadataOf(vmId: string, nsUri: string): string | null | undefined {
    const e = this.metadata.get(mdKey(vmId, nsUri));
    if (e === undefined || e.xml === undefined) return undefined;
    if (e.own > 0 && this.now() - e.ownAt > OWN_EVENT_GRACE_MS) {
      e.own = 0;
      this.forgetMetadataEntry(e);
      return undefined;
    }
    return e.xml;
  }

  /** Taken before a read, for `keepMetadata`. */
  metadataVersion(vmId: string, nsUri: string): number {
    return this.mdEntry(vmId, nsUri).version;
  }

  /** Keeps what a read returned, unless something changed it since `version`. */
  keepMetadata(vmId: string, nsUri: string, xml: string | null, version: number): void {
    if (!this.enabled || !this.keeps(vmId)) return;
    const e = this.mdEntry(vmId, nsUri);
    if (e.version === version && e.own === 0) e.xml = xml;
  }

  /** Before an own write: unknown until it returns. Returns the token for `wrote`. */
  writing(vmId: string, nsUri: string): number {
    const e = this.mdEntry(vmId, nsUri);
    e.xml = undefined;
    if (!this.enabled) return -1;
    e.own += 1;
    e.ownAt = this.now();
    return e.version;
  }

  /** After an own write: `xml` when it succeeded (it is now the document), else it failed. */
  wrote(vmId: string, nsUri: string, token: number, xml: string | null | undefined): void {
    const e = this.metadata.get(mdKey(vmId, nsUri));
    if (e === undefined || token < 0) return;
    if (xml === undefined) {
      // no event comes for a failed write; one that lands anyway only forgets the entry
      e.own = Math.max(0, e.own - 1);
      this.forgetMetadataEntry(e);
      return;
    }
    if (!this.keeps(vmId)) {
      // its event still comes: `own` stays counted
      this.forgetMetadataEntry(e);
      return;
    }
    e.ownAt = this.now();
    if (e.version === token) e.xml = xml;
  }

  /** A metadata-change event (nsUri null: not an element namespace, or unknown). */
  onMetadataEvent(vmId: string, nsUri: string | null): void {
    if (nsUri === null) {
      this.forgetMetadata(vmId);
      return;
    }
    // an entry is made if need be: a read in flight must not keep what it got
    const e = this.mdEntry(vmId, nsUri);
    if (e.own > 0) e.own -= 1;
    else this.forgetMetadataEntry(e);
  }

  // ---- CD-ROM disks --------------------------------------------------------------------

  /** `mine`: asked by an own update of the domain, which the running update does not hide. */
  diskOf(vmId: string, drive: string, mine = false): CdromDisk | undefined {
    const e = this.disks.get(vmId.toLowerCase());
    return e === undefined || (e.updating > 0 && !mine) ? undefined : e.drives.get(drive);
  }

  /** Taken before a read of the domain XML, for `keepDisks`. */
  disksVersion(vmId: string): number {
    return this.disksEntry(vmId).version;
  }

  /** Keeps the disks a domain XML read showed, unless something changed them since `version`. */
  keepDisks(vmId: string, disks: readonly CdromDisk[], version: number): void {
    if (!this.enabled || !this.keeps(vmId)) return;
    const e = this.disksEntry(vmId);
    if (e.version !== version || e.updating > 0) return;
    e.drives = new Map(disks.map((d) => [d.drive, d]));
  }

  /** Before an own update of the domain's devices. Returns the token for `updated`. */
  updating(vmId: string): number {
    const e = this.disksEntry(vmId);
    e.updating += 1;
    return e.version;
  }

  /** After it: `disk` is what the drive now holds when it succeeded; undefined: unknown. */
  updated(vmId: string, token: number, drive: string, disk: CdromDisk | undefined): void {
    const e = this.disks.get(vmId.toLowerCase());
    if (e === undefined) return;
    e.updating = Math.max(0, e.updating - 1);
    if (disk === undefined || !this.enabled || e.version !== token || !this.keeps(vmId)) {
      e.drives.delete(drive);
      return;
    }
    e.drives.set(drive, disk);
  }

  /** A tray event: ours while an own update of the domain runs, else someone changed a medium. */
  onTrayEvent(vmId: string): void {
    const e = this.disksEntry(vmId);
    if (e.updating === 0) this.forgetDisksEntry(e);
  }

  // ---- whole domains, the link -----------------------------------------------------------

  /** Lifecycle or device events, or the domain is gone: forget all of it. */
  forget(vmId: string): void {
    this.forgetMetadata(vmId);
    this.forgetDisksEntry(this.disksEntry(vmId));
  }

  enable(): void {
    this.enabled = true;
  }

  /** Events are missed from now on: forget everything, keep nothing until `enable`. */
  disable(): void {
    this.enabled = false;
    for (const e of this.metadata.values()) {
      e.own = 0;
      this.forgetMetadataEntry(e);
    }
    for (const e of this.disks.values()) this.forgetDisksEntry(e);
  }

  private forgetMetadata(vmId: string): void {
    const prefix = `${vmId.toLowerCase()}|`;
    for (const [k, e] of this.metadata) if (k.startsWith(prefix)) this.forgetMetadataEntry(e);
  }

  private forgetMetadataEntry(e: MetadataEntry): void {
    e.xml = undefined;
    e.version = ++this.seq;
  }

  private forgetDisksEntry(e: DisksEntry): void {
    e.drives.clear();
    e.version = ++this.seq;
  }

  private mdEntry(vmId: string, nsUri: string): MetadataEntry {
    const key = mdKey(vmId, nsUri);
    let e = this.metadata.get(key);
    if (e === undefined) {
      if (this.metadata.size >= this.max) this.startOver(this.metadata);
      this.metadata.set(key, (e = { xml: undefined, version: ++this.seq, own: 0, ownAt: 0 }));
    }
    return e;
  }

  private disksEntry(vmId: string): DisksEntry {
    const key = vmId.toLowerCase();
    let e = this.disks.get(key);
    if (e === undefined) {
      if (this.disks.size >= this.max) this.startOver(this.disks);
      this.disks.set(key, (e = { drives: new Map(), version: ++this.seq, updating: 0 }));
    }
    return e;
  }

  /**
   * Full: drops the entries with nothing outstanding. One in the middle of an own write
   * or update stays, or its event (or its end) would find a fresh entry and misread.
   */
  private startOver<E extends { own?: number; updating?: number }>(map: Map<string, E>): void {
    for (const [k, e] of map) if ((e.own ?? 0) === 0 && (e.updating ?? 0) === 0) map.delete(k);
  }
}

function mdKey(vmId: string, nsUri: string): string {
  return `${vmId.toLowerCase()}|${nsUri}`;
}
