import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO, acquireE2eLock, waitUntil } from '../support/e2e.js';
import { canUseLoopLvm } from '../support/storage.js';

/**
 * The Quick start's first line, `npm run demo`, as a newcomer runs it: the three steps,
 * then the hints for another shell, which must work as printed (they source the demo's
 * environment file): `status` finds the demo VM and, after a load sent from that shell,
 * the loaded volume active in the demo's loop mode. Ctrl-C then removes everything.
 */

const run = promisify(execFile);

describe.skipIf(!canUseLoopLvm())('npm run demo (Quick start, line 1)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('runs the three steps, its hints for another shell work as printed, and Ctrl-C cleans up', async () => {
    const release = await acquireE2eLock();
    const demoDir = await mkdtemp(join(tmpdir(), 'cdw-demo-test-'));
    dirs.push(demoDir);
    let out = '';
    const demo = spawn('bash', ['scripts/demo.sh'], { cwd: REPO, env: { ...process.env, DEMO_DIR: demoDir }, detached: true });
    const exited = new Promise<number | null>((resolve) => demo.on('exit', (code) => resolve(code)));
    demo.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
    demo.stderr.on('data', (b: Buffer) => (out += b.toString('utf8')));
    try {
      await waitUntil(() => out.includes('try, in another shell'), 240_000, `the demo's hints (output so far:\n${out.slice(-2000)})`, 200);
      expect(out).toMatch(/1\/3 load ISO A[\s\S]*completed[\s\S]*2\/3 change[\s\S]*completed[\s\S]*3\/3 eject[\s\S]*completed/);
      expect(out).toMatch(/cdrom_active_volumes 0/);
      const hints = out.slice(out.indexOf('try, in another shell')).split('\n').map((l) => l.trim());
      const source = hints.find((l) => l.startsWith('cd ') && l.includes('demo.env'));
      const load = hints.find((l) => l.startsWith('npx cdrom-worker send'));
      expect(source, 'a hint that sources the demo environment').toBeDefined();
      expect(load).toBeDefined();
      // "another shell": a fresh bash with none of the demo's variables, running the hints verbatim
      const shell = (cmd: string) => run('bash', ['-c', `${source ?? ''} && ${cmd}`], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/root' }, timeout: 120_000 });
      expect((await shell(load ?? '')).stdout).toMatch(/completed .*action=load/);
      const status = (await shell('npx cdrom-worker status')).stdout;
      expect(status).toMatch(/^host cdw-demo: 1 domain\(s\)/);
      expect(status).toMatch(/active \(loop\), in drive/);
    } finally {
      if (demo.exitCode === null && demo.pid !== undefined) process.kill(-demo.pid, 'SIGINT');
      const code = await exited;
      await release();
      expect(code).toBe(130);
    }
    expect(out).toMatch(/removed VM cdw-demo/);
    expect(existsSync(demoDir)).toBe(false);
    const { stdout } = await run('virsh', ['-c', 'qemu:///system', 'list', '--all', '--name']);
    expect(stdout.split('\n')).not.toContain('cdw-demo');
  }, 360_000);
});
