import type { DirectReader } from '../../src/infra/storage/direct-read.native.js';
import { lvmCrc, MDA_HEADER_SIZE } from '../../src/infra/storage/lvm.mda.js';

/**
 * Sectors captured from a PV that `pvcreate` + `vgcreate` (LVM 2.03.16) made on a
 * project machine: the label sector (sector 1, pv_header with one data and one metadata
 * area) and the first 64 bytes of its mda_header (the rest of the 512 are zero).
 */
export const REAL_LABEL_SECTOR_HEAD =
  '4c4142454c4f4e4501000000000000007db6906b200000004c564d322030303138614e34544b317547615061536850766f43316b6d38554d6664743339624c65' +
  '00000001000000000000100000000000000000000000000000000000000000000000000000000000001000000000000000f00f00000000000000000000000000' +
  '0000000000000000020000000100000000000000000000000000000000000000';
export const REAL_MDA_HEADER_HEAD =
  'd1e64835204c564d3220785b35412572304e2a3e01000000001000000000000000f00f0000000000000c0000000000003f07000000000000e10daac800000000';

export function sector(hexHead: string): Buffer {
  const out = Buffer.alloc(512);
  Buffer.from(hexHead, 'hex').copy(out);
  return out;
}

export function metadataText(vg: string, seqno: number, vgId = 'fnqYH6-QMqQ-2Xfc-GU5X-9f9c-MC1M-FUKIs6'): string {
  return `${vg} {\nid = "${vg === '' ? '' : vgId}"\nseqno = ${seqno}\nformat = "lvm2"\nstatus = ["RESIZEABLE", "READ", "WRITE"]\nflags = []\nextent_size = 8192\n}\n`;
}

export interface PvImageOptions {
  /** Sector (0–3) of the label. Default 1, as pvcreate writes it. */
  readonly labelSector?: number;
  /** null: a PV without a metadata area (pvcreate --metadatacopies 0). */
  readonly mdaOffset?: number | null;
  readonly mdaSize?: number;
  /** Offset of the committed text inside the metadata area. */
  readonly textOffset?: number;
  readonly text: string;
  readonly ignored?: boolean;
  readonly magic?: string;
  readonly version?: number;
}

/** A PV image as LVM lays it out: label, pv_header, mda_header, the text (wrapping if asked). */
export function pvImage(o: PvImageOptions): Buffer {
  const mdaOffset = o.mdaOffset === undefined ? 4096 : o.mdaOffset;
  const mdaSize = o.mdaSize ?? 8192;
  const image = Buffer.alloc((mdaOffset ?? 4096) + mdaSize + 4096);
  const labelAt = (o.labelSector ?? 1) * 512;
  const label = image.subarray(labelAt, labelAt + 512);
  label.write('LABELONE', 0, 'latin1');
  label.writeBigUInt64LE(BigInt(o.labelSector ?? 1), 8);
  label.writeUInt32LE(32, 20);
  label.write('LVM2 001', 24, 'latin1');
  label.write('8aN4TK1uGaPaShPvoC1km8UMfdt39bLe', 32, 'latin1');
  label.writeBigUInt64LE(BigInt(image.length), 64);
  let p = 72;
  label.writeBigUInt64LE(1048576n, p); // data area at 1 MiB, size 0 (to the end)
  p += 32; // the data area and its terminating zero entry
  if (mdaOffset !== null) {
    label.writeBigUInt64LE(BigInt(mdaOffset), p);
    label.writeBigUInt64LE(BigInt(mdaSize), p + 8);
  }
  label.writeUInt32LE(lvmCrc(label.subarray(20)), 16);

  if (mdaOffset !== null) {
    const header = image.subarray(mdaOffset, mdaOffset + MDA_HEADER_SIZE);
    const text = Buffer.from(o.text, 'utf8');
    const textOffset = o.textOffset ?? MDA_HEADER_SIZE;
    header.write(o.magic ?? ' LVM2 x[5A%r0N*>', 4, 'latin1');
    header.writeUInt32LE(o.version ?? 1, 20);
    header.writeBigUInt64LE(BigInt(mdaOffset), 24);
    header.writeBigUInt64LE(BigInt(mdaSize), 32);
    header.writeBigUInt64LE(BigInt(textOffset), 40);
    header.writeBigUInt64LE(BigInt(text.length), 48);
    header.writeUInt32LE(lvmCrc(text), 56);
    header.writeUInt32LE(o.ignored === true ? 1 : 0, 60);
    header.writeUInt32LE(lvmCrc(header.subarray(4)), 0);
    const first = Math.min(text.length, mdaSize - textOffset);
    text.copy(image, mdaOffset + textOffset, 0, first);
    text.copy(image, mdaOffset + MDA_HEADER_SIZE, first);
  }
  return image;
}

/** A DirectReader over in-memory PV images, counting its calls. */
export class ImageReader {
  readonly images = new Map<string, Buffer>();
  calls = 0;
  readonly read: DirectReader = (path, ranges) => {
    this.calls += 1;
    const image = this.images.get(path);
    if (image === undefined) {
      return Promise.reject(Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT', errno: -2, syscall: 'open', path }));
    }
    return Promise.resolve(ranges.map((r) => Buffer.from(image.subarray(r.offset, r.offset + r.length))));
  };
}
