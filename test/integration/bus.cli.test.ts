import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { deadQueue } from '../../src/consumers/topology.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, drainQueue, messageCount, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';

/** The operator CLI (send, events, dlq) against a worker with a fake executor. */

const CLI = join(import.meta.dirname, '../../src/cli/main.ts');

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle;

interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', CLI, ...args],
      { env: { ...process.env, CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL }, timeout: 20_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeEach(async () => {
  hostId = uniqueHost();
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
  const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0' });
  worker = await startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) });
});

afterEach(async () => {
  await worker.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('cdrom-worker CLI', () => {
  it('dlq list → show → replay: replayed originals are rejected again; purge needs --yes', async () => {
    const bad1 = JSON.stringify({ ...command(), media: { path: 'relative.iso' } });
    const bad2 = 'not json at all';
    await publish(ch, hostId, bad1, { messageId: 'bad-1', headers: { keep: 'me' } });
    await publish(ch, hostId, bad2);
    await tap.count(2);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 2, 5000, 'two dead letters');

    const list = await cli(['dlq', 'list']);
    expect(list.code).toBe(0);
    const lines = list.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    const byId = new Map(lines.map((l) => [l.split('\t')[0], l.split('\t')]));
    expect(byId.get('bad-1')).toEqual(['bad-1', (JSON.parse(bad1) as { commandId: string }).commandId, 'INVALID_COMMAND', expect.stringMatching(/path/)]);
    const otherId = [...byId.keys()].find((k) => k !== 'bad-1')!;
    expect(otherId).toMatch(/^\d+$/);
    expect(byId.get(otherId)!.slice(1, 3)).toEqual(['-', 'INVALID_COMMAND']);

    const show = await cli(['dlq', 'show', 'bad-1']);
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({ id: 'bad-1', errorCode: 'INVALID_COMMAND', properties: { messageId: 'bad-1' } });

    const replay = await cli(['dlq', 'replay', '--all']);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toMatch(/2 message\(s\) replayed/);
    const events = await tap.count(4);
    expect(events.every((e) => e.type === 'changeCD.rejected')).toBe(true);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 2, 5000, 'dead-lettered again');

    const refused = await cli(['dlq', 'purge']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/--yes/);
    expect(await messageCount(model, deadQueue(hostId))).toBe(2);

    const again = await drainQueue(model, deadQueue(hostId));
    const replayed = again.find((m) => m.properties.messageId === 'bad-1')!;
    expect(replayed.content.toString()).toBe(bad1);
    expect(replayed.properties.headers).toMatchObject({ keep: 'me', 'x-cdrom-replayed': 1, 'x-cdrom-error-code': 'INVALID_COMMAND' });
  });

  it('dlq replay of chosen IDs leaves the others; purge --yes empties the queue', async () => {
    await publish(ch, hostId, 'x', { messageId: 'a' });
    await publish(ch, hostId, 'y', { messageId: 'b' });
    await tap.count(2);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 2, 5000, 'two dead letters');
    const replay = await cli(['dlq', 'replay', 'b']);
    expect(replay.code).toBe(0);
    await tap.count(3);
    const missing = await cli(['dlq', 'replay', 'nope']);
    expect(missing.code).toBe(1);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 2, 5000, 'b dead again');
    const purge = await cli(['dlq', 'purge', '--yes']);
    expect(purge.code).toBe(0);
    expect(purge.stdout).toMatch(/2 message\(s\) purged/);
    expect(await messageCount(model, deadQueue(hostId))).toBe(0);
  });

  it('send --wait prints the event and exits 0 on completed, 1 on rejected; events tails them', async () => {
    const tail = spawn(process.execPath, ['--import', 'tsx', CLI, 'events', '--host', hostId, '--json', '--count', '2'], {
      env: { ...process.env, CDROM_AMQP_URL: AMQP_URL },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let tailOut = '';
    let tailErr = '';
    tail.stdout.on('data', (d: Buffer) => (tailOut += d.toString()));
    tail.stderr.on('data', (d: Buffer) => (tailErr += d.toString()));
    const tailDone = new Promise<number | null>((r) => tail.once('exit', r));
    await waitFor(() => tailErr.includes('listening'), 15_000, 'events tail bound');

    const vm = randomUUID();
    const ok = await cli(['send', '--vm', vm, '--drive', 'sdc', '--pdiv', [randomUUID(), randomUUID(), randomUUID(), randomUUID()].join(','), '--wait', '--json']);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ type: 'changeCD.completed', vmId: vm, action: 'load' });

    const bad = await cli(['send', '--vm', vm, '--drive', 'sdc', '--path', 'relative.iso', '--wait']);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/rejected.*INVALID_COMMAND/);

    expect(await tailDone).toBe(0);
    const tailed = tailOut.trim().split('\n').map((l) => JSON.parse(l) as { type: string });
    expect(tailed.map((e) => e.type)).toEqual(['changeCD.completed', 'changeCD.rejected']);

    const usage = await cli(['send', '--vm', vm, '--drive', 'sdc']);
    expect(usage.code).toBe(2);
  });
});
