import { randomUUID } from 'node:crypto';
import { Option, type Command } from 'commander';
import type { ChangeCdCommand, ResultEvent } from '../contracts/schemas.js';
import { COMMANDS_EXCHANGE } from '../consumers/topology.js';
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
      const { connectFirst } = await import('../consumers/connection.js');
      const { asUser, brokerUser } = await import('../consumers/broker-user.js');
      const { model, url } = await connectFirst(bus.amqpUrls, bus.tls);
      try {
        const ch = await model.createConfirmChannel();
        let replyQueue: string | undefined;
        let reply: Promise<ResultEvent> | undefined;
        const correlationId = command.commandId;
        if (o.wait) {
          // An exclusive, server-named queue dies with this connection: nothing to clean up.
          replyQueue = (await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false })).queue;
          const q = replyQueue;
          reply = new Promise<ResultEvent>((resolve, reject) => {
            const timer = setTimeout(() => reject(new CliError(`no result event within ${timeoutMs} ms`)), timeoutMs);
            void ch.consume(
              q,
              (msg) => {
                if (msg === null || msg.properties.correlationId !== correlationId) return;
                clearTimeout(timer);
                try {
                  resolve(JSON.parse(msg.content.toString('utf8')) as ResultEvent);
                } catch {
                  reject(new CliError('the reply is not JSON'));
                }
              },
              { noAck: true },
            );
          });
        }
        let returned = false;
        ch.on('return', () => (returned = true));
        await new Promise<void>((resolve, reject) => {
          ch.publish(
            COMMANDS_EXCHANGE,
            bus.hostId,
            Buffer.from(JSON.stringify(command)),
            // Sent as this tool's broker user (user_id), as the engine does, so a worker
            // with CDROM_TRUSTED_SENDERS runs it when that user is trusted.
            asUser(
              {
                persistent: true,
                contentType: 'application/json',
                messageId: command.commandId,
                correlationId,
                mandatory: true,
                timestamp: Math.floor(Date.now() / 1000),
                ...(replyQueue ? { replyTo: replyQueue } : {}),
              },
              brokerUser(url),
            ),
            (err: unknown) => (err ? reject(new CliError('the broker refused the command (nack)')) : resolve()),
          );
        });
        // basic.return arrives before the confirm, so it is known by now.
        if (returned) throw new CliError(`no queue is bound for host ${bus.hostId}: is its worker set up?`);
        if (!reply) {
          console.log(o.json ? JSON.stringify({ commandId: command.commandId, hostId: bus.hostId }) : `sent ${command.commandId} to ${bus.hostId}`);
          return;
        }
        const event = await reply;
        console.log(o.json ? JSON.stringify(event) : formatEvent(event));
        process.exitCode = event.type === 'changeCD.completed' ? 0 : 1;
      } finally {
        await model.close().catch(() => undefined);
      }
    });
}
