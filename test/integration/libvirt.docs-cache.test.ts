import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DomainEvent, MetadataNamespace } from '../../src/domain/ports.js';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { toLibvirtMetadata } from '../../src/infra/libvirt/metadata-ns.xml.js';
import { loadVirt, type NativeConnection, type NativeDomain, type NativeEvent, type VirtBinding } from '../../src/infra/libvirt/virt.native.js';
import { bind } from '../support/proxy.js';
import { LIBVIRT_URI, TestVms } from '../support/vm.js';

/**
 * The adapter answers metadata reads and drive reads from what it last read or wrote
 * (DomainDocs) while domain events can tell it that someone else changed them. These
 * tests count the reads that reach libvirt, and change the domain behind the adapter's
 * back through a connection of their own — a metadata write, a medium change — to show
 * that the adapter then answers with libvirt's truth, not with what it kept.
 */

const NS: MetadataNamespace = { uri: 'http://example.org/cdrom-worker-test/docs-cache', prefix: 'dc', key: 'mark' };
const mark = (n: number): string => `<dc:mark xmlns:dc="${NS.uri}"><dc:n>${n}</dc:n></dc:mark>`;
const k = loadVirt().constants;
/** libvirt answers with its own indentation: compare documents without it */
const flat = (xml: string | null): string | null => xml?.replace(/>\s+</g, '><') ?? null;

interface Reads {
  metadata: number;
  xml: number;
}

/** The real addon, counting getMetadata and XMLDesc calls. */
function countingBinding(reads: Reads): VirtBinding {
  const real = loadVirt();
  const domain = (d: NativeDomain): NativeDomain =>
    bind(d, {
      getMetadata: (type: number, uri: string | null, flags: number) => {
        reads.metadata += 1;
        return d.getMetadata(type, uri, flags);
      },
      xmlDesc: (flags: number) => {
        reads.xml += 1;
        return d.xmlDesc(flags);
      },
    });
  return {
    ...real,
    open: async (uri, listener, interval, count): Promise<NativeConnection> => {
      const conn = await real.open(uri, listener, interval, count);
      return bind(conn, { lookupByUUIDString: async (uuid: string) => domain(await conn.lookupByUUIDString(uuid)) });
    },
  };
}

