import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadVirt, type DebugCounts } from '../../src/infra/libvirt/virt.native.js';

/** Helpers for the addon's own tests (test/integration/native.*.test.ts). */

/** The built addon, for child processes and worker threads that load it by path. */
export const ADDON_PATH = createRequire(import.meta.url).resolve('../../build/Release/virt.node');

export interface NodeRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `script` (CommonJS; `ADDON` is defined as the addon's path) in a new node process,
 * so a crash or a blocked JS thread fails the test instead of taking vitest down with it.
 * `onLine` sees stdout line by line while it runs.
 */
export async function runNode(
  script: string,
  opts: { timeoutMs?: number; nodeArgs?: string[]; env?: NodeJS.ProcessEnv; onLine?: (line: string, child: ChildProcess) => void } = {},
): Promise<NodeRun> {
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), '-e', `const ADDON = ${JSON.stringify(ADDON_PATH)};\n${script}`], {
    env: { ...process.env, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let pending = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      opts.onLine?.(line, child);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
  try {
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    return { code, signal, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `probe` until it returns true, or fails after `timeoutMs`. */
export async function waitUntil(probe: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Waits until the live native objects the tests care about are back to `start`. */
export async function countsBackTo(start: DebugCounts, timeoutMs = 5_000): Promise<void> {
  const virt = loadVirt();
  const same = (): boolean => {
    const now = virt.debugCounts();
    return now.calls === start.calls && now.contexts === start.contexts && now.tsfns === start.tsfns;
  };
  await waitUntil(same, timeoutMs, `debugCounts back to ${JSON.stringify(start)}`).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}, now ${JSON.stringify(virt.debugCounts())}`);
  });
}

/** The pid of a running test VM's QEMU. */
export async function qemuPid(vmName: string): Promise<number> {
  return Number((await readFile(`/run/libvirt/qemu/${vmName}.pid`, 'utf8')).trim());
}

/**
 * A libvirtd that stops answering, without touching the shared libvirtd: a socat proxy of
 * the test's own in front of its socket (one client connection, then socat exits).
 * `stop()`/`cont()` signal only socat; `close()` resumes and ends it.
 */
export class LibvirtProxy {
  private stopped = false;

  private constructor(
    readonly uri: string,
    private readonly proc: ChildProcess,
    private readonly dir: string,
  ) {}

  static async start(libvirtSock = '/run/libvirt/libvirt-sock'): Promise<LibvirtProxy> {
    const dir = await mkdtemp(join(tmpdir(), 'cdw-test-proxy-'));
    const sock = join(dir, 'libvirt.sock');
    const proc = spawn('socat', [`UNIX-LISTEN:${sock},mode=600`, `UNIX-CONNECT:${libvirtSock}`], { stdio: 'ignore' });
    const proxy = new LibvirtProxy(`qemu+unix:///system?socket=${sock}`, proc, dir);
    try {
      await waitUntil(() => existsSync(sock), 5_000, 'the proxy socket');
    } catch (err) {
      await proxy.close();
      throw err;
    }
    return proxy;
  }

  stop(): void {
    if (this.proc.exitCode !== null) return;
    this.proc.kill('SIGSTOP');
    this.stopped = true;
  }

  cont(): void {
    if (this.stopped && this.proc.exitCode === null) this.proc.kill('SIGCONT');
    this.stopped = false;
  }

  async close(): Promise<void> {
    this.cont();
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      await once(this.proc, 'exit');
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
