import { performance } from 'node:perf_hooks';

/**
 * Shared plumbing of the benchmarks: statistics, a cleanup stack that also runs on
 * SIGINT/SIGTERM, bounded waits, and the one-line JSON result protocol between a
 * section (a child process) and bench/run.ts.
 */

export const RESULT_PREFIX = 'BENCH_RESULT ';

export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  // nearest-rank: p99 of 200 samples is the 198th value, not an interpolation
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i] as number;
}

export const median = (xs: readonly number[]): number => quantile(xs, 0.5);

export const round = (x: number, digits = 2): number => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

/** Rejects with a message naming `what` when `p` takes longer than `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

export function rssMb(): number {
  return process.memoryUsage().rss / 2 ** 20;
}

/**
 * Everything a section makes registers its undo here, newest first. `runAll` runs once
 * even when called from a signal and from `finally` at the same time; one failing undo
 * does not stop the others.
 */
export class Cleanup {
  private readonly undo: { what: string; fn: () => Promise<void> }[] = [];
  private running: Promise<void> | null = null;

  add(what: string, fn: () => Promise<void>): void {
    this.undo.push({ what, fn });
  }

  runAll(): Promise<void> {
    return (this.running ??= (async () => {
      for (let u = this.undo.pop(); u !== undefined; u = this.undo.pop()) {
        try {
          await withTimeout(u.fn(), 120_000, `cleanup: ${u.what}`);
        } catch (err) {
          process.stderr.write(`bench cleanup: ${u.what} failed: ${err instanceof Error ? err.message : String(err)}\n`);
        }
      }
    })());
  }
}

/**
 * Runs a section's body with its cleanup, also on Ctrl-C (the whole process group gets
 * SIGINT) and SIGTERM (forwarded by run.ts): the undo stack runs, then the process exits
 * 130. The result is printed as one `BENCH_RESULT {…}` line for run.ts.
 */
export async function runSection<T>(name: string, body: (cleanup: Cleanup) => Promise<T>): Promise<void> {
  const cleanup = new Cleanup();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`bench ${name}: ${signal}, cleaning up\n`);
    void cleanup.runAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const result = await body(cleanup);
    await cleanup.runAll();
    process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`);
  } catch (err) {
    process.stderr.write(`bench ${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await cleanup.runAll();
    process.exitCode = 1;
  }
  if (!interrupted) process.exit(process.exitCode ?? 0);
}

/** `--name value` / `--name=value` flags of a section's command line. */
export function argValue(argv: readonly string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === `--${name}`) return argv[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}

export function argInt(argv: readonly string[], name: string, def: number): number {
  const v = argValue(argv, name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${v}`);
  return n;
}
