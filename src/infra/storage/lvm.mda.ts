import type { ByteRange, DirectReader } from './direct-read.native.js';

/**
 * LVM2's on-disk text format, as far as needed to read a VG's metadata `seqno` straight
 * from a PV (lvm2 lib/label/label.c, lib/format_text/layout.h, format-text.c): LVM bumps
 * the seqno on every change of the VG (lvremove, lvrename, tags, lvextend, pvmove…), so
 * an unchanged seqno means LV geometry and tags read earlier are still current — for the
 * price of a few sector reads instead of a ~50 ms LVM process.
 *
 * Layout: a label sector in the first 4 sectors ("LABELONE", its own sector number, a
 * CRC, the pv_header offset, "LVM2 001"); the pv_header lists data areas then metadata
 * areas (offset, size; each list ends with a zero entry). A metadata area starts with a
 * 512-byte mda_header (CRC, magic, version 1, start, size, raw_locn[]); the rest is a
 * circular buffer of metadata texts, raw_locn[0] the committed one. A text that runs
 * past the end of the area continues right after the mda_header.
 */

export const SECTOR_SIZE = 512;
export const LABEL_SCAN_SECTORS = 4;
export const MDA_HEADER_SIZE = 512;
/** Where pvcreate puts the first metadata area unless told otherwise. */
export const USUAL_MDA_OFFSET = 4096;
/** Enough text for `<vg> {\nid = "…"\nseqno = N\n` with the longest VG name (128). */
export const METADATA_HEAD_BYTES = 1024;

const LABEL_ID = 'LABELONE';
const LABEL_TYPE = 'LVM2 001';
const FMTT_MAGIC = ' LVM2 x[5A%r0N*>';
const FMTT_VERSION = 1;
const INITIAL_CRC = 0xf597a6cf;
const RAW_LOCN_IGNORED = 1;
const PV_UUID_LEN = 32;
const DISK_LOCN_SIZE = 16;
const RAW_LOCN_SIZE = 24;
const MDA_RAW_LOCNS_AT = 40;

/** The metadata area cannot tell (absent, ignored, damaged, not LVM2): ask LVM. */
export class LvmMetadataError extends Error {
  override readonly name = 'LvmMetadataError';
}

