import { Option, type Command } from 'commander';
import { isCdromClientError } from '../client/errors.js';
import type { Outcome } from '../client/events.stream.js';
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
      const { connect } = await import('../client/index.js');
      const client = await connect(bus.amqpUrls, bus.tls, { connectionName: 'cdrom-worker-cli' });
      const stop = new AbortController();
      const events = client.events({ hostId: o.host, outcome: o.outcome as Outcome | undefined, vmId: o.vm, signal: stop.signal });
      process.once('SIGINT', () => stop.abort());
      process.once('SIGTERM', () => stop.abort());
      try {
        await events.bound;
        console.error(`listening on ${EVENTS_EXCHANGE} (${events.bindingKey})`);
        let seen = 0;
        for await (const event of events) {
          console.log(o.json ? JSON.stringify(event) : formatEvent(event));
          if (++seen >= limit) break;
        }
      } catch (err) {
        if (isCdromClientError(err)) throw new CliError(err.message);
        throw err;
      } finally {
        await client.close();
      }
    });
}
