import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { realStack } from '../support/real-stack.js';

/**
 * deploy/systemd: `systemd-analyze verify` on the unit, the unit's promises to the
 * worker (no restart on a configuration error, a stop timeout above the drain), and the
 * example environment file loading as a valid configuration, commented lines included.
 */

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, '../..');
const UNIT = join(REPO, 'deploy/systemd/cdrom-worker.service');
const ENV_FILE = join(REPO, 'deploy/systemd/cdrom-worker.env');
const ANALYZE = '/usr/bin/systemd-analyze';
const INSTALLED_ENTRY = '/opt/cdrom-worker/bin/cdrom-worker.js';

/** `systemd-analyze verify`: exit code and everything it printed (it warns on stderr and still exits 0). */
async function verify(unitText: string): Promise<{ code: number; out: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'cdw-unit-'));
  try {
    const file = join(dir, 'cdrom-worker.service');
    await writeFile(file, unitText);
    try {
      const { stdout, stderr } = await run(ANALYZE, ['verify', file], { timeout: 60_000 });
      return { code: 0, out: (stdout + stderr).trim() };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      if (typeof e.code !== 'number') throw err;
      return { code: e.code, out: `${e.stdout ?? ''}${e.stderr ?? ''}`.trim() };
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The unit as it would be installed from this checkout: /opt/cdrom-worker is not here, so
 * ExecStart= and WorkingDirectory= point at this repository and this Node instead.
 * Nothing else changes.
 */
async function unitHere(): Promise<string> {
  const text = await readFile(UNIT, 'utf8');
  const here = text
    .replace(`ExecStart=/usr/bin/node ${INSTALLED_ENTRY} run`, `ExecStart=${process.execPath} ${join(REPO, 'bin/cdrom-worker.js')} run`)
    .replace('WorkingDirectory=/opt/cdrom-worker', `WorkingDirectory=${REPO}`);
  expect(here.match(new RegExp(REPO.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'g'))).toHaveLength(2);
  return here;
}

/** The [Service] and [Unit] settings, last value wins (as systemd reads single-valued keys). */
function settings(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m?.[1] !== undefined) out.set(m[1], m[2] ?? '');
  }
  return out;
}

describe.runIf(realStack('systemd unit tests', existsSync(ANALYZE), `no ${ANALYZE}`))('deploy/systemd', () => {
  it('systemd-analyze verify accepts the unit without a single warning', async () => {
    const r = await verify(await unitHere());
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });

  it('and the check bites: a misspelt key or a bad value is reported', async () => {
    const here = await unitHere();
    expect((await verify(here.replace('RestartPreventExitStatus=2', 'RestartPreventExitStatuss=2'))).out).toMatch(/Unknown key/);
    expect((await verify(here.replace('Restart=on-failure', 'Restart=sometimes'))).out).toMatch(/restart specifier/);
  });

  it('runs the package bin, is not restarted after a configuration error (exit 2), and waits longer than the drain', async () => {
    const s = settings(await readFile(UNIT, 'utf8'));
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    expect(INSTALLED_ENTRY.endsWith(pkg.bin['cdrom-worker']?.replace(/^\.?\//, '') ?? '?')).toBe(true);
    expect(s.get('ExecStart')).toBe(`/usr/bin/node ${INSTALLED_ENTRY} run`);
    expect(s.get('EnvironmentFile')).toBe('/etc/cdrom-worker/cdrom-worker.env');
    expect(s.get('Restart')).toBe('on-failure');
    expect(s.get('RestartPreventExitStatus')).toBe('2');
    expect(s.get('KillSignal')).toBe('SIGTERM');
    const drainMs = loadConfig({ CDROM_HOST_ID: 'h' }).drainTimeoutMs;
    const stopMs = Number(/^(\d+)s$/.exec(s.get('TimeoutStopSec') ?? '')?.[1]) * 1000;
    // room after the drain for closing the bus and libvirt
    expect(stopMs).toBeGreaterThanOrEqual(drainMs + 10_000);
    // the default storage root must be writable inside ProtectSystem=strict
    expect(s.get('ProtectSystem')).toBe('strict');
    expect(s.get('ReadWritePaths')?.split(/\s+/).map((p) => p.replace(/^-/, ''))).toContain(loadConfig({ CDROM_HOST_ID: 'h' }).storageRoot);
    expect(s.get('RestrictAddressFamilies')?.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX']);
  });

  it('the example environment file is a valid configuration, its commented settings too', async () => {
    const env: Record<string, string> = {};
    for (const raw of (await readFile(ENV_FILE, 'utf8')).split('\n')) {
      const m = /^#?(CDROM_[A-Z_]+)=(.*)$/.exec(raw.trim());
      if (m?.[1] === undefined) continue;
      env[m[1]] = m[2] ?? '';
    }
    expect(Object.keys(env).length).toBeGreaterThanOrEqual(15);
    // the TLS files are read at load time and are not on this machine: only their form is checked
    for (const k of ['CDROM_AMQP_CA', 'CDROM_AMQP_CERT', 'CDROM_AMQP_KEY']) {
      expect(isAbsolute(env[k] ?? ''), k).toBe(true);
      delete env[k];
    }
    const config = loadConfig(env);
    expect(config.amqpUrls).toHaveLength(2);
    expect(config.drainTimeoutMs).toBe(30_000);
  });
});