function fail(message: string): never {
  throw new LvmMetadataError(message);
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** LVM's calc_crc: reflected CRC-32 (0xedb88320) from INITIAL_CRC, no final xor. */
export function lvmCrc(bytes: Uint8Array, initial = INITIAL_CRC): number {
  let crc = initial >>> 0;
  for (const byte of bytes) crc = ((CRC_TABLE[(crc ^ byte) & 0xff] ?? 0) ^ (crc >>> 8)) >>> 0;
  return crc;
}

function u64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} ${v} is out of range`);
  return Number(v);
}

export interface DiskArea {
  /** Bytes from the start of the PV. */
  readonly offset: number;
  readonly size: number;
}

export interface PvLabel {
  readonly pvUuid: string;
  readonly dataAreas: readonly DiskArea[];
  readonly metadataAreas: readonly DiskArea[];
}

/** Parses the PV label from the first `LABEL_SCAN_SECTORS` sectors of a PV. */
export function parsePvLabel(sectors: Buffer): PvLabel {
  for (let i = 0; i < LABEL_SCAN_SECTORS && (i + 1) * SECTOR_SIZE <= sectors.length; i++) {
    const sector = sectors.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
    if (sector.toString('latin1', 0, 8) !== LABEL_ID) continue;
    if (u64(sector, 8, 'label sector') !== i) continue;
    if (sector.readUInt32LE(16) !== lvmCrc(sector.subarray(20))) fail(`label in sector ${i} has a bad checksum`);
    if (sector.toString('latin1', 24, 32) !== LABEL_TYPE) fail(`label type is not ${LABEL_TYPE}`);
    const at = sector.readUInt32LE(20);
    if (at < 32 || at + PV_UUID_LEN + 8 > SECTOR_SIZE) fail(`pv_header offset ${at} is out of the sector`);
    const pvUuid = sector.toString('latin1', at, at + PV_UUID_LEN);
    let p = at + PV_UUID_LEN + 8;
    const list = (): DiskArea[] => {
      const out: DiskArea[] = [];
      for (;;) {
        if (p + DISK_LOCN_SIZE > SECTOR_SIZE) fail('pv_header area list runs out of the sector');
        const offset = u64(sector, p, 'area offset');
        const size = u64(sector, p + 8, 'area size');
        p += DISK_LOCN_SIZE;
        if (offset === 0) return out;
        out.push({ offset, size });
      }
    };
    const dataAreas = list();
    const metadataAreas = list();
    return { pvUuid, dataAreas, metadataAreas };
  }
  return fail('no LVM2 label in the first 4 sectors');
}

export interface RawLocation {
  /** From the start of the metadata area. */
  readonly offset: number;
  readonly size: number;
  readonly checksum: number;
  readonly flags: number;
}

export interface MdaHeader {
  /** Bytes from the start of the PV; the header itself is the area's first 512 bytes. */
  readonly start: number;
  readonly size: number;
  readonly locations: readonly RawLocation[];
}

/** Parses and checks an mda_header read at `expectedStart` (as LVM does: CRC, magic, version, start). */
export function parseMdaHeader(buf: Buffer, expectedStart: number): MdaHeader {
  if (buf.length < MDA_HEADER_SIZE) fail(`mda_header is ${buf.length} bytes, not ${MDA_HEADER_SIZE}`);
  const header = buf.subarray(0, MDA_HEADER_SIZE);
  if (header.toString('latin1', 4, 20) !== FMTT_MAGIC) fail('mda_header has a wrong magic number');
  if (header.readUInt32LE(0) !== lvmCrc(header.subarray(4))) fail('mda_header has a bad checksum');
  const version = header.readUInt32LE(20);
  if (version !== FMTT_VERSION) fail(`mda_header version ${version} is not ${FMTT_VERSION}`);
  const start = u64(header, 24, 'mda start');
  if (start !== expectedStart) fail(`mda_header says it starts at ${start}, read at ${expectedStart}`);
  const size = u64(header, 32, 'mda size');
  if (size <= MDA_HEADER_SIZE) fail(`metadata area of ${size} bytes`);
  const locations: RawLocation[] = [];
  for (let p = MDA_RAW_LOCNS_AT; p + RAW_LOCN_SIZE <= MDA_HEADER_SIZE; p += RAW_LOCN_SIZE) {
    const offset = u64(header, p, 'raw_locn offset');
    if (offset === 0) break;
    locations.push({ offset, size: u64(header, p + 8, 'raw_locn size'), checksum: header.readUInt32LE(p + 16), flags: header.readUInt32LE(p + 20) });
  }
  return { start, size, locations };
}

/** The committed metadata text; throws when there is none or the area is ignored (not kept current). */
export function committedLocation(header: MdaHeader): RawLocation {
  const locn = header.locations[0];
  if (locn === undefined || locn.size === 0) fail('metadata area holds no metadata');
  if ((locn.flags & RAW_LOCN_IGNORED) !== 0) fail('metadata area is ignored (not kept current)');
  if (locn.offset < MDA_HEADER_SIZE || locn.offset >= header.size || locn.size > header.size - MDA_HEADER_SIZE) {
    fail(`metadata text at ${locn.offset} (+${locn.size}) is out of the area`);
  }
  return locn;
}

/** Where the first `maxBytes` of the text at `locn` lie on the PV: one range, or two if it wraps. */
export function metadataTextRanges(header: MdaHeader, locn: RawLocation, maxBytes = METADATA_HEAD_BYTES): ByteRange[] {
  const want = Math.min(locn.size, maxBytes);
  const first = Math.min(want, header.size - locn.offset);
  const ranges: ByteRange[] = [{ offset: header.start + locn.offset, length: first }];
  if (want > first) ranges.push({ offset: header.start + MDA_HEADER_SIZE, length: want - first });
  return ranges;
}

export interface VgMetadataHead {
  readonly vgName: string;
  /** The VG's UUID as LVM prints it (`vg_uuid`). */
  readonly vgId: string;
  readonly seqno: number;
}

const HEAD_RE = /^([A-Za-z0-9+_.-]+)\s*\{\s*\n\s*id\s*=\s*"([A-Za-z0-9-]+)"\s*\n\s*seqno\s*=\s*(\d+)\s*\n/;

/** Parses `<vgname> {\nid = "…"\nseqno = N\n`, the way LVM starts every metadata text. */
export function parseMetadataHead(text: string): VgMetadataHead {
  const m = HEAD_RE.exec(text);
  if (m === null) fail(`metadata text does not start with a VG section: ${JSON.stringify(text.slice(0, 80))}`);
  const [, vgName = '', vgId = '', seqno = ''] = m;
  const n = Number(seqno);
  if (!Number.isSafeInteger(n)) fail(`seqno ${seqno} is out of range`);
  return { vgName, vgId, seqno: n };
}

/**
 * The committed metadata head of the VG on `pv`: two direct reads (label and the usual
 * mda_header location together, then the text), a third when the metadata area is not
 * where pvcreate usually puts it. Throws LvmMetadataError when the PV cannot tell
 * (no or ignored metadata area, damage) and the reader's error when it cannot be read.
 */
export async function readVgMetadataHead(pv: string, read: DirectReader): Promise<VgMetadataHead> {
  const [labelSectors = Buffer.alloc(0), usualHeader] = await read(pv, [
    { offset: 0, length: LABEL_SCAN_SECTORS * SECTOR_SIZE },
    { offset: USUAL_MDA_OFFSET, length: MDA_HEADER_SIZE },
  ]);
  const area = parsePvLabel(labelSectors).metadataAreas[0];
  if (area === undefined) fail(`${pv} has no metadata area`);
  const headerBuf = area.offset === USUAL_MDA_OFFSET && usualHeader !== undefined ? usualHeader : (await read(pv, [{ offset: area.offset, length: MDA_HEADER_SIZE }]))[0];
  const header = parseMdaHeader(headerBuf ?? Buffer.alloc(0), area.offset);
  const parts = await read(pv, metadataTextRanges(header, committedLocation(header)));
  return parseMetadataHead(Buffer.concat(parts).toString('utf8'));
}
