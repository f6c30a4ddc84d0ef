import { realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, sep } from 'node:path';
import { CdromError } from '../../domain/errors.js';
import type { PreparedVolume } from '../../domain/ports.js';
import { errnoOf, notFound } from './storage.errors.js';

/**
 * Resolves symlinks as far as the path exists, then appends the missing rest, so a
 * missing file can still be judged inside or outside the allowed directories.
 */
async function resolveExisting(path: string): Promise<{ resolved: string; exists: boolean }> {
  const missing: string[] = [];
  let cur = path;
  for (;;) {
    try {
      return { resolved: join(await realpath(cur), ...missing.reverse()), exists: missing.length === 0 };
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT' && errnoOf(err) !== 'ENOTDIR') throw err;
      const parent = dirname(cur);
      if (parent === cur) return { resolved: path, exists: false };
      missing.push(basename(cur));
      cur = parent;
    }
  }
}

function inside(path: string, dir: string): boolean {
  return dir === sep || path === dir || path.startsWith(dir + sep);
}

/**
 * Legacy ISO-domain media given as a path: the old behaviour, no activation. The path
 * must resolve, symlinks followed, inside one of the allowed directories (themselves
 * resolved, so a symlinked ISO directory works). The VM gets the path as given, as the
 * old behaviour did: the drive's source then reads back as the commanded media, which
 * is how the worker recognises "already loaded".
 */
export class LegacyPaths {
  constructor(private readonly isoDirs: readonly string[]) {}

  async prepare(path: string): Promise<PreparedVolume> {
    if (!isAbsolute(path) || path.includes('\0') || path.split('/').includes('..')) {
      throw new CdromError('INVALID_COMMAND', `legacy path must be absolute without '..': ${JSON.stringify(path)}`);
    }
    const { resolved, exists } = await resolveExisting(path);
    const dirs = await Promise.all(this.isoDirs.map(async (d) => (await resolveExisting(normalize(d))).resolved));
    if (!dirs.some((d) => inside(resolved, d))) {
      throw new CdromError('PATH_NOT_ALLOWED', `${path} resolves to ${resolved}, outside the ISO directories`);
    }
    if (!exists) throw notFound(`${path} does not exist`);
    const st = await stat(resolved);
    if (!st.isFile()) throw notFound(`${path} is not a regular file`);
    return { path, diskType: 'file' };
  }
}
