import { execFile, type ExecFileException } from 'node:child_process';

/** How a child process ended when it did not exit 0; fakes construct it too. */
export class CommandFailure extends Error {
  override readonly name = 'CommandFailure';
  constructor(
    readonly kind: 'exit' | 'timeout' | 'spawn',
    readonly exitCode: number | null,
    readonly stdout: string,
    readonly stderr: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  readonly env?: Readonly<Record<string, string>>;
  /** Aborting kills the child; the failure is then `timeout`. */
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

/**
 * The one way storage code starts a process: a program and an argument array, never a
 * shell string. Rejects with a `CommandFailure` (plain data, so fakes can produce it).
 */
export type CommandRunner = (file: string, args: readonly string[], options?: RunOptions) => Promise<CommandResult>;

export function isCommandFailure(err: unknown): err is CommandFailure {
  return err instanceof CommandFailure;
}


export const execFileRunner: CommandRunner = (file, args, options = {}) =>
  new Promise<CommandResult>((resolve, reject) => {
    execFile(
      file,
      [...args],
      {
        encoding: 'utf8',
        maxBuffer: 16 * 1024 * 1024,
        env: { ...process.env, LC_ALL: 'C', ...options.env },
        signal: options.signal,
        timeout: options.timeoutMs ?? 0,
        killSignal: 'SIGKILL',
      },
      (error: ExecFileException | null, stdout: string, stderr: string) => {
        if (error === null) {
          resolve({ stdout, stderr });
          return;
        }
        const timedOut = error.name === 'AbortError' || error.killed === true;
        const spawnFailed = typeof error.code === 'string';
        reject(
          new CommandFailure(
            timedOut ? 'timeout' : spawnFailed ? 'spawn' : 'exit',
            typeof error.code === 'number' ? error.code : null,
            stdout,
            stderr,
            `${file} ${args.join(' ')}: ${timedOut ? 'timed out' : stderr.trim() || error.message}`,
          ),
        );
      },
    );
  });
