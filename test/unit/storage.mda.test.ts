import { describe, expect, it } from 'vitest';
import {
  committedLocation,
  LvmMetadataError,
  lvmCrc,
  metadataTextRanges,
  parseMdaHeader,
  parseMetadataHead,
  parsePvLabel,
  readVgMetadataHead,
} from '../../src/infra/storage/lvm.mda.js';
import { ImageReader, metadataText, pvImage, REAL_LABEL_SECTOR_HEAD, REAL_MDA_HEADER_HEAD, sector } from './storage.mda-fixtures.js';

const VG = '19f103d6-4ea6-4994-9b63-5bab4601f0c0';

describe('LVM metadata area: sectors LVM wrote', () => {
  it('parses a real label sector and pv_header (its CRC checks)', () => {
    const sectors = Buffer.concat([Buffer.alloc(512), sector(REAL_LABEL_SECTOR_HEAD), Buffer.alloc(1024)]);
    expect(parsePvLabel(sectors)).toEqual({
      pvUuid: '8aN4TK1uGaPaShPvoC1km8UMfdt39bLe',
      dataAreas: [{ offset: 1048576, size: 0 }],
      metadataAreas: [{ offset: 4096, size: 1044480 }],
    });
  });

  it('parses a real mda_header (its CRC checks)', () => {
    const header = sector(REAL_MDA_HEADER_HEAD);
    expect(lvmCrc(header.subarray(4))).toBe(header.readUInt32LE(0));
    expect(parseMdaHeader(header, 4096)).toEqual({
      start: 4096,
      size: 1044480,
      locations: [{ offset: 3072, size: 1855, checksum: 0xc8aa0de1, flags: 0 }],
    });
  });
});

describe('LVM metadata area: parsing and checks', () => {
  const header = (o: Partial<Parameters<typeof pvImage>[0]> = {}) => pvImage({ text: metadataText(VG, 7), ...o }).subarray(4096, 4096 + 512);

  it('finds the label in any of the first 4 sectors, and nowhere else', () => {
    for (const labelSector of [0, 1, 2, 3]) {
      expect(parsePvLabel(pvImage({ labelSector, text: metadataText(VG, 1) }).subarray(0, 2048)).metadataAreas).toEqual([{ offset: 4096, size: 8192 }]);
    }
    expect(() => parsePvLabel(Buffer.alloc(2048))).toThrow(/no LVM2 label/);
  });

  it('refuses a label with a bad checksum', () => {
    const image = pvImage({ text: metadataText(VG, 1) });
    image.writeUInt8(image.readUInt8(512 + 40) ^ 0xff, 512 + 40); // inside the pv uuid
    expect(() => parsePvLabel(image.subarray(0, 2048))).toThrow(LvmMetadataError);
  });

  it('a PV without a metadata area (metadatacopies 0) lists none', () => {
    expect(parsePvLabel(pvImage({ mdaOffset: null, text: '' }).subarray(0, 2048)).metadataAreas).toEqual([]);
  });

  it('refuses an mda_header with a bad magic, bad checksum, other version or other start', () => {
    expect(() => parseMdaHeader(header({ magic: ' LVM2 x[5A%r0N*<' }), 4096)).toThrow(/magic/);
    const damaged = Buffer.from(header());
    damaged.writeUInt8(damaged.readUInt8(44) ^ 1, 44);
    expect(() => parseMdaHeader(damaged, 4096)).toThrow(/checksum/);
    expect(() => parseMdaHeader(header({ version: 2 }), 4096)).toThrow(/version 2/);
    expect(() => parseMdaHeader(header(), 8192)).toThrow(/starts at 4096/);
    expect(() => parseMdaHeader(header().subarray(0, 100), 4096)).toThrow(/100 bytes/);
  });

  it('the committed text must exist, be kept current and lie inside the area', () => {
    expect(committedLocation(parseMdaHeader(header(), 4096))).toMatchObject({ offset: 512 });
    expect(() => committedLocation(parseMdaHeader(header({ ignored: true }), 4096))).toThrow(/ignored/);
    expect(() => committedLocation({ start: 4096, size: 8192, locations: [] })).toThrow(/no metadata/);
    expect(() => committedLocation({ start: 4096, size: 8192, locations: [{ offset: 9000, size: 10, checksum: 0, flags: 0 }] })).toThrow(/out of the area/);
  });

  it('text ranges: one range, or two when the text wraps past the end of the area', () => {
    const h = { start: 4096, size: 8192, locations: [] };
    expect(metadataTextRanges(h, { offset: 1024, size: 300, checksum: 0, flags: 0 })).toEqual([{ offset: 5120, length: 300 }]);
    expect(metadataTextRanges(h, { offset: 8000, size: 3000, checksum: 0, flags: 0 })).toEqual([
      { offset: 4096 + 8000, length: 192 },
      { offset: 4096 + 512, length: 1024 - 192 },
    ]);
    expect(metadataTextRanges(h, { offset: 8000, size: 100, checksum: 0, flags: 0 })).toEqual([{ offset: 12096, length: 100 }]);
  });

  it('parses the head of a metadata text; a cut or foreign text is refused', () => {
    expect(parseMetadataHead(metadataText(VG, 42))).toEqual({ vgName: VG, vgId: 'fnqYH6-QMqQ-2Xfc-GU5X-9f9c-MC1M-FUKIs6', seqno: 42 });
    // Cut inside the seqno: "seqno = 4" of "seqno = 42" must not read as 4.
    const text = metadataText(VG, 42);
    expect(() => parseMetadataHead(text.slice(0, text.indexOf('42') + 1))).toThrow(LvmMetadataError);
    expect(() => parseMetadataHead('\0\0\0\0')).toThrow(/VG section/);
    expect(() => parseMetadataHead('contents = "Text Format Volume Group"\n')).toThrow(/VG section/);
  });
});

