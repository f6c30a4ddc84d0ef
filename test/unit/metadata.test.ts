import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { VmMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import { Journal, JOURNAL_DEPTH } from '../../src/domain/metadata/journal.metadata.js';
import { ISO_A, ISO_B } from '../support/world.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/metadata/${name}.xml`, import.meta.url), 'utf8').trim();

describe('ovirt-vm metadata', () => {
  it('reads the design page\'s loaded CD-ROM: PDIV, no state', () => {
    const md = VmMetadata.parse(fixture('loaded'));
    expect(md.drive('sdc')).toEqual({ entries: [{ state: null, pdiv: ISO_A }], change: null });
    expect(md.driveNames().sort()).toEqual(['sda', 'sdc']);
  });

  it('reads the empty CD-ROM element as an entry without PDIV', () => {
    expect(VmMetadata.parse(fixture('empty')).drive('sdc')).toEqual({ entries: [{ state: null, pdiv: null }], change: null });
  });

  it('reads state="loading", state="ejecting" and both during a change', () => {
    expect(VmMetadata.parse(fixture('loading')).drive('sdc').entries).toEqual([{ state: 'loading', pdiv: ISO_A }]);
    expect(VmMetadata.parse(fixture('ejecting')).drive('sdc').entries).toEqual([{ state: 'ejecting', pdiv: ISO_A }]);
    expect(VmMetadata.parse(fixture('changing')).drive('sdc').entries).toEqual([
      { state: 'ejecting', pdiv: ISO_A },
      { state: 'loading', pdiv: ISO_B },
    ]);
  });

  it("reads vdsm's later <change> form", () => {
    expect(VmMetadata.parse(fixture('vdsm-change-loading')).drive('sdc')).toEqual({
      entries: [{ state: null, pdiv: ISO_A }],
      change: { state: 'loading', pdiv: ISO_B },
    });
    expect(VmMetadata.parse(fixture('vdsm-change-ejecting')).drive('sdc').change).toEqual({ state: 'ejecting', pdiv: null });
  });

  it('round-trips everything it does not understand: other devices, volumeChain, typed values, order', () => {
    const xml = fixture('loaded');
    expect(VmMetadata.parse(xml).toXml()).toBe(xml);
    const edited = VmMetadata.parse(xml).markEntry('sdc', ISO_A, 'ejecting').clearState('sdc', 'ejecting').toXml();
    expect(edited).toBe(xml);
  });

  it('keeps unknown attributes, keys and escaped text through an edit', () => {
    const xml = `<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:custom a="1&amp;2" b="x">a &lt;b&gt; c</ovirt-vm:custom><ovirt-vm:device devtype="disk" name="sdc"/></ovirt-vm:vm>`;
    const out = VmMetadata.parse(xml).addEntry('sdc', ISO_A, 'loading').toXml();
    expect(out).toContain('<ovirt-vm:custom a="1&amp;2" b="x">a &lt;b&gt; c</ovirt-vm:custom>');
    expect(VmMetadata.parse(out).drive('sdc').entries).toEqual([{ state: 'loading', pdiv: ISO_A }]);
  });

  it('adds state="loading" into the empty element, in the design page\'s form', () => {
    const out = VmMetadata.parse(fixture('empty')).addEntry('sdc', ISO_A, 'loading').toXml();
    expect(out).toBe(fixture('loading'));
  });

  it('marks an entry ejecting and adds the loading one beside it', () => {
    const out = VmMetadata.parse(fixture('loaded')).markEntry('sdc', ISO_A, 'ejecting').addEntry('sdc', ISO_B, 'loading');
    expect(out.drive('sdc').entries).toEqual([
      { state: 'ejecting', pdiv: ISO_A },
      { state: 'loading', pdiv: ISO_B },
    ]);
    expect(out.drive('sda').entries).toHaveLength(1);
    expect(out.toXml()).toContain('<ovirt-vm:leaseOffset type="int">105906176</ovirt-vm:leaseOffset>');
  });

  it('removing the last entry leaves the empty element; removing one of two deletes it', () => {
    expect(VmMetadata.parse(fixture('ejecting')).removeEntry('sdc', 'ejecting').toXml()).toBe(fixture('empty'));
    const one = VmMetadata.parse(fixture('changing')).removeEntry('sdc', 'ejecting').clearState('sdc', 'loading');
    expect(one.drive('sdc').entries).toEqual([{ state: null, pdiv: ISO_B }]);
    expect(one.toXml()).not.toMatch(/\n\s*\n/);
  });

  it('drops the state attribute only', () => {
    expect(VmMetadata.parse(fixture('loading')).clearState('sdc', 'loading').drive('sdc').entries).toEqual([{ state: null, pdiv: ISO_A }]);
  });

  it('commits and discards a vdsm <change>', () => {
    const committed = VmMetadata.parse(fixture('vdsm-change-loading')).commitChange('sdc');
    expect(committed.drive('sdc')).toEqual({ entries: [{ state: null, pdiv: ISO_B }], change: null });
    const discarded = VmMetadata.parse(fixture('vdsm-change-loading')).discardChange('sdc');
    expect(discarded.drive('sdc')).toEqual({ entries: [{ state: null, pdiv: ISO_A }], change: null });
    const ejected = VmMetadata.parse(fixture('vdsm-change-ejecting')).commitChange('sdc');
    expect(ejected.drive('sdc')).toEqual({ entries: [{ state: null, pdiv: null }], change: null });
  });

  it('starts an element when the domain has none, and rejects what is not the ovirt-vm element', () => {
    expect(VmMetadata.parse(null).addEntry('sdc', ISO_A, 'loading').drive('sdc').entries).toEqual([{ state: 'loading', pdiv: ISO_A }]);
    expect(() => VmMetadata.parse('<foo/>')).toThrow(/expected <vm>/);
  });
});

describe('command journal', () => {
  const result = { outcome: 'completed' as const, action: 'load' as const, previous: null, current: ISO_A, warnings: [], error: null };

  it('keeps pending and done records per drive across a round trip', () => {
    let j = Journal.parse(null).withPending({ commandId: 'a', drive: 'sdc', action: 'load', previous: null, requested: ISO_A, startedAt: 't' });
    j = Journal.parse(j.toXml());
    expect(j.find('sdc', 'a')?.status).toBe('pending');
    j = Journal.parse(j.withDone({ commandId: 'a', drive: 'sdc', result, startedAt: 't' }).toXml());
    expect(j.find('sdc', 'a')).toMatchObject({ status: 'done', result });
    expect(j.find('sdb', 'a')).toBeUndefined();
  });

  it(`is bounded: the last ${JOURNAL_DEPTH} commands per drive`, () => {
    let j = Journal.parse(null);
    for (let i = 0; i < 40; i++) j = j.withDone({ commandId: `c${i}`, drive: 'sdc', result, startedAt: 't' });
    j = j.withDone({ commandId: 'other', drive: 'sdd', result, startedAt: 't' });
    expect(j.size).toBe(JOURNAL_DEPTH + 1);
    expect(j.find('sdc', 'c39')).toBeDefined();
    expect(j.find('sdc', `c${40 - JOURNAL_DEPTH}`)).toBeDefined();
    expect(j.find('sdc', `c${39 - JOURNAL_DEPTH}`)).toBeUndefined();
  });

  it('never evicts a pinned record (a command the broker may still redeliver), whatever the depth', () => {
    let j = Journal.parse(null);
    const unacked = new Set(['c0', 'c1', 'c2', 'c5']);
    for (let i = 0; i < 30; i++) j = j.withDone({ commandId: `c${i}`, drive: 'sdc', result, startedAt: 't' }, (id) => unacked.has(id));
    for (const id of unacked) expect(j.find('sdc', id), id).toBeDefined();
    expect(j.size).toBe(JOURNAL_DEPTH + unacked.size);
    expect(j.find('sdc', 'c29')).toBeDefined();
    expect(j.find('sdc', 'c3')).toBeUndefined();
    // once acked, they go with the next write
    j = Journal.parse(j.toXml()).withDone({ commandId: 'c30', drive: 'sdc', result, startedAt: 't' });
    expect(j.size).toBe(JOURNAL_DEPTH);
    expect(j.find('sdc', 'c0')).toBeUndefined();
  });

  it('forgets a pending record on request, keeping the rest', () => {
    let j = Journal.parse(null).withDone({ commandId: 'a', drive: 'sdc', result, startedAt: 't' });
    j = j.withPending({ commandId: 'b', drive: 'sdc', action: 'load', previous: null, requested: ISO_A, startedAt: 't', run: 'r1', deaths: 2 });
    expect(Journal.parse(j.toXml()).find('sdc', 'b')).toMatchObject({ status: 'pending', run: 'r1', deaths: 2 });
    expect(j.withoutPending('sdc', 'a')).toBe(j);
    const k = Journal.parse(j.withoutPending('sdc', 'B').toXml());
    expect(k.find('sdc', 'b')).toBeUndefined();
    expect(k.find('sdc', 'a')?.status).toBe('done');
  });

  it('survives a damaged document', () => {
    expect(Journal.parse('<cdrom:journal xmlns:cdrom="x"><cdrom:command id="a">bm90IGpzb24</cdrom:command></cdrom:journal>').size).toBe(0);
  });

  it('a damaged record costs only that command; others read back, whatever the quoting', () => {
    const good = Journal.parse(null).withDone({ commandId: 'B0B0B0B0-6f43-4a43-9d0e-3b8a7b0f2a11', drive: 'sdc', result, startedAt: 't' }).toXml();
    const requoted = good.replace(/"/g, "'").replace('<cdrom:command', `<cdrom:command id='a' drive='sdc' status='done'>bm90IGpzb24</cdrom:command><cdrom:command`);
    const j = Journal.parse(requoted);
    expect(j.size).toBe(2);
    expect(j.find('sdc', 'a')).toBeUndefined();
    expect(j.find('sdc', 'b0b0b0b0-6f43-4a43-9d0e-3b8a7b0f2a11')).toMatchObject({ status: 'done', result });
    expect(Journal.parse(j.withDone({ commandId: 'c', drive: 'sdc', result, startedAt: 't' }).toXml()).size).toBe(3);
  });
});
