import { Command, CommanderError } from 'commander';
import { registerDlq } from './dlq.command.js';
import { registerEvents } from './events.command.js';
import { registerRecover } from './recover.command.js';
import { registerRun } from './run.command.js';
import { registerSend } from './send.command.js';
import { registerTopology } from './topology.command.js';
import { registerStatus } from './status.command.js';
import { CliError, errorMessage } from './common.js';

const program = new Command()
  .name('cdrom-worker')
  .description('Changes CD-ROM media in running libvirt VMs for oVirt; one worker per host, driven over RabbitMQ.')
  .showHelpAfterError()
  .exitOverride();

registerRun(program);
registerSend(program);
registerEvents(program);
registerDlq(program);
registerTopology(program);
registerRecover(program);
registerStatus(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // --help and --version end here with code 0; usage errors were already printed.
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    console.error(`cdrom-worker: ${errorMessage(err)}`);
    process.exitCode = err instanceof CliError ? err.exitCode : 1;
  }
}
