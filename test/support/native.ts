import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
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
