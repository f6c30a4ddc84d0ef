import type { Command } from 'commander';
import type { DeadLetter, DeadLetterQueue } from '../consumers/dlq.js';
import { deadQueue } from '../consumers/topology.js';
import { busConfigOrExit, CliError } from './common.js';

interface HostOption {
  host?: string;
  json?: boolean;
}

async function withDlq<T>(o: HostOption, work: (dlq: DeadLetterQueue, hostId: string) => Promise<T>): Promise<T> {
  const bus = busConfigOrExit(o.host);
  const { connectFirst } = await import('../consumers/connection.js');
  const { DeadLetterQueue: Dlq } = await import('../consumers/dlq.js');
  const { brokerUser } = await import('../consumers/broker-user.js');
  const { model, url } = await connectFirst(bus.amqpUrls, bus.tls);
  try {
    // The operator's own broker user: replays are sent as them (CONTRACT §3 v1.1).
    return await work(Dlq.open(model, bus.hostId, brokerUser(url)), bus.hostId);
  } finally {
    await model.close().catch(() => undefined);
  }
}

function oneLine(s: string | null): string {
  return (s ?? '-').replace(/\s+/g, ' ');
}

function summary(d: DeadLetter): Record<string, unknown> {
  return { id: d.id, position: d.position, commandId: d.commandId, errorCode: d.errorCode, errorMessage: d.errorMessage, sender: d.sender, deadLetteredBy: d.deadLetteredBy, replayed: d.replayed };
}

function body(d: DeadLetter): unknown {
  const text = d.message.content.toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export function registerDlq(program: Command): void {
  const dlq = program
    .command('dlq')
    .description('inspect and replay the dead letters of a host (cdrom.dead.<hostId>)')
    .addHelpText('after', '\nIDs are the AMQP message_id when set, else the 1-based position in the queue.');

  dlq
    .command('list')
    .description('one line per dead letter: ID, commandId, error code, error message')
    .option('--host <id>', 'host id (default: CDROM_HOST_ID or the host name)')
    .option('--json', 'one JSON object per line')
    .action(async (o: HostOption) => {
      await withDlq(o, async (q) => {
        const all = await q.list();
        for (const d of all) {
          console.log(o.json ? JSON.stringify(summary(d)) : [d.id, d.commandId ?? '-', d.errorCode ?? '-', oneLine(d.errorMessage)].join('\t'));
        }
      });
    });

  dlq
    .command('show')
    .description('one dead letter in full: properties, headers and body, and its sender (x-cdrom-sender)')
    .argument('<id>', 'message_id or position')
    .option('--host <id>', 'host id')
    .action(async (id: string, o: HostOption) => {
      await withDlq(o, async (q) => {
        const d = await q.show(id);
        const { properties } = d.message;
        console.log(JSON.stringify({ ...summary(d), properties, body: body(d) }, null, 2));
      });
    });

  dlq
    .command('replay')
    .description('republish dead letters to cdrom.commands (only those present when it starts), as the broker user of CDROM_AMQP_URL')
    .argument('[ids...]', 'IDs to replay')
    .option('--all', 'replay every dead letter')
    .option('--host <id>', 'host id')
    .action(async (ids: string[], o: HostOption & { all?: boolean }) => {
      if (o.all === true && ids.length > 0) throw new CliError('give IDs or --all, not both', 2, 'CLI_USAGE');
      if (o.all !== true && ids.length === 0) throw new CliError('give the IDs to replay, or --all', 2, 'CLI_USAGE');
      await withDlq(o, async (q, hostId) => {
        const done = await q.replay(o.all === true ? 'all' : ids);
        for (const d of done) console.log(`replayed ${d.id}\t${d.commandId ?? '-'}\t(replay ${d.replayed + 1})`);
        console.log(`${done.length} message(s) replayed to cdrom.commands for ${hostId}`);
      });
    });

  dlq
    .command('purge')
    .description('delete every dead letter present now (needs --yes)')
    .option('--yes', 'really delete them')
    .option('--host <id>', 'host id')
    .action(async (o: HostOption & { yes?: boolean }) => {
      const hostId = busConfigOrExit(o.host).hostId;
      if (o.yes !== true) throw new CliError(`refusing to purge ${deadQueue(hostId)} without --yes`, 2, 'CLI_USAGE');
      await withDlq(o, async (q) => {
        const n = await q.purge();
        console.log(`${n} message(s) purged from ${deadQueue(hostId)}`);
      });
    });
}
