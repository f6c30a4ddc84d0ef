import { Option, type Command } from 'commander';
import type { ResultEvent } from '../contracts/schemas.js';
import { EVENTS_EXCHANGE } from '../consumers/topology.js';
import { busConfigOrExit, CliError } from './common.js';
import { formatEvent } from './format.js';

interface EventsOptions {
  host?: string;
  vm?: string;
  outcome?: string;
  json?: boolean;
  count?: string;
}

const OUTCOMES = ['completed', 'failed', 'rejected'];

export function registerEvents(program: Command): void {
  program
    .command('events')
    .description('tail result events from cdrom.events (Ctrl-C to stop)')
    .option('--host <id>', 'only this host (default: every host)')
    .option('--vm <uuid>', 'only this VM')
    .addOption(new Option('--outcome <outcome>', 'only this outcome').choices(OUTCOMES))
    .option('--json', 'one JSON event per line')
    .option('--count <n>', 'exit after n events')
    .action(async (o: EventsOptions) => {
      const bus = busConfigOrExit();
      const limit = o.count === undefined ? Infinity : Number(o.count);
      if (!(limit > 0)) throw new CliError('--count must be a positive number', 2, 'CLI_USAGE');
      const { connectOnce } = await import('../consumers/connection.js');
      const model = await connectOnce(bus.amqpUrls, bus.tls);
      const ch = await model.createChannel();
      // Exclusive + auto-delete: the tap disappears with this process, leaving nothing behind.
      const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
      await ch.bindQueue(queue, EVENTS_EXCHANGE, `${o.host ?? '*'}.changeCD.${o.outcome ?? '*'}`);
      let seen = 0;
      let finish: () => void = () => undefined;
      const done = new Promise<void>((resolve) => (finish = resolve));
      await ch.consume(
        queue,
        (msg) => {
          if (msg === null) return finish();
          let event: ResultEvent;
          try {
            event = JSON.parse(msg.content.toString('utf8')) as ResultEvent;
          } catch {
            return;
          }
          if (o.vm !== undefined && event.vmId?.toLowerCase() !== o.vm.toLowerCase()) return;
          console.log(o.json ? JSON.stringify(event) : formatEvent(event));
          if (++seen >= limit) finish();
        },
        { noAck: true },
      );
      console.error(`listening on ${EVENTS_EXCHANGE} (${o.host ?? '*'}.changeCD.${o.outcome ?? '*'})`);
      process.once('SIGINT', finish);
      process.once('SIGTERM', finish);
      model.once('close', finish);
      await done;
      await model.close().catch(() => undefined);
    });
}
