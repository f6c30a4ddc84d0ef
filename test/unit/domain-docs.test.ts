import { describe, expect, it } from 'vitest';
import { parseXml } from '../../src/domain/metadata/xml-tree.js';
import type { CdromDisk } from '../../src/infra/libvirt/cdrom-disk.xml.js';
import { DomainDocs, OWN_EVENT_GRACE_MS } from '../../src/infra/libvirt/domain-docs.js';

const VM = '3f9b6a52-8c1d-4e7a-9b0f-2a6c4d8e1f35';
const NS = 'urn:test';
const disk = (path: string): CdromDisk => ({ drive: 'sdc', element: parseXml(`<disk type='file' device='cdrom'><source file='${path}'/><target dev='sdc'/></disk>`) });

function docs(): { d: DomainDocs; clock: { t: number } } {
  const clock = { t: 1_000 };
  const d = new DomainDocs(64, () => true, () => clock.t);
  d.enable();
  return { d, clock };
}

describe('DomainDocs: metadata', () => {
  it('keeps a read, and an own write without reading it back', () => {
    const { d } = docs();
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    expect(d.metadataOf(VM, NS)).toBe('<a/>');
    const t = d.writing(VM, NS);
    expect(d.metadataOf(VM, NS)).toBeUndefined(); // unknown while it is in flight
    d.wrote(VM, NS, t, '<b/>');
    expect(d.metadataOf(VM, NS)).toBe('<b/>');
    d.onMetadataEvent(VM, NS); // our own write's event
    expect(d.metadataOf(VM, NS)).toBe('<b/>');
  });

  it("forgets on someone else's write, also when its event comes before ours", () => {
    const { d } = docs();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    d.onMetadataEvent(VM, NS);
    expect(d.metadataOf(VM, NS)).toBeUndefined();

    const t = d.writing(VM, NS);
    d.wrote(VM, NS, t, '<b/>');
    d.onMetadataEvent(VM, NS); // someone else's, taken for ours
    expect(d.metadataOf(VM, NS)).toBe('<b/>');
    d.onMetadataEvent(VM, NS); // ours: nothing of ours is outstanding any more
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });

  it('a read that raced an event does not keep its answer', () => {
    const { d } = docs();
    const v = d.metadataVersion(VM, NS);
    d.onMetadataEvent(VM, NS);
    d.keepMetadata(VM, NS, '<stale/>', v);
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });

  it('a failed write expects no event; a late one only forgets', () => {
    const { d } = docs();
    const t = d.writing(VM, NS);
    d.wrote(VM, NS, t, undefined);
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    d.onMetadataEvent(VM, NS); // the failed write landed after all, or someone else wrote
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });

  it('does not trust an own write whose event is overdue', () => {
    const { d, clock } = docs();
    const t = d.writing(VM, NS);
    d.wrote(VM, NS, t, '<b/>');
    clock.t += OWN_EVENT_GRACE_MS + 1;
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    d.keepMetadata(VM, NS, '<c/>', d.metadataVersion(VM, NS));
    d.onMetadataEvent(VM, NS); // nothing outstanding: someone else's
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });

  it('keeps nothing while disabled and forgets all on disable or a lifecycle event', () => {
    const { d } = docs();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    d.forget(VM);
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    d.disable();
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    const t = d.writing(VM, NS);
    d.wrote(VM, NS, t, '<b/>');
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });
});

describe('DomainDocs: domains it may keep', () => {
  it('keeps nothing of a domain `keeps` refuses, and still counts its own writes against their events', () => {
    let running = false;
    const d = new DomainDocs(64, () => running);
    d.enable();
    d.keepMetadata(VM, NS, '<a/>', d.metadataVersion(VM, NS));
    d.keepDisks(VM, [disk('/a.iso')], d.disksVersion(VM));
    const t = d.writing(VM, NS);
    d.wrote(VM, NS, t, '<b/>');
    expect(d.metadataOf(VM, NS)).toBeUndefined();
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();
    running = true;
    d.onMetadataEvent(VM, NS); // the refused write's own event
    d.keepMetadata(VM, NS, '<b/>', d.metadataVersion(VM, NS));
    expect(d.metadataOf(VM, NS)).toBe('<b/>');
    d.onMetadataEvent(VM, NS); // someone else's
    expect(d.metadataOf(VM, NS)).toBeUndefined();
  });
});

describe('DomainDocs: CD-ROM disks', () => {
  it('keeps a read and the element an own update sent; its own tray events do not count', () => {
    const { d } = docs();
    d.keepDisks(VM, [disk('/a.iso')], d.disksVersion(VM));
    expect(d.diskOf(VM, 'sdc')).toEqual(disk('/a.iso'));
    const t = d.updating(VM);
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();
    expect(d.diskOf(VM, 'sdc', true)).toEqual(disk('/a.iso'));
    d.onTrayEvent(VM);
    d.onTrayEvent(VM);
    d.updated(VM, t, 'sdc', disk('/b.iso'));
    expect(d.diskOf(VM, 'sdc')).toEqual(disk('/b.iso'));
  });

  it("forgets on someone else's tray event, a failed update, or a lifecycle event", () => {
    const { d } = docs();
    d.keepDisks(VM, [disk('/a.iso')], d.disksVersion(VM));
    d.onTrayEvent(VM);
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();

    d.keepDisks(VM, [disk('/a.iso')], d.disksVersion(VM));
    const t = d.updating(VM);
    d.updated(VM, t, 'sdc', undefined);
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();

    d.keepDisks(VM, [disk('/a.iso')], d.disksVersion(VM));
    const t2 = d.updating(VM);
    d.forget(VM); // stopped under the update
    d.updated(VM, t2, 'sdc', disk('/b.iso'));
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();
  });

  it('a domain XML read that raced a tray event, or an own update, is not kept', () => {
    const { d } = docs();
    const v = d.disksVersion(VM);
    d.onTrayEvent(VM);
    d.keepDisks(VM, [disk('/stale.iso')], v);
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();
    const v2 = d.disksVersion(VM);
    const t = d.updating(VM);
    d.keepDisks(VM, [disk('/before.iso')], v2);
    d.updated(VM, t, 'sdc', undefined);
    expect(d.diskOf(VM, 'sdc')).toBeUndefined();
  });
});
