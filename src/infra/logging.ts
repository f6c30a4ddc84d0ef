import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** Fields that may carry credentials; pino replaces them with "[redacted]". */
const REDACT = ['amqpUrl', 'url', 'password', '*.password', 'config.amqpUrl', 'config.amqpUrls', 'headers.authorization'];

/** The one root logger of the process; components take `root.child({ component })`. */
export function createLogger(options: { level?: string; pretty?: boolean; destination?: NodeJS.WritableStream } = {}): Logger {
  const opts: LoggerOptions = {
    level: options.level ?? 'info',
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (options.pretty === true) {
    return pino({ ...opts, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } } });
  }
  return options.destination ? pino(opts, options.destination as pino.DestinationStream) : pino(opts);
}

/** A logger that writes nothing, for tests and tools. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** Strip the password from an AMQP URL before it is logged or printed. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]+):([^@]*)@/, '//$1:[redacted]@');
}
