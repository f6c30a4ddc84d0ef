import { createServer } from 'node:net';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';

/** /healthz, /readyz and /metrics of an in-process worker on the real broker, with a fake executor. */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null;
let starting: Promise<WorkerHandle> | null;

/** A port free right now (the worker's own port is only known once startWorker returns). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** One sample of the Prometheus text, by name and exact labels; 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const got = new Map<string, string>([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x): [string, string] => [x[1] ?? '', x[2] ?? '']));
    if (Object.keys(labels).length === got.size && Object.entries(labels).every(([k, v]) => got.get(k) === v)) return Number(m[3]);
  }
  return 0;
}

function config(httpPort: number) {
  return loadConfig({
    CDROM_HOST_ID: hostId,
    CDROM_AMQP_URL: AMQP_URL,
    CDROM_HTTP_PORT: String(httpPort),
    CDROM_RETRY_BASE_MS: '20',
    CDROM_RETRY_LIMIT: '1',
    CDROM_DRAIN_TIMEOUT_MS: '2000',
  });
}

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  starting = null;
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  // A start the test left hanging still has to be stopped once it returns.
  if (worker === null && starting !== null) worker = await starting.catch(() => null);
  await worker?.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('http', () => {
  it('answers /healthz at once and /readyz only after startup recovery has finished', async () => {
    const port = await freePort();
    let release: () => void = () => undefined;
    const recovered = new Promise<void>((resolve) => (release = resolve));
    let recovering = false;
    starting = startWorker({
      config: config(port),
      logger: silentLogger(),
      createParts: () =>
        Promise.resolve({
          executor: new FakeExecutor(),
          recover: async () => {
            recovering = true;
            await recovered;
          },
        }),
    });
    await waitFor(() => recovering, 10_000, 'recovery to start');
    expect(await get(port, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect((await get(port, '/readyz')).status).toBe(503);
    // The alerts read readiness from /metrics (cdrom_ready), not from /readyz.
    expect((await get(port, '/metrics')).body).toMatch(/^cdrom_ready 0$/m);
    // Still not ready a little later: nothing but recovery makes it so.
    await new Promise((r) => setTimeout(r, 200));
    expect((await get(port, '/readyz')).status).toBe(503);

    release();
    worker = await starting;
    expect(worker.httpPort).toBe(port);
    expect(worker.health.ready).toBe(true);
    expect(await get(port, '/readyz')).toEqual({ status: 200, body: 'ready\n' });
    expect((await get(port, '/nowhere')).status).toBe(404);
    expect((await get(port, '/metrics')).body).toMatch(/^cdrom_ready 1$/m);

    await worker.stop('test');
    worker = null;
    await expect(get(port, '/healthz')).rejects.toThrow();
  });

  it('moves the command counters, the duration histogram and the dead-letter counter with commands', async () => {
    const executor = new FakeExecutor({ script: (cmd) => (cmd.drive === 'sdd' ? { kind: 'fail', code: 'VOLUME_NOT_FOUND' } : { kind: 'complete' }) });
    // CDROM_HTTP_PORT=0 turns the server off: a free port it is.
    starting = startWorker({ config: config(await freePort()), logger: silentLogger(), createParts: () => Promise.resolve({ executor }) });
    worker = await starting;
    const port = worker.httpPort ?? 0;

    const before = (await get(port, '/metrics')).body;
    expect(sample(before, 'cdrom_broker_connected')).toBe(1);
    expect(sample(before, 'cdrom_commands_total', { outcome: 'completed', action: 'load' })).toBe(0);
    // present at 0 before anything happened (rate() needs a sample before the first increment)
    expect(before).toMatch(/^cdrom_commands_total\{outcome="failed",action="load"\} 0$/m);
    expect(before).toMatch(/^cdrom_dead_lettered_total\{reason="retries-exhausted"\} 0$/m);
    expect(before).toMatch(/^cdrom_recovery_failures_total\{scope="drive"\} 0$/m);

    const a = command();
    await publish(ch, hostId, a);
    await publish(ch, hostId, command({ vmId: a['vmId'], media: null })); // eject of what a loaded
    await publish(ch, hostId, command({ drive: 'sdd' }));
    await publish(ch, hostId, '{not json');
    await tap.count(4);
    // The counters move before the ack; the last event may just have been published.
    await waitFor(async () => sample((await get(port, '/metrics')).body, 'cdrom_dead_lettered_total', { reason: 'rejected' }) === 1, 5_000, 'dead-letter counter');

    const after = (await get(port, '/metrics')).body;
    expect(sample(after, 'cdrom_commands_total', { outcome: 'completed', action: 'load' })).toBe(1);
    expect(sample(after, 'cdrom_commands_total', { outcome: 'completed', action: 'eject' })).toBe(1);
    expect(sample(after, 'cdrom_commands_total', { outcome: 'failed', action: 'load' })).toBe(1);
    expect(sample(after, 'cdrom_commands_total', { outcome: 'rejected', action: 'none' })).toBe(1);
    expect(sample(after, 'cdrom_dead_lettered_total', { reason: 'rejected' })).toBe(1);
    expect(sample(after, 'cdrom_commands_in_flight')).toBe(0);
    expect(sample(after, 'cdrom_command_retries_total')).toBe(0);
    // The step histogram and active-volume gauge are there (the fake executor has no steps).
    expect(after).toContain('# TYPE cdrom_step_duration_seconds histogram');
    expect(after).toContain('# TYPE cdrom_active_volumes gauge');
    expect(after).toMatch(/^cdrom_worker_process_cpu_seconds_total /m);
  });

  it('counts retries and commands dead-lettered after the retry budget', async () => {
    const executor = new FakeExecutor({ script: () => ({ kind: 'retry', code: 'TIMEOUT' }) });
    // CDROM_HTTP_PORT=0 turns the server off: a free port it is.
    starting = startWorker({ config: config(await freePort()), logger: silentLogger(), createParts: () => Promise.resolve({ executor }) });
    worker = await starting;
    const port = worker.httpPort ?? 0;
    await publish(ch, hostId, command());
    const [event] = await tap.count(1);
    expect(event?.type).toBe('changeCD.failed');
    await waitFor(async () => sample((await get(port, '/metrics')).body, 'cdrom_dead_lettered_total', { reason: 'retries-exhausted' }) === 1, 5_000, 'dead-letter counter');
    const text = (await get(port, '/metrics')).body;
    expect(sample(text, 'cdrom_command_retries_total')).toBe(1);
    expect(sample(text, 'cdrom_commands_total', { outcome: 'failed', action: 'none' })).toBe(1);
  });
});
