import { describe, expect, it } from 'vitest';
import { parseXml } from '../../src/domain/metadata/xml-tree.js';
import { JOURNAL_NS, OVIRT_VM_NS } from '../../src/domain/ports.js';
import { fromLibvirtMetadata, toLibvirtMetadata, treeFromLibvirt, treeToLibvirt } from '../../src/infra/libvirt/metadata-ns.xml.js';

/**
 * The port's prefixed metadata ↔ libvirt's namespace-less dialect. The text renaming
 * (the fast way) must mean exactly what the XML tree way means, for every document it
 * takes; documents it does not take go through the tree.
 */

const U = OVIRT_VM_NS.uri;
const same = (a: string, b: string): void => expect(parseXml(a)).toEqual(parseXml(b));
const flat = (x: string): string => x.replace(/>\s+</g, '><');

const PORT_DOCS = [
  `<ovirt-vm:vm xmlns:ovirt-vm="${U}"><ovirt-vm:device devtype="disk" name="sdc"/></ovirt-vm:vm>`,
  `<ovirt-vm:vm xmlns:ovirt-vm="${U}"><ovirt-vm:clusterVersion>4.7</ovirt-vm:clusterVersion><ovirt-vm:device devtype="disk" name="sdc" state="loading"><ovirt-vm:domainID>a&amp;b</ovirt-vm:domainID><ovirt-vm:note x="1 &lt; 2 &gt; 0">t &lt;ovirt-vm:fake&gt;</ovirt-vm:note></ovirt-vm:device><other:x xmlns:other="urn:o" other:y="z"><other:inner/></other:x></ovirt-vm:vm>`,
  `<ovirt-vm:vm xmlns:ovirt-vm='${U}'>\n  <ovirt-vm:device devtype='disk' name='hdc' a='&gt;'/>\n</ovirt-vm:vm>`,
  `<vm xmlns="${U}"><device name="sdc"/></vm>`,
];

describe('metadata namespace translation', () => {
  it.each(PORT_DOCS)('to libvirt: the text way means what the tree way means (%#)', (doc) => {
    same(toLibvirtMetadata(doc, OVIRT_VM_NS), treeToLibvirt(doc, OVIRT_VM_NS));
    expect(toLibvirtMetadata(doc, OVIRT_VM_NS)).not.toMatch(/xmlns:ovirt-vm|<\/?ovirt-vm:/);
  });

  it.each(PORT_DOCS)('round trip through libvirt\'s form (%#)', (doc) => {
    const there = toLibvirtMetadata(doc, OVIRT_VM_NS);
    same(fromLibvirtMetadata(there, OVIRT_VM_NS), treeFromLibvirt(there, OVIRT_VM_NS));
    same(flat(fromLibvirtMetadata(there, OVIRT_VM_NS)), flat(treeFromLibvirt(treeToLibvirt(doc, OVIRT_VM_NS), OVIRT_VM_NS)));
  });

  it("from libvirt's indented answer, with other namespaces kept", () => {
    const answer = `<vm xmlns:other="urn:o">\n  <device devtype="disk" name="sdc">\n    <volumeID>v</volumeID>\n  </device>\n  <other:x a="&lt;b&gt;"/>\n</vm>\n`;
    const port = fromLibvirtMetadata(answer, OVIRT_VM_NS);
    same(port, treeFromLibvirt(answer, OVIRT_VM_NS));
    expect(flat(port)).toBe(`<ovirt-vm:vm xmlns:ovirt-vm="${U}" xmlns:other="urn:o"><ovirt-vm:device devtype="disk" name="sdc"><ovirt-vm:volumeID>v</ovirt-vm:volumeID></ovirt-vm:device><other:x a="&lt;b&gt;"/></ovirt-vm:vm>`);
  });

  it('journal documents, both ways', () => {
    const p = JOURNAL_NS.prefix;
    const doc = `<${p}:${JOURNAL_NS.key} xmlns:${p}="${JOURNAL_NS.uri}"><${p}:command id="c1" drive="sdc" status="done">eyJhIjoxfQ</${p}:command></${p}:${JOURNAL_NS.key}>`;
    const there = toLibvirtMetadata(doc, JOURNAL_NS);
    expect(there).toBe(`<${JOURNAL_NS.key}><command id="c1" drive="sdc" status="done">eyJhIjoxfQ</command></${JOURNAL_NS.key}>`);
    expect(fromLibvirtMetadata(there, JOURNAL_NS)).toBe(doc);
  });

  it('a root in another prefix is refused; comments and CDATA go through the tree', () => {
    expect(() => toLibvirtMetadata('<x:vm xmlns:x="urn:x"/>', OVIRT_VM_NS)).toThrow(/not in prefix/);
    const commented = `<ovirt-vm:vm xmlns:ovirt-vm="${U}"><!-- <ovirt-vm:no/> --><ovirt-vm:device name="sdc"/></ovirt-vm:vm>`;
    expect(toLibvirtMetadata(commented, OVIRT_VM_NS)).toBe(treeToLibvirt(commented, OVIRT_VM_NS));
  });
});
