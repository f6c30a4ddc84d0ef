import type { Command } from 'commander';
import { busConfigOrExit, CliError, errorMessage } from './common.js';

interface HostOption {
  host?: string;
}

/**
 * `topology declare|check`: the administrator's side of least privilege. A host user made
 * by scripts/rabbitmq-host-user cannot declare anything, so an administrator declares
 * section 2's objects for each host once (with a user that has configure permission),
 * and the worker runs with CDROM_DECLARE_TOPOLOGY=0. See docs/security.md.
 */
async function withTopology(o: HostOption, declare: boolean): Promise<void> {
  const bus = busConfigOrExit(o.host);
  const { connectOnce } = await import('../consumers/connection.js');
  const { ensureTopology, COMMANDS_EXCHANGE, EVENTS_EXCHANGE, DEAD_EXCHANGE, commandsQueue, deadQueue } = await import('../consumers/topology.js');
  const model = await connectOnce(bus.amqpUrls, bus.tls);
  model.on('error', () => undefined);
  try {
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    try {
      await ensureTopology(ch, bus.hostId, declare);
    } catch (err) {
      throw new CliError(`${declare ? 'declaring' : 'checking'} the topology of ${bus.hostId} failed: ${errorMessage(err).replace(/\s+/g, ' ')}`);
    }
    const names = [COMMANDS_EXCHANGE, EVENTS_EXCHANGE, DEAD_EXCHANGE, commandsQueue(bus.hostId), deadQueue(bus.hostId)];
    console.log(`${declare ? 'declared' : 'present'}: ${names.join(', ')}`);
    await ch.close().catch(() => undefined);
  } finally {
    await model.close().catch(() => undefined);
  }
}

export function registerTopology(program: Command): void {
  const topology = program
    .command('topology')
    .description("declare or check a host's broker objects (CONTRACT.md section 2)")
    .addHelpText('after', '\nThe broker comes from CDROM_AMQP_URL (and CDROM_AMQP_CA/CERT/KEY); declaring needs a user with configure permission.');

  topology
    .command('declare')
    .description('declare the exchanges and the host\'s queues and bindings (idempotent)')
    .option('--host <id>', 'host id (default: CDROM_HOST_ID or the host name)')
    .action((o: HostOption) => withTopology(o, true));

  topology
    .command('check')
    .description('check that they exist, as the worker does with CDROM_DECLARE_TOPOLOGY=0')
    .option('--host <id>', 'host id (default: CDROM_HOST_ID or the host name)')
    .action((o: HostOption) => withTopology(o, false));
}
