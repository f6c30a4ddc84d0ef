import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { EventTap, command, deleteHostQueues, openTestConnection, publish, uniqueHost } from '../support/amqp.js';

/**
 * The worker's logs on the real broker: JSON lines, per-command fields, and never the
 * broker password — not when connecting, not when a broker refuses the login, not when
 * one is unreachable.
 */

const run = promisify(execFile);
const rabbitmqctl = (...args: string[]) => run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });

const hostId = uniqueHost();
const user = `cdw-log-${randomBytes(4).toString('hex')}`;
const password = `pw-${randomBytes(12).toString('hex')}`;
const wrongPassword = `wrong-${randomBytes(12).toString('hex')}`;
const unreachablePassword = `unreach-${randomBytes(12).toString('hex')}`;

interface Line {
  readonly level: number;
  readonly msg: string;
  readonly hostId?: string;
  readonly component?: string;
  readonly commandId?: string;
  readonly vmId?: string;
  readonly drive?: string;
  readonly durationMs?: number;
  readonly outcome?: string;
  readonly action?: string;
}

let raw = '';
let worker: WorkerHandle | null = null;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;

const lines = (): Line[] =>
  raw
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);

beforeAll(async () => {
  await rabbitmqctl('add_user', user, password);
  await rabbitmqctl('set_permissions', '-p', '/', user, '.*', '.*', '.*');
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      raw += chunk.toString('utf8');
      done();
    },
  });
  const config = loadConfig({
    CDROM_HOST_ID: hostId,
    // Tried in turn: nobody listens on port 1, then a refused login, then the real one.
    CDROM_AMQP_URL: [`amqp://${user}:${unreachablePassword}@127.0.0.1:1`, `amqp://${user}:${wrongPassword}@127.0.0.1:5672`, `amqp://${user}:${password}@127.0.0.1:5672`].join(','),
    CDROM_HTTP_PORT: '0',
    CDROM_LOG_LEVEL: 'trace',
    CDROM_DRAIN_TIMEOUT_MS: '2000',
  });
  worker = await startWorker({ config, logger: createLogger({ level: 'trace', destination: sink }), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) });
});

afterAll(async () => {
  await worker?.stop('test end');
  await model?.close().catch(() => undefined);
  await deleteHostQueues(hostId);
  await rabbitmqctl('delete_user', user).catch(() => undefined);
});

describe('logs', () => {
  it('are pino JSON lines carrying the host id', () => {
    const all = lines();
    expect(all.length).toBeGreaterThan(3);
    for (const l of all) {
      expect(typeof l.level).toBe('number');
      expect(l.hostId).toBe(hostId);
    }
    expect(all.some((l) => l.msg === 'worker ready')).toBe(true);
  });

  it('tell what happened to a command with its ids, outcome and duration', async () => {
    const cmd = command();
    await publish(ch, hostId, cmd);
    await tap.count(1);
    await new Promise((r) => setTimeout(r, 50));
    const finished = lines().find((l) => l.msg === 'command finished' && l.commandId === cmd['commandId']);
    expect(finished).toMatchObject({ component: 'commands-consumer', vmId: cmd['vmId'], drive: 'sdc', outcome: 'completed', action: 'load' });
    expect(typeof finished?.durationMs).toBe('number');
  });

  it('never contain the broker password, also when connecting fails', () => {
    // The failed attempts were logged (so the URLs were in play) …
    expect(raw).toContain('broker connect failed');
    expect(raw).toContain('[redacted]');
    // … and none of the passwords is anywhere.
    for (const secret of [password, wrongPassword, unreachablePassword]) expect(raw).not.toContain(secret);
  });
});
