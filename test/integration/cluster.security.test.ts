import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { lockQueue } from '../../src/consumers/host-lock.js';
import { COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, deadQueue, ensureTopology } from '../../src/consumers/topology.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker } from '../../src/main.js';
import { EventTap, command, uniqueHost, waitFor } from '../support/amqp.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { useCleanups } from '../support/cluster.js';

/**
 * Per-host users (scripts/rabbitmq-host-user) on a vhost of its own on the default node:
 * host A cannot consume, purge or bind host B's queue, nor publish events under B's id;
 * A's worker works with CDROM_DECLARE_TOPOLOGY=0 on topology an administrator declared
 * (`cdrom-worker topology declare`). The vhost and users are removed afterwards.
 */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '../..');
const vhost = `cdw-sec-${randomBytes(4).toString('hex')}`;
const hostA = uniqueHost();
const hostB = uniqueHost();
/** A host whose user was made with --no-reply-to. */
const hostC = uniqueHost();
const password = randomBytes(12).toString('hex');
const adminUrl = `amqp://guest:guest@127.0.0.1:5672/${vhost}`;
const urlOf = (host: string): string => `amqp://cdrom-${host}:${password}@127.0.0.1:5672/${vhost}`;
const { cleanups, open } = useCleanups();

const ctl = (args: readonly string[]): Promise<unknown> => run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });

beforeAll(async () => {
  await ctl(['add_vhost', vhost]);
  await ctl(['set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*']);
  // The administrator declares A's objects through the CLI; B's directly (same code).
  await Promise.all([
    run(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'topology', 'declare', '--host', hostA], {
      env: { ...process.env, CDROM_AMQP_URL: adminUrl },
      timeout: 60_000,
    }),
    (async () => {
      const m = await connect(adminUrl, { noDelay: true });
      await ensureTopology(await m.createChannel(), hostB, true);
      await m.close();
    })(),
    run('bash', [join(ROOT, 'scripts/rabbitmq-host-user'), hostA, password, vhost], { timeout: 60_000 }),
    run('bash', [join(ROOT, 'scripts/rabbitmq-host-user'), hostB, password, vhost], { timeout: 60_000 }),
    run('bash', [join(ROOT, 'scripts/rabbitmq-host-user'), '--no-reply-to', hostC, password, vhost], { timeout: 60_000 }),
  ]);
}, 120_000);

afterAll(async () => {
  // Deleting the vhost takes its queues, exchanges and permissions with it.
  await Promise.allSettled([ctl(['delete_vhost', vhost]), ctl(['delete_user', `cdrom-${hostA}`]), ctl(['delete_user', `cdrom-${hostB}`]), ctl(['delete_user', `cdrom-${hostC}`])]);
}, 60_000);


async function channel(model: ChannelModel): Promise<Channel> {
  const ch = await model.createChannel();
  ch.on('error', () => undefined);
  return ch;
}

/** Publishes on a fresh confirm channel: 'confirmed', or the channel error that closed it. */
async function tryPublish(model: ChannelModel, exchange: string, key: string): Promise<string> {
  const ch = await model.createConfirmChannel();
  return new Promise((resolve) => {
    ch.on('error', (err: Error) => resolve(err.message));
    ch.publish(exchange, key, Buffer.from('{}'), {}, (err: unknown) => {
      if (!err) resolve('confirmed');
    });
  });
}

