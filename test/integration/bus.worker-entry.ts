/**
 * A worker process for the process-level bus tests: the real composition root with a
 * fake executor. Run with `node --import tsx`; FAKE_* variables script the executor.
 */
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/infra/logging.js';
import { startWorker, stopOnSignals } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';

const config = loadConfig();
const logger = createLogger({ level: config.logLevel });
const executor = new FakeExecutor({
  delayMs: Number(process.env['FAKE_DELAY_MS'] ?? '0'),
  ...(process.env['FAKE_RECORD_FILE'] ? { recordFile: process.env['FAKE_RECORD_FILE'] } : {}),
});
const handle = await startWorker({ config, logger, createParts: () => Promise.resolve({ executor }) });
process.stdout.write('WORKER READY\n');
process.exitCode = await stopOnSignals(handle);
