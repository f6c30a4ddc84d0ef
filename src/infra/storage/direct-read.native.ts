import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

/**
 * The project's addon (native/lvm_mda.cc, built with the libvirt binding into
 * build/Release/virt.node): the read runs on the addon's executor, with a buffer
 * aligned for O_DIRECT — neither of which plain `fs` offers.
 */
function addonPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'build', 'Release', 'virt.node');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('build/Release/virt.node not found: run `npm ci` (or `npx node-gyp rebuild`) to build the addon');
}

let binding: DirectReadBinding | undefined;

/** Loads the addon on first use (a failure to load is a rejection, as any read failure). */
export const readDirect: DirectReader = async (path, ranges) => {
  if (binding === undefined) {
    const require = createRequire(import.meta.url);
    binding = require(addonPath()) as DirectReadBinding;
  }
  return await binding.readDirect(path, ranges);
};
