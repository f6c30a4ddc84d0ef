import { isConfigError, loadBusConfig, loadConfig, type BusConfig, type Config } from '../config.js';

/** CONTRACT.md section 1: invalid configuration → one line, exit code 2, nothing connected. */
export function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    return exitOnConfigError(err);
  }
}

/** The bus part only, for the tools (send, events, dlq); `host` overrides CDROM_HOST_ID. */
export function busConfigOrExit(host?: string): BusConfig {
  try {
    const env = host === undefined ? process.env : { ...process.env, CDROM_HOST_ID: host };
    return loadBusConfig(env);
  } catch (err) {
    return exitOnConfigError(err);
  }
}

function exitOnConfigError(err: unknown): never {
  if (isConfigError(err)) {
    console.error(`cdrom-worker: invalid configuration: ${err.message}`);
    process.exit(2);
  }
  throw err;
}

/** A failure of a tool: its message on stderr, exit code 1 (2 for usage errors). */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly code = 'CLI_FAILED',
  ) {
    super(message);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