describe('LibvirtHypervisor metadata and drive cache (kept true by domain events)', () => {
  let vms: TestVms;
  let isoA: string;
  let isoB: string;
  const undo: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    vms = await TestVms.open();
    const dir = await vms.scratchDir();
    isoA = await vms.makeIso(dir, 'cdw-dc-a');
    isoB = await vms.makeIso(dir, 'cdw-dc-b');
  });
  afterEach(async () => {
    for (const u of undo.splice(0).reverse()) await u().catch(() => undefined);
  });
  afterAll(async () => {
    await vms?.cleanup();
  });

  async function open(): Promise<{ h: LibvirtHypervisor; reads: Reads }> {
    const reads: Reads = { metadata: 0, xml: 0 };
    const h = await LibvirtHypervisor.open({ uri: LIBVIRT_URI, binding: countingBinding(reads) });
    undo.push(() => h.close());
    return { h, reads };
  }

  function next(h: LibvirtHypervisor, match: (e: DomainEvent) => boolean): Promise<void> {
    return new Promise((resolve) => {
      const off = h.onEvent((e) => {
        if (match(e)) {
          off();
          resolve();
        }
      });
    });
  }

  it('does not read back its own writes, nor read a drive nobody touched', async () => {
    const vm = await vms.create();
    const { h, reads } = await open();
    // nothing is kept of a domain not known to be running: a first write learns it is
    expect(await h.getMetadata(vm.uuid, NS)).toBeNull();
    expect(await h.getMetadata(vm.uuid, NS)).toBeNull();
    expect(reads).toEqual({ metadata: 2, xml: 0 });
    await h.setMetadata(vm.uuid, NS, mark(0));
    expect(await h.readDrive(vm.uuid, 'sdc')).toBeNull();
    expect(reads).toEqual({ metadata: 2, xml: 1 });

    for (let i = 1; i <= 5; i++) {
      await h.setMetadata(vm.uuid, NS, mark(i));
      expect(await h.getMetadata(vm.uuid, NS)).toBe(mark(i));
    }
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: isoA });
    expect(await h.readDrive(vm.uuid, 'sdc')).toEqual({ type: 'file', path: isoA });
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: isoB });
    expect(await h.readDrive(vm.uuid, 'sdc')).toEqual({ type: 'file', path: isoB });
    await h.updateDevice(vm.uuid, 'sdc', null);
    expect(await h.readDrive(vm.uuid, 'sdc')).toBeNull();
    expect(reads).toEqual({ metadata: 2, xml: 1 });

    // what it answered is what libvirt has
    expect(flat(await vm.domain.getMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, NS.uri, 0))).toBe(toLibvirtMetadata(mark(5), NS));
    expect(await vm.domain.xmlDesc(0)).not.toMatch(/cdw-dc-[ab]/);
  });

  it("sees someone else's metadata write once its event has come", async () => {
    const vm = await vms.create();
    const { h, reads } = await open();
    await h.setMetadata(vm.uuid, NS, mark(1));
    expect(await h.getMetadata(vm.uuid, NS)).toBe(mark(1));
    const before = reads.metadata;

    // our own write's event has come and gone; the next one is someone else's
    await new Promise((r) => setTimeout(r, 200));
    const seen = next(h, (e) => e.kind === 'metadata-change' && e.vmId === vm.uuid);
    await vm.domain.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, toLibvirtMetadata(mark(99), NS), NS.prefix, NS.uri, k.VIR_DOMAIN_AFFECT_LIVE);
    await seen;
    expect(flat(await h.getMetadata(vm.uuid, NS))).toBe(mark(99));
    expect(reads.metadata).toBe(before + 1);

    // and a foreign write between two of ours is not lost to the count of our events
    await h.setMetadata(vm.uuid, NS, mark(2));
    await vm.domain.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, toLibvirtMetadata(mark(100), NS), NS.prefix, NS.uri, k.VIR_DOMAIN_AFFECT_LIVE);
    await new Promise((r) => setTimeout(r, 200));
    expect(flat(await h.getMetadata(vm.uuid, NS))).toBe(mark(100));
  });

  it("sees someone else's medium change once the tray events have come", async () => {
    const vm = await vms.create();
    const { h, reads } = await open();
    await h.setMetadata(vm.uuid, NS, mark(0));
    expect(await h.readDrive(vm.uuid, 'sdc')).toBeNull();
    const closed = next(h, (e) => e.kind === 'tray-change' && e.vmId === vm.uuid && !e.open);
    const disk = `<disk type='file' device='cdrom'><driver name='qemu'/><source file='${isoA}'/><target dev='sdc' bus='sata'/><readonly/></disk>`;
    await vm.domain.updateDeviceFlags(disk, k.VIR_DOMAIN_AFFECT_LIVE);
    await closed;
    // (mapping the tray event's device alias to its drive may read the domain XML once)
    const xmlReads = reads.xml;
    expect(await h.readDrive(vm.uuid, 'sdc')).toEqual({ type: 'file', path: isoA });
    expect(reads.xml).toBe(xmlReads + 1);
    // the change the adapter makes next is built on what libvirt shows now
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: isoB });
    expect(reads.xml).toBe(xmlReads + 1);
    expect(await vm.domain.xmlDesc(0)).toContain(isoB);
  });

  it('keeps nothing while the events connection is down', async () => {
    const vm = await vms.create();
    const { h, reads } = await open();
    await h.setMetadata(vm.uuid, NS, mark(1));
    await h.readDrive(vm.uuid, 'sdc');
    const internal = h as unknown as { events: { generation: number; onNative(generation: number, e: NativeEvent): void } };
    const reconnected = next(h, (e) => e.kind === 'reconnected');
    internal.events.onNative(internal.events.generation, { kind: 'close', event: k.VIR_CONNECT_CLOSE_REASON_EOF, detail: 0 });
    const r0 = { ...reads };
    expect(flat(await h.getMetadata(vm.uuid, NS))).toBe(mark(1));
    expect(await h.readDrive(vm.uuid, 'sdc')).toBeNull();
    await h.setMetadata(vm.uuid, NS, mark(2));
    expect(flat(await h.getMetadata(vm.uuid, NS))).toBe(mark(2));
    expect(reads).toEqual({ metadata: r0.metadata + 2, xml: r0.xml + 1 });
    await reconnected;
    // kept again once the domain is known to be running (a write learns it)
    await h.setMetadata(vm.uuid, NS, mark(3));
    expect(await h.getMetadata(vm.uuid, NS)).toBe(mark(3));
    expect(await h.getMetadata(vm.uuid, NS)).toBe(mark(3));
    expect(reads.metadata).toBe(r0.metadata + 2);
  });
});
