/**
 * LVM output as LVM 2.03 prints it. The no-device-mapper and not-found texts were
 * captured on the project machines; the in-use texts are LVM's own messages
 * (lib/activate: "Logical volume %s in use.", "… is used by another device.",
 * "… contains a filesystem in use."), exit 5, which these machines cannot produce.
 */
export const VG = '88252cf6-381e-48f0-8795-a294a32c7149';
export const LV = '626a493f-5214-4337-b580-96a1ce702c2a';
export const IMAGE = '89f05c7d-b961-4935-993f-514499024515';
export const OTHER_LV = '7f6e1a57-9a36-4f0c-8a53-2d3f3ad3e0b1';
export const OTHER_IMAGE = 'c1a4f3b2-0b7e-4c55-9b0b-6f1f9f6c2d10';

export const VG_UUID = 'fnqYH6-QMqQ-2Xfc-GU5X-9f9c-MC1M-FUKIs6';
export const PV = '/dev/mapper/36001405a1b2c3d4e5f6';

export interface PvsOptions {
  readonly seqno?: number;
  /** pv_mda_used_count: 0 as for a PV made with --metadatacopies 0 */
  readonly mdaUsed?: number;
  /** The LV is gone (lvremove) or has another name (lvrename). */
  readonly lvName?: string;
  readonly lvTags?: string;
}

export function pvsSegments(attr = '-wi-a-----', otherAttr = '-wi-------', o: PvsOptions = {}): string {
  const vg = `"vg_seqno":"${o.seqno ?? 7}", "vg_uuid":"${VG_UUID}", "pv_mda_used_count":"${o.mdaUsed ?? 1}"`;
  const lvName = o.lvName ?? LV;
  const lvTags = o.lvTags ?? `IU_${IMAGE},MD_4,PU_00000000-0000-0000-0000-000000000000`;
  return `  {
      "report": [
          {
              "pvseg": [
                  {"pv_name":"/dev/mapper/36001405a1b2c3d4e5f6", "pe_start":"135266304", "pvseg_start":"0", "pvseg_size":"8", "vg_extent_size":"134217728", "vg_name":"${VG}", "lv_name":"metadata", "lv_tags":"", "lv_attr":"-wi-a-----", ${vg}},
                  {"pv_name":"/dev/mapper/36001405a1b2c3d4e5f6", "pe_start":"135266304", "pvseg_start":"8", "pvseg_size":"3", "vg_extent_size":"134217728", "vg_name":"${VG}", "lv_name":"${lvName}", "lv_tags":"${lvTags}", "lv_attr":"${attr}", ${vg}},
                  {"pv_name":"/dev/mapper/36001405a1b2c3d4e5f6", "pe_start":"135266304", "pvseg_start":"11", "pvseg_size":"1", "vg_extent_size":"134217728", "vg_name":"${VG}", "lv_name":"${OTHER_LV}", "lv_tags":"IU_${OTHER_IMAGE},MD_5,PU_00000000-0000-0000-0000-000000000000", "lv_attr":"${otherAttr}", ${vg}},
                  {"pv_name":"/dev/mapper/36001405a1b2c3d4e5f6", "pe_start":"135266304", "pvseg_start":"12", "pvseg_size":"388", "vg_extent_size":"134217728", "vg_name":"${VG}", "lv_name":"", "lv_tags":"", "lv_attr":"", ${vg}}
              ]
          }
      ]
  }
`;
}

export const PVS_EMPTY = `  {
      "report": [
          {
              "pvseg": [
              ]
          }
      ]
  }
`;

export function lvsAttr(attr: string): string {
  return `  {
      "report": [
          {
              "lv": [
                  {"lv_attr":"${attr}"}
              ]
          }
      ]
  }
`;
}

export function lvsAll(rows: Array<{ vg: string; lv: string; tags: string; attr: string }>): string {
  const body = rows.map((r) => `                  {"vg_name":"${r.vg}", "lv_name":"${r.lv}", "lv_tags":"${r.tags}", "lv_attr":"${r.attr}"}`).join(',\n');
  return `  {
      "report": [
          {
              "lv": [
${body}
              ]
          }
      ]
  }
`;
}

export const STDERR_IN_USE = `  Logical volume ${VG}/${LV} in use.\n`;
export const STDERR_USED_BY_ANOTHER_DEVICE = `  Logical volume ${VG}/${LV} is used by another device.\n`;
export const STDERR_FILESYSTEM_IN_USE = `  Logical volume ${VG}/${LV} contains a filesystem in use.\n`;
export const STDERR_NO_DM = `  /dev/mapper/control: open failed: No such device
  Failure to communicate with kernel device-mapper driver.
  Check that device-mapper is available in the kernel.
  Incompatible libdevmapper 1.02.185 (2022-05-18) and kernel driver (unknown version).
`;
export const STDERR_LV_NOT_FOUND = `  Failed to find logical volume "${VG}/00000000-0000-0000-0000-000000000001"\n`;
export const STDERR_VG_NOT_FOUND = `  Volume group "00000000-0000-0000-0000-000000000001" not found
  Cannot process volume group 00000000-0000-0000-0000-000000000001
`;
