import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pdiv } from '../../domain/media.js';
import type { PreparedVolume } from '../../domain/ports.js';
import { errnoOf, notFound } from './storage.errors.js';

/**
 * File storage domains: `<root>/mnt/<server:_export>/<domainID>/…`, mounted by the host.
 * A volume is a plain file; nothing is activated, so teardown has nothing to do.
 */
export class FileDomains {
  constructor(private readonly root: string) {}

  /** The domain's directory, or null when no mount holds it. */
  async findDomain(domainID: string): Promise<string | null> {
    const mnt = join(this.root, 'mnt');
    let mounts: string[];
    try {
      mounts = await readdir(mnt);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return null;
      throw err;
    }
    for (const mount of mounts) {
      if (mount === 'blockSD') continue;
      const dir = join(mnt, mount, domainID);
      try {
        if ((await stat(dir)).isDirectory()) return dir;
      } catch (err) {
        // An unreachable mount must not hide the domain on another one.
        if (!['ENOENT', 'ENOTDIR', 'EACCES', 'ESTALE', 'EIO'].includes(errnoOf(err) ?? '')) throw err;
      }
    }
    return null;
  }

  async prepare(domainDir: string, pdiv: Pdiv): Promise<PreparedVolume> {
    const path = join(domainDir, 'images', pdiv.imageID, pdiv.volumeID);
    try {
      if (!(await stat(path)).isFile()) throw notFound(`${path} is not a regular file`);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') throw notFound(`volume ${pdiv.volumeID} of image ${pdiv.imageID} not found in file domain ${pdiv.domainID}`);
      throw err;
    }
    return { path, diskType: 'file' };
  }
}
