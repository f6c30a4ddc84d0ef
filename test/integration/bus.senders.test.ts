import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { connect, type ChannelModel, type GetMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { deadQueue, ensureTopology } from '../../src/consumers/topology.js';
import { createLogger, silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { EventTap, command, messageCount, publish, uniqueHost, waitFor } from '../support/amqp.js';
import { TestVhost } from '../support/broker-users.js';

/**
 * Sender authentication (CONTRACT.md section 3, v1.1) against the real broker: RabbitMQ
 * vouches for user_id, the worker runs only the commands of CDROM_TRUSTED_SENDERS, dead
 * letters name their sender in x-cdrom-sender, and `dlq replay` sends as the operator.
 */

const CLI = join(import.meta.dirname, '../../src/cli/main.ts');

interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', CLI, ...args], { env: { ...process.env, ...env }, timeout: 20_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** Every message of a queue, left in it (got, then requeued in order). */
async function peek(model: ChannelModel, queue: string): Promise<GetMessage[]> {
  const ch = await model.createChannel();
  const out: GetMessage[] = [];
  for (;;) {
    const m = await ch.get(queue, { noAck: false });
    if (m === false) break;
    out.push(m);
  }
  ch.nackAll(true);
  await ch.close();
  return out;
}

describe('sender authentication', () => {
  it('CDROM_TRUSTED_SENDERS: another user or no user_id is rejected UNAUTHORIZED_SENDER and dead-lettered with x-cdrom-sender; the engine runs; dlq replay by a trusted operator runs the command', async () => {
    const hostId = uniqueHost();
    const suffix = randomBytes(4).toString('hex');
    const engine = `engine-${suffix}`;
    const other = `other-${suffix}`;
    const ops = `ops-${suffix}`;
    const vhost = await TestVhost.create('cdw-senders');
    const models: ChannelModel[] = [];
    let worker: WorkerHandle | null = null;
    const open = async (url: string): Promise<ChannelModel> => {
      const m = await connect(url, { noDelay: true });
      m.on('error', () => undefined);
      models.push(m);
      return m;
    };
    try {
      const admin = await open(vhost.adminUrl);
      await ensureTopology(await admin.createChannel(), hostId, true);
      const sends = { configure: '^$', write: '^cdrom\\.commands$', read: '^$' };
      const [workerUser] = await Promise.all([
        vhost.addHostUser(hostId, { replyTo: true }),
        vhost.addUser(engine, sends),
        vhost.addUser(other, sends),
        // The operator reads the host's dead letters and sends commands; declares nothing.
        vhost.addUser(ops, { configure: '^$', write: '^cdrom\\.commands$', read: `^cdrom\\.dead\\.${hostId}$` }),
      ]);
      const executor = new FakeExecutor();
      const config = loadConfig({
        CDROM_HOST_ID: hostId,
        CDROM_AMQP_URL: vhost.urlOf(workerUser),
        CDROM_DECLARE_TOPOLOGY: '0',
        CDROM_HTTP_PORT: '0',
        CDROM_DRAIN_TIMEOUT_MS: '1000',
        CDROM_TRUSTED_SENDERS: `${engine},${ops}`,
      });
      worker = await startWorker({ config, logger: process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger(), createParts: () => Promise.resolve({ executor }) });
      const tap = await EventTap.open(admin, hostId);
      const adminCh = await admin.createConfirmChannel();
      const { queue: replyQueue } = await adminCh.assertQueue('', { exclusive: true });
      const replies: string[] = [];
      await adminCh.consume(replyQueue, (m) => m && replies.push(m.content.toString()), { noAck: true });

      // Another broker user, with a body that is otherwise a valid command.
      const fromOther = command();
      const otherCh = await (await open(vhost.urlOf(other))).createConfirmChannel();
      await publish(otherCh, hostId, fromOther, { userId: other, messageId: 'from-other' });
      // No user_id at all (the administrator here), claiming to be the engine in the header
      // the worker fills, and asking for a reply: none of it is trusted.
      const anonymous = command();
      await publish(adminCh, hostId, anonymous, { headers: { 'x-cdrom-sender': engine }, replyTo: replyQueue, correlationId: 'anon' });
      // The engine.
      const fromEngine = command();
      const engineCh = await (await open(vhost.urlOf(engine))).createConfirmChannel();
      await publish(engineCh, hostId, fromEngine, { userId: engine });

      const idOf = (c: Record<string, unknown>): string => c['commandId'] as string;
      await tap.until((events) => [fromOther, anonymous, fromEngine].every((c) => events.some((e) => e.commandId === idOf(c))));
      for (const c of [fromOther, anonymous]) {
        expect(tap.events.find((e) => e.commandId === idOf(c))).toMatchObject({
          type: 'changeCD.rejected',
          vmId: c['vmId'],
          drive: 'sdc',
          action: 'none',
          previous: null,
          current: null,
          error: { code: 'UNAUTHORIZED_SENDER', retryable: false },
        });
      }
      expect(tap.events.find((e) => e.commandId === idOf(fromOther))!.error!.message).toContain(other);
      expect(tap.events.find((e) => e.commandId === idOf(fromEngine))).toMatchObject({ type: 'changeCD.completed', action: 'load' });
      // Whatever the body said, the rejected ones never reached the executor.
      expect(executor.calls.map((c) => c.commandId)).toEqual([idOf(fromEngine)]);

      await waitFor(async () => (await messageCount(admin, deadQueue(hostId))) === 2, 5000, 'two dead letters');
      const dead = await peek(admin, deadQueue(hostId));
      const deadOther = dead.find((m) => m.properties.messageId === 'from-other')!;
      const deadAnon = dead.find((m) => m.properties.correlationId === 'anon')!;
      // Published by the worker as itself; the original sender moved into x-cdrom-sender.
      expect(deadOther.properties.userId).toBe(workerUser);
      expect(deadOther.properties.headers).toMatchObject({ 'x-cdrom-sender': other, 'x-cdrom-error-code': 'UNAUTHORIZED_SENDER' });
      expect(deadAnon.properties.userId).toBe(workerUser);
      expect(deadAnon.properties.headers).toMatchObject({ 'x-cdrom-error-code': 'UNAUTHORIZED_SENDER' });
      expect(deadAnon.properties.headers).not.toHaveProperty('x-cdrom-sender');
      expect(deadAnon.properties.replyTo).toBe(replyQueue);
      // An untrusted sender's reply_to is not followed.
      expect(replies).toEqual([]);

      const opsEnv = { CDROM_HOST_ID: hostId, CDROM_AMQP_URL: vhost.urlOf(ops) };
      const list = await cli(['dlq', 'list', '--json'], opsEnv);
      expect(list.code).toBe(0);
      const listed = list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { id: string; commandId: string; sender: string | null });
      expect(listed.find((d) => d.commandId === idOf(fromOther))).toMatchObject({ id: 'from-other', sender: other, deadLetteredBy: workerUser, errorCode: 'UNAUTHORIZED_SENDER' });
      expect(listed.find((d) => d.commandId === idOf(anonymous))).toMatchObject({ sender: null, deadLetteredBy: workerUser });
      // The rejected events name the commandId the body claims, but not as message_id.
      const rejected = tap.events.findIndex((e) => e.commandId === idOf(fromOther));
      expect(tap.properties[rejected]!.messageId).not.toBe(idOf(fromOther));

      // A replay runs as whoever replays it: the administrator is not a trusted sender,
      // so the replayed command is rejected again, now naming the administrator.
      const byAdmin = await cli(['dlq', 'replay', 'from-other'], { CDROM_HOST_ID: hostId, CDROM_AMQP_URL: vhost.adminUrl });
      expect(byAdmin.code).toBe(0);
      await tap.until((events) => events.filter((e) => e.commandId === idOf(fromOther)).length === 2);
      expect(tap.events.filter((e) => e.commandId === idOf(fromOther)).map((e) => e.error?.code)).toEqual(['UNAUTHORIZED_SENDER', 'UNAUTHORIZED_SENDER']);
      await waitFor(async () => (await messageCount(admin, deadQueue(hostId))) === 2, 5000, 'dead-lettered again');
      const again = (await peek(admin, deadQueue(hostId))).find((m) => m.properties.messageId === 'from-other')!;
      expect(again.properties.headers).toMatchObject({ 'x-cdrom-sender': 'guest', 'x-cdrom-replayed': 1 });

      // The trusted operator replays both: they run.
      const byOps = await cli(['dlq', 'replay', '--all'], opsEnv);
      expect(byOps.code).toBe(0);
      expect(byOps.stdout).toMatch(/2 message\(s\) replayed/);
      await tap.until((events) => [fromOther, anonymous].every((c) => events.some((e) => e.commandId === idOf(c) && e.type === 'changeCD.completed')));
      await waitFor(async () => (await messageCount(admin, deadQueue(hostId))) === 0, 5000, 'no dead letters left');
      expect(executor.calls.map((c) => c.commandId).sort()).toEqual([fromEngine, fromOther, anonymous].map(idOf).sort());
      // Sent by a trusted sender now, the anonymous command's reply_to is followed.
      await waitFor(() => replies.length === 1, 5000, 'the reply_to copy of the replayed command');
      expect(JSON.parse(replies[0]!)).toMatchObject({ type: 'changeCD.completed', commandId: idOf(anonymous) });
      // Its event, like every event, is published as the worker.
      const completed = tap.events.findIndex((e) => e.commandId === idOf(fromOther) && e.type === 'changeCD.completed');
      expect(tap.properties[completed]).toMatchObject({ userId: workerUser, messageId: idOf(fromOther) });
    } finally {
      await worker?.stop('test end');
      for (const m of models) await m.close().catch(() => undefined);
      await vhost.remove();
    }
  });
});
