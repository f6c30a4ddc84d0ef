import { randomUUID } from 'node:crypto';
import { Option, type Command } from 'commander';
import { isCdromClientError } from '../client/errors.js';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import { busConfigOrExit, CliError } from './common.js';
import { formatEvent } from './format.js';

interface SendOptions {
  vm: string;
  drive: string;
  pdiv?: string;
  path?: string;
  eject?: boolean;
  host?: string;
  commandId?: string;
  wait?: boolean;
  timeout: string;
  json?: boolean;
}

function mediaOf(o: SendOptions): ChangeCdCommand['media'] {
  const chosen = [o.pdiv !== undefined, o.path !== undefined, o.eject === true].filter(Boolean).length;
  if (chosen !== 1) throw new CliError('give exactly one of --pdiv, --path, --eject', 2, 'CLI_USAGE');
  if (o.eject) return null;
  if (o.path !== undefined) return { path: o.path };
  const ids = (o.pdiv ?? '').split(',').map((s) => s.trim());
  const [poolID, domainID, imageID, volumeID] = ids;
  if (ids.length !== 4 || !poolID || !domainID || !imageID || !volumeID) {
    throw new CliError('--pdiv takes four comma-separated ids: pool,domain,image,volume', 2, 'CLI_USAGE');
  }
  return { poolID, domainID, imageID, volumeID };
}

export function registerSend(program: Command): void {
  program
    .command('send')
    .description('publish a changeCD command (as the engine does); with --wait, print its result event')
    .requiredOption('--vm <uuid>', 'libvirt domain UUID')
    .requiredOption('--drive <dev>', "the CD-ROM's target dev, e.g. sdc")
    .option('--pdiv <pool,domain,image,volume>', 'load this ISO volume')
    .option('--path <file>', 'load this ISO from a legacy ISO domain (absolute path)')
    .option('--eject', 'eject the media')
    .option('--host <id>', 'target host id (default: CDROM_HOST_ID or the host name)')
    .option('--command-id <uuid>', 'idempotency key (default: a new UUID)')
    .option('--wait', 'wait for the result event; exit 0 on completed, 1 otherwise')
    .addOption(new Option('--timeout <ms>', 'how long --wait waits').default('60000'))
    .option('--json', 'print the event as JSON')
    .action(async (o: SendOptions) => {
      const bus = busConfigOrExit(o.host);
      const command: ChangeCdCommand = {
        type: 'changeCD',
        version: 1,
        commandId: o.commandId ?? randomUUID(),
        vmId: o.vm,
        drive: o.drive,
        media: mediaOf(o),
      };
      const timeoutMs = Number(o.timeout);
      if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new CliError('--timeout must be a positive number of milliseconds', 2, 'CLI_USAGE');
      // Through the engine-side client, so the tool exercises what the engine uses: the
      // same properties (user_id, message_id, correlation_id) and, with --wait, direct
      // reply-to with re-sends of the same commandId after a lost connection.
      const { connect } = await import('../client/index.js');
      const client = await connect(bus.amqpUrls, bus.tls, { connectionName: 'cdrom-worker-cli' });
      try {
        const request = { vmId: command.vmId, drive: command.drive, media: command.media };
        if (!o.wait) {
          await client.send(bus.hostId, request, { commandId: command.commandId });
          console.log(o.json ? JSON.stringify({ commandId: command.commandId, hostId: bus.hostId }) : `sent ${command.commandId} to ${bus.hostId}`);
          return;
        }
        const event = await client.changeCD(bus.hostId, request, { commandId: command.commandId, timeoutMs });
        console.log(o.json ? JSON.stringify(event) : formatEvent(event));
        process.exitCode = event.type === 'changeCD.completed' ? 0 : 1;
      } catch (err) {
        if (isCdromClientError(err)) throw new CliError(err.message);
        throw err;
      } finally {
        await client.close();
      }
    });
}