describe('per-host broker users', () => {
  it("host A cannot consume, purge or bind host B's command queue (403)", async () => {
    const a = await open(urlOf(hostA));
    await expect((await channel(a)).consume(commandsQueue(hostB), () => undefined)).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    await expect((await channel(a)).purgeQueue(commandsQueue(hostB))).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    await expect((await channel(a)).bindQueue(commandsQueue(hostB), COMMANDS_EXCHANGE, hostA)).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    await expect((await channel(a)).get(deadQueue(hostB))).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    // Nor declare anything, not even what exists: configure covers only its host lock.
    await expect((await channel(a)).assertQueue(commandsQueue(hostA), { durable: true, arguments: { 'x-queue-type': 'quorum' } })).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    // Not host B's lock either: a compromised host cannot keep B's worker in standby.
    await expect((await channel(a)).assertQueue(lockQueue(hostB), { exclusive: true, durable: false })).rejects.toThrow(/403 \(ACCESS-REFUSED\)/);
    await (await channel(a)).assertQueue(lockQueue(hostA), { exclusive: true, durable: false });
    // Its own queue it can read, and check without any configure permission.
    expect((await (await channel(a)).checkQueue(commandsQueue(hostA))).queue).toBe(commandsQueue(hostA));
  });

  it("host A cannot publish events under host B's id, nor commands to anyone", async () => {
    const a = await open(urlOf(hostA));
    expect(await tryPublish(a, EVENTS_EXCHANGE, `${hostB}.changeCD.completed`)).toMatch(/403 \(ACCESS-REFUSED\).*access to topic/);
    expect(await tryPublish(a, EVENTS_EXCHANGE, `${hostA}.changeCD.completed`)).toBe('confirmed');
    expect(await tryPublish(a, COMMANDS_EXCHANGE, hostB)).toMatch(/403 \(ACCESS-REFUSED\)/);
    expect(await tryPublish(a, DEAD_EXCHANGE, hostA)).toBe('confirmed');
  });

  it('documented limit: topic permissions do not apply to the direct exchange cdrom.dead', async () => {
    // docs/security.md, "What the model does not stop": this test keeps that page true.
    const a = await open(urlOf(hostA));
    expect(await tryPublish(a, DEAD_EXCHANGE, hostB)).toBe('confirmed');
    const admin = await open(adminUrl);
    const ch = await channel(admin);
    await waitFor(async () => (await ch.checkQueue(deadQueue(hostB))).messageCount > 0, 5000, "A's message in B's dead letters");
    await ch.purgeQueue(deadQueue(hostB));
    await ch.purgeQueue(deadQueue(hostA));
  });

  it('documented limit: write on amq.default (for reply_to) reaches any queue by name; --no-reply-to closes it', async () => {
    const a = await open(urlOf(hostA));
    expect(await tryPublish(a, '', commandsQueue(hostB))).toBe('confirmed');
    const admin = await open(adminUrl);
    await (await channel(admin)).purgeQueue(commandsQueue(hostB));
    const c = await open(urlOf(hostC));
    expect(await tryPublish(c, '', commandsQueue(hostB))).toMatch(/403 \(ACCESS-REFUSED\).*amq\.default/);
    expect(await tryPublish(c, EVENTS_EXCHANGE, `${hostC}.changeCD.completed`)).toBe('confirmed');
  });

  it("host A's worker works end to end with CDROM_DECLARE_TOPOLOGY=0: events, dead letters, reply_to", async () => {
    const executor = new FakeExecutor();
    const config = loadConfig({ CDROM_HOST_ID: hostA, CDROM_AMQP_URL: urlOf(hostA), CDROM_DECLARE_TOPOLOGY: '0', CDROM_HTTP_PORT: '0', CDROM_DRAIN_TIMEOUT_MS: '1000' });
    const worker = await startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor }) });
    cleanups.push(() => worker.stop('test end'));
    const admin = await open(adminUrl);
    const tap = await EventTap.open(admin, hostA);
    const ch = await admin.createConfirmChannel();
    const reply = await ch.assertQueue('', { exclusive: true });
    const replies: string[] = [];
    await ch.consume(reply.queue, (m) => m && replies.push(m.content.toString()), { noAck: true });
    const cmd = command();
    ch.publish(COMMANDS_EXCHANGE, hostA, Buffer.from(JSON.stringify(cmd)), { persistent: true, replyTo: reply.queue, correlationId: 'c-1' });
    ch.publish(COMMANDS_EXCHANGE, hostA, Buffer.from('not json'), { persistent: true });
    await ch.waitForConfirms();
    const events = await tap.count(2);
    expect(events.map((e) => e.type).sort()).toEqual(['changeCD.completed', 'changeCD.rejected']);
    await waitFor(() => replies.length === 1, 5000, 'the reply_to copy');
    await waitFor(async () => (await ch.checkQueue(deadQueue(hostA))).messageCount === 1, 5000, 'the dead letter');
    await ch.purgeQueue(deadQueue(hostA));
    expect(worker.health.ready).toBe(true);
  });

  it('a least-privilege worker that tries to declare fails at start, naming the fix', async () => {
    const config = loadConfig({ CDROM_HOST_ID: hostA, CDROM_AMQP_URL: urlOf(hostA), CDROM_HTTP_PORT: '0' });
    await expect(startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) })).rejects.toThrow(
      /403 .*CDROM_DECLARE_TOPOLOGY=0\)$/,
    );
  });

  it('a wrong password or a vhost the user may not use fails at start, naming the fix', async () => {
    const start = (url: string): Promise<unknown> =>
      startWorker({ config: loadConfig({ CDROM_HOST_ID: hostA, CDROM_AMQP_URL: url, CDROM_DECLARE_TOPOLOGY: '0', CDROM_HTTP_PORT: '0' }), logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) });
    await expect(start(`amqp://cdrom-${hostA}:wrong@127.0.0.1:5672/${vhost}`)).rejects.toThrow(/\(the broker refused the user name or password in CDROM_AMQP_URL\)$/);
    await expect(start(`amqp://cdrom-${hostA}:${password}@127.0.0.1:5672/`)).rejects.toThrow(/\(the user has no access to the URL's vhost, or it does not exist\)$/);
  });

  it('CDROM_DECLARE_TOPOLOGY=0 on a host whose objects nobody declared fails at start, naming the object', async () => {
    const config = loadConfig({ CDROM_HOST_ID: uniqueHost(), CDROM_AMQP_URL: adminUrl, CDROM_DECLARE_TOPOLOGY: '0', CDROM_HTTP_PORT: '0' });
    await expect(startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) })).rejects.toThrow(
      /NOT_FOUND: queue cdrom\.commands\.t-[0-9a-f]+ does not exist .*topology declare`\)$/,
    );
  });
});
