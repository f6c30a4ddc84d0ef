import type { Command } from 'commander';
import { configOrExit, errorMessage } from './common.js';

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('run the worker for this host: consume cdrom.commands.<hostId>, change media, publish events')
    .addHelpText('after', '\nConfiguration comes from the CDROM_* environment variables (see CONTRACT.md section 1).')
    .action(async () => {
      const config = configOrExit();
      // Loaded only now: `--help` and the tools should not pay for the whole worker.
      const { startWorker, stopOnSignals } = await import('../main.js');
      const { createLogger, redactUrl } = await import('../infra/logging.js');
      const logger = createLogger({ level: config.logLevel });
      logger.info({ hostId: config.hostId, brokers: config.amqpUrls.map(redactUrl), concurrency: config.concurrency }, 'starting');
      try {
        const handle = await startWorker({ config, logger });
        process.exitCode = await stopOnSignals(handle);
      } catch (err) {
        logger.fatal({ err }, 'worker failed to start');
        console.error(`cdrom-worker: ${errorMessage(err)}`);
        process.exitCode = 1;
      }
    });
}
