/**
 * Median prepare/teardown times of the storage adapter in loop mode, on a throw-away
 * loop-backed LVM domain (root only). dm mode cannot run on these machines (no
 * device-mapper), and timing it with a fake runner would measure the fake.
 *
 *   node --import tsx scripts/storage-bench.ts [ROUNDS]
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Pdiv } from '../src/domain/media.js';
import { silentLogger } from '../src/infra/logging.js';
import { execFileRunner } from '../src/infra/storage/command.runner.js';
import { readDirect } from '../src/infra/storage/direct-read.native.js';
import { createStorage } from '../src/infra/storage/index.js';
import { LvmCli } from '../src/infra/storage/lvm.command.js';
import { readVgMetadataHead } from '../src/infra/storage/lvm.mda.js';

const run = promisify(execFile);
const SCRIPT = resolve(import.meta.dirname, 'test-storage.sh');
const rounds = Number(process.argv[2] ?? 30);

interface Domain {
  vg: string;
  pv: string;
  lvmFilter: string[];
  volumes: Array<{ imageID: string; volumeID: string }>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}

async function timed<T>(samples: number[], fn: () => Promise<T>): Promise<T> {
  const t0 = process.hrtime.bigint();
  const out = await fn();
  samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  return out;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cdw-bench-'));
  const vg = randomUUID();
  try {
    const { stdout } = await run('bash', [SCRIPT, 'create-block', dir, vg, '2']);
    const domain = JSON.parse(stdout) as Domain;
    const pdiv = (i: number): Pdiv => {
      const v = domain.volumes[i];
      if (v === undefined) throw new Error(`no volume ${i}`);
      return { poolID: randomUUID(), domainID: domain.vg, imageID: v.imageID, volumeID: v.volumeID };
    };
    const samples: Record<string, number[]> = {
      'prepare, cold (fresh adapter: LVM lookup + loop attach)': [],
      'prepare, geometry cached (loop attach)': [],
      'prepare, already active (idempotent)': [],
      'teardown (opener scan + loop detach)': [],
      'teardown, already inactive': [],
      'volumeActivation': [],
      'listActiveVolumes (one active)': [],
      'VG seqno read (PV metadata area, O_DIRECT)': [],
      'pvs --segments of the VG (the refresh it saves)': [],
    };
    const at = (k: string): number[] => samples[k] ?? [];
    const options = { storageRoot: dir, activation: 'loop' as const, lvmFilter: domain.lvmFilter, logger: silentLogger() };
    const media = pdiv(0);
    for (let i = 0; i < rounds; i++) {
      const cold = createStorage(options);
      await timed(at('prepare, cold (fresh adapter: LVM lookup + loop attach)'), () => cold.prepareVolume(media));
      await cold.teardownVolume(media);
    }
    const s = createStorage(options);
    for (let i = 0; i < rounds; i++) {
      await timed(at('prepare, geometry cached (loop attach)'), () => s.prepareVolume(media));
      await timed(at('prepare, already active (idempotent)'), () => s.prepareVolume(media));
      await timed(at('volumeActivation'), () => s.volumeActivation(media));
      await timed(at('listActiveVolumes (one active)'), () => s.listActiveVolumes());
      await timed(at('teardown (opener scan + loop detach)'), () => s.teardownVolume(media));
      await timed(at('teardown, already inactive'), () => s.teardownVolume(media));
    }
    // What every cached lookup costs now, against what it would cost without the cache.
    const lvm = new LvmCli({ runner: execFileRunner, filter: domain.lvmFilter, disableActivation: true, commandTimeoutMs: 20_000 });
    for (let i = 0; i < rounds; i++) {
      for (let j = 0; j < 10; j++) await timed(at('VG seqno read (PV metadata area, O_DIRECT)'), () => readVgMetadataHead(domain.pv, readDirect));
      await timed(at('pvs --segments of the VG (the refresh it saves)'), () => lvm.segments(domain.vg));
    }
    console.log(`storage loop mode, ${rounds} rounds, medians:`);
    for (const [name, xs] of Object.entries(samples)) console.log(`  ${name.padEnd(54)} ${median(xs).toFixed(median(xs) < 1 ? 3 : 1)} ms`);
  } finally {
    await run('bash', [SCRIPT, 'remove', dir, vg]).catch((err: unknown) => console.error('cleanup failed', err));
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
