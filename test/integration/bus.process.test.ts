import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commandsQueue } from '../../src/consumers/topology.js';
import { readRecords } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, messageCount, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';

/** Worker processes killed and stopped for real. */

const ENTRY = join(import.meta.dirname, 'bus.worker-entry.ts');

let hostId: string;
let dir: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
const children: ChildProcess[] = [];

function spawnWorker(env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', ENTRY], {
    env: { ...process.env, CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_LOG_LEVEL: process.env['TEST_LOG'] ?? 'warn', ...env },
    stdio: ['ignore', 'pipe', process.env['TEST_LOG'] ? 'inherit' : 'pipe'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (process.env['TEST_LOG']) process.stderr.write(d);
      if (out.includes('WORKER READY')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`worker exited with ${code} before it was ready: ${out}`)));
  });
}

const exited = (child: ChildProcess): Promise<number | null> =>
  child.exitCode !== null || child.signalCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));

beforeEach(async () => {
  hostId = uniqueHost();
  dir = mkdtempSync(join(tmpdir(), 'cdrom-bus-'));
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
  rmSync(dir, { recursive: true, force: true });
});

describe('worker process', () => {
  it('killed with SIGKILL mid-command: the command is redelivered and completed by the next worker', async () => {
    const record = join(dir, 'record.jsonl');
    const first = await spawnWorker({ FAKE_RECORD_FILE: record, FAKE_DELAY_MS: '5000' });
    const cmd = command();
    await publish(ch, hostId, cmd);
    await waitFor(() => readRecords(record).some((r) => r.phase === 'start'), 5000, 'command started');
    first.kill('SIGKILL');
    await exited(first);
    expect(tap.events).toHaveLength(0);
    const second = await spawnWorker({ FAKE_RECORD_FILE: record, FAKE_DELAY_MS: '10' });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.completed', commandId: cmd['commandId'], action: 'load' });
    const records = readRecords(record);
    expect(records.filter((r) => r.phase === 'start').map((r) => r.pid)).toEqual([first.pid, second.pid]);
    expect(records.filter((r) => r.phase === 'done').map((r) => r.pid)).toEqual([second.pid]);
    await waitFor(async () => (await messageCount(model, commandsQueue(hostId))) === 0, 5000, 'acked');
  });

  it('SIGTERM drains the command in flight, then exits 0', async () => {
    const record = join(dir, 'record.jsonl');
    const worker = await spawnWorker({ FAKE_RECORD_FILE: record, FAKE_DELAY_MS: '400' });
    const cmd = command();
    await publish(ch, hostId, cmd);
    await waitFor(() => readRecords(record).some((r) => r.phase === 'start'), 5000, 'command started');
    worker.kill('SIGTERM');
    expect(await exited(worker)).toBe(0);
    expect(tap.events.map((e) => e.commandId)).toEqual([cmd['commandId']]);
    // Quorum queues apply the ack through their log: give the count a moment to settle.
    await waitFor(async () => (await messageCount(model, commandsQueue(hostId))) === 0, 2000, 'acked');
  });
});