describe('readVgMetadataHead over a PV image', () => {
  const PV = '/dev/fake-pv';

  it('reads the committed head in two reads when the area is where pvcreate puts it', async () => {
    const reader = new ImageReader();
    reader.images.set(PV, pvImage({ text: metadataText(VG, 5), textOffset: 2048 }));
    expect(await readVgMetadataHead(PV, reader.read)).toMatchObject({ vgName: VG, seqno: 5 });
    expect(reader.calls).toBe(2);
  });

  it('joins a text that wraps around the end of the circular buffer', async () => {
    const reader = new ImageReader();
    const text = metadataText(VG, 1234);
    // 20 bytes fit before the end: the VG name itself is split.
    reader.images.set(PV, pvImage({ text, mdaSize: 8192, textOffset: 8192 - 20 }));
    expect(await readVgMetadataHead(PV, reader.read)).toMatchObject({ vgName: VG, seqno: 1234 });
  });

  it('follows a metadata area that is not at 4096 (one more read)', async () => {
    const reader = new ImageReader();
    reader.images.set(PV, pvImage({ text: metadataText(VG, 9), mdaOffset: 65536 }));
    expect(await readVgMetadataHead(PV, reader.read)).toMatchObject({ seqno: 9 });
    expect(reader.calls).toBe(3);
  });

  it('a PV without a metadata area, an ignored one or bad magic cannot tell; a missing PV is the read error', async () => {
    const reader = new ImageReader();
    reader.images.set('/dev/none', pvImage({ mdaOffset: null, text: '' }));
    reader.images.set('/dev/ignored', pvImage({ text: metadataText(VG, 3), ignored: true }));
    reader.images.set('/dev/magic', pvImage({ text: metadataText(VG, 3), magic: 'x'.repeat(16) }));
    await expect(readVgMetadataHead('/dev/none', reader.read)).rejects.toThrow(/no metadata area/);
    await expect(readVgMetadataHead('/dev/ignored', reader.read)).rejects.toThrow(/ignored/);
    await expect(readVgMetadataHead('/dev/magic', reader.read)).rejects.toThrow(/magic/);
    await expect(readVgMetadataHead('/dev/gone', reader.read)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
