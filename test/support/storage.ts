import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll } from 'vitest';
import { isCdromError } from '../../src/domain/errors.js';
import { realStack } from './real-stack.js';

const run = promisify(execFile);
const SCRIPT = resolve(import.meta.dirname, '../../scripts/test-storage.sh');

export interface TestVolume {
  readonly imageID: string;
  readonly volumeID: string;
  readonly label: string;
}

export interface BlockTestDomain {
  readonly kind: 'block';
  readonly vg: string;
  /** The PV: a loop device over `image`. */
  readonly pv: string;
  readonly image: string;
  /** An LVM filter that lets LVM see only this PV. */
  readonly lvmFilter: string[];
  readonly volumes: Array<TestVolume & { readonly offset: number; readonly size: number }>;
}

export interface FileTestDomain {
  readonly kind: 'file';
  readonly root: string;
  readonly domainID: string;
  readonly domainDir: string;
  readonly volumes: Array<TestVolume & { readonly path: string }>;
}

async function script(...args: string[]): Promise<string> {
  const { stdout } = await run('bash', [SCRIPT, ...args], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' } });
  return stdout;
}

/**
 * Whether this process can make loop devices and LVM metadata (root, tools present).
 * Where it cannot, this throws (the test file fails with the reason) unless skipping was
 * asked for with CDROM_ALLOW_SKIP=1 outside CI: see real-stack.ts.
 */
export function canUseLoopLvm(): boolean {
  return realStack('real-stack tests (loop-backed LVM, libvirt/QEMU)', process.getuid?.() === 0, `not root: uid ${process.getuid?.() ?? '?'}`);
}

/**
 * Test storage under a fresh temporary directory that is also the storage root. Every
 * domain made through it is removed in afterAll, also when tests fail; call it at the
 * top of a describe block.
 */
export function useTestStorage(): {
  dir: () => string;
  blockDomain: (volumes: number) => Promise<BlockTestDomain>;
  fileDomain: () => Promise<FileTestDomain>;
} {
  let dir: string | undefined;
  const made: string[] = [];
  const base = async (): Promise<string> => (dir ??= await mkdtemp(join(tmpdir(), 'cdw-storage-')));

  afterAll(async () => {
    if (dir === undefined) return;
    const errors: unknown[] = [];
    for (const id of made.reverse()) {
      await script('remove', dir, id).catch((err: unknown) => errors.push(err));
    }
    await rm(dir, { recursive: true, force: true });
    if (errors.length > 0) throw new AggregateError(errors, 'test storage cleanup failed');
  });

  return {
    dir: () => {
      if (dir === undefined) throw new Error('no test storage made yet');
      return dir;
    },
    async blockDomain(volumes) {
      const root = await base();
      const vg = randomUUID();
      made.push(vg);
      return JSON.parse(await script('create-block', root, vg, String(volumes))) as BlockTestDomain;
    },
    async fileDomain() {
      const root = await base();
      const domainID = randomUUID();
      made.push(domainID);
      return JSON.parse(await script('create-file', root, domainID)) as FileTestDomain;
    },
  };
}

/** The ISO 9660 volume label on a device or file. */
export async function isoLabel(path: string): Promise<string> {
  const { stdout } = await run('blkid', ['-p', '-o', 'value', '-s', 'LABEL', path]);
  return stdout.trim();
}

/** Loop devices backed by `device` (or file) at `offset`, as losetup sees them. */
export async function loopsOver(backing: string): Promise<Array<{ name: string; offset: number; sizelimit: number }>> {
  const { stdout } = await run('losetup', ['--json', '--list', '--output', 'NAME,OFFSET,SIZELIMIT', '--associated', backing]);
  if (stdout.trim() === '') return [];
  const doc = JSON.parse(stdout) as { loopdevices: Array<{ name: string; offset: number | string; sizelimit: number | string }> };
  return doc.loopdevices.map((d) => ({ name: d.name, offset: Number(d.offset), sizelimit: Number(d.sizelimit) }));
}

/**
 * Another process holding `device` open, as a VM would: the fd is opened here and
 * inherited by a `sleep`, so it is open before this returns.
 */
export function holdOpen(device: string): { pid: number; release: () => Promise<void> } {
  const fd = openSync(device, 'r');
  let child: ChildProcess;
  try {
    child = spawn('sleep', ['300'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
  } finally {
    closeSync(fd);
  }
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  return {
    pid: child.pid ?? -1,
    release: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** The CdromError code a storage call fails with, or 'no error'; anything else rethrows. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isCdromError(err)) return err.code;
    throw err;
  }
  return 'no error';
}
