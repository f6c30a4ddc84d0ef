import { loadAddon } from '../libvirt/virt.native.js';

/** A byte range of a device; `length` > 0. */
export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

/**
 * Reads `ranges` of `path` past this host's page cache (O_DIRECT), one Buffer per range,
 * shorter only at the end of the device. Rejects with a Node-style errno error
 * (`code` such as `ENOENT`, negative `errno`, `syscall`, `path`).
 */
export type DirectReader = (path: string, ranges: readonly ByteRange[]) => Promise<Buffer[]>;

interface DirectReadBinding {
  readDirect(path: string, ranges: readonly ByteRange[]): Promise<Buffer[]>;
}

let binding: DirectReadBinding | undefined;

/**
 * The project's addon (native/lvm_mda.cc): the read runs on the addon's executor, with a
 * buffer aligned for O_DIRECT — neither of which plain `fs` offers. Loaded on first use
 * (a failure to load is a rejection, as any read failure).
 */
export const readDirect: DirectReader = async (path, ranges) => {
  binding ??= loadAddon() as DirectReadBinding;
  return await binding.readDirect(path, ranges);
};
