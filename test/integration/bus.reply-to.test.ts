import { connect, type ChannelModel } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { commandsQueue, ensureTopology } from '../../src/consumers/topology.js';
import { createLogger, silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, connectionsNamed, deleteHostQueues, messageCount, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';
import { TestVhost } from '../support/broker-users.js';

/**
 * CONTRACT.md section 3: the reply_to copy is best effort. A reply_to that is refused,
 * unroutable or gone never delays, fails or repeats the command; only the cdrom.events
 * copy gates the ack.
 */

const logger = (): ReturnType<typeof silentLogger> => (process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger());
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

describe('reply_to copies', () => {
  it('refused reply_to: a worker without write on amq.default completes the command, stays ready and connected, and counts the refusal', async () => {
    const hostId = uniqueHost();
    const vhost = await TestVhost.create('cdw-reply');
    let admin: ChannelModel | null = null;
    let worker: WorkerHandle | null = null;
    try {
      // An administrator-owned topology and a host user made with --no-reply-to: writes
      // to cdrom.events and cdrom.dead only, so the broker refuses the default exchange.
      admin = await connect(vhost.adminUrl, { noDelay: true });
      admin.on('error', () => undefined);
      await ensureTopology(await admin.createChannel(), hostId, true);
      const user = await vhost.addHostUser(hostId, { replyTo: false });
      const port = 20_000 + Math.floor(Math.random() * 20_000);
      const executor = new FakeExecutor();
      const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: vhost.urlOf(user), CDROM_DECLARE_TOPOLOGY: '0', CDROM_HTTP_PORT: String(port), CDROM_DRAIN_TIMEOUT_MS: '1000' });
      worker = await startWorker({ config, logger: logger(), createParts: () => Promise.resolve({ executor }) });
      const [connection] = await connectionsNamed(`cdrom-worker ${hostId}`);
      expect(connection).toBeDefined();

      const tap = await EventTap.open(admin, hostId);
      const ch = await admin.createConfirmChannel();
      const { queue: replyQueue } = await ch.assertQueue('', { exclusive: true });
      const replies: string[] = [];
      await ch.consume(replyQueue, (m) => m && replies.push(m.content.toString()), { noAck: true });

      const first = command();
      await publish(ch, hostId, first, { replyTo: replyQueue, correlationId: 'c-1' });
      await tap.until((events) => events.some((e) => e.commandId === first['commandId']));
      // Before the fix the refusal closed the shared confirm channel: the event was
      // republished on a new connection forever and the command never acked. Give repeats
      // time to show.
      await sleep(1000);
      const copies = tap.events.filter((e) => e.commandId === first['commandId']);
      expect(copies.length).toBeLessThanOrEqual(2);
      expect(copies[0]).toMatchObject({ type: 'changeCD.completed', hostId, action: 'load' });
      for (const c of copies) expect(c).toEqual(copies[0]);
      // Published as the worker's own broker user, message_id = commandId.
      expect(tap.properties[tap.events.indexOf(copies[0]!)]).toMatchObject({ userId: user, messageId: first['commandId'], correlationId: 'c-1' });
      await waitFor(async () => (await messageCount(admin!, commandsQueue(hostId))) === 0, 5000, 'the command acked');
      expect(replies).toEqual([]);

      // Still ready, on the same connection, and taking the next commands.
      expect(worker.health.ready).toBe(true);
      expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
      const second = command();
      const third = command();
      await publish(ch, hostId, second, { replyTo: replyQueue });
      await publish(ch, hostId, third);
      await tap.until((events) => [second, third].every((c) => events.some((e) => e.commandId === c['commandId'] && e.type === 'changeCD.completed')));
      await waitFor(async () => /cdrom_reply_copies_failed_total\{reason="refused"\} 2\b/.test(await metricsText(port)), 5000, 'two refusals counted');
      expect(await connectionsNamed(`cdrom-worker ${hostId}`)).toEqual([connection]);
      // Each command ran once: the refusal repeated nothing.
      expect(executor.calls.map((c) => c.commandId).sort()).toEqual([first, second, third].map((c) => c['commandId'] as string).sort());
      expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
    } finally {
      await worker?.stop('test end');
      await admin?.close().catch(() => undefined);
      await vhost.remove();
    }
  });

  it("a delivered copy carries the worker's user_id and message_id = commandId; a reply_to naming no queue is counted unroutable", async () => {
    const hostId = uniqueHost();
    const { model, ch } = await openTestConnection();
    let worker: WorkerHandle | null = null;
    try {
      const port = 20_000 + Math.floor(Math.random() * 20_000);
      const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: String(port), CDROM_DRAIN_TIMEOUT_MS: '1000' });
      worker = await startWorker({ config, logger: logger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) });
      const tap = await EventTap.open(model, hostId);
      const { queue: replyQueue } = await ch.assertQueue('', { exclusive: true });
      const got = new Promise<{ body: string; userId: unknown; messageId: unknown; correlationId: unknown }>((resolve) => {
        void ch.consume(replyQueue, (m) => m && resolve({ body: m.content.toString(), userId: m.properties.userId, messageId: m.properties.messageId, correlationId: m.properties.correlationId }), { noAck: true });
      });
      const delivered = command();
      await publish(ch, hostId, delivered, { replyTo: replyQueue, correlationId: 'c-2' });
      const copy = await got;
      expect(copy).toMatchObject({ userId: 'guest', messageId: delivered['commandId'], correlationId: 'c-2' });
      expect(JSON.parse(copy.body)).toMatchObject({ type: 'changeCD.completed', commandId: delivered['commandId'] });

      const gone = command();
      await publish(ch, hostId, gone, { replyTo: `no-such-queue-${hostId}` });
      await tap.until((events) => events.some((e) => e.commandId === gone['commandId'] && e.type === 'changeCD.completed'));
      await waitFor(async () => /cdrom_reply_copies_failed_total\{reason="unroutable"\} 1\b/.test(await metricsText(port)), 5000, 'the unroutable copy counted');
      expect(worker.health.ready).toBe(true);
    } finally {
      await worker?.stop('test end');
      await model.close().catch(() => undefined);
      await deleteHostQueues(hostId);
    }
  });
});
