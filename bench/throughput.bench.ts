import { randomBytes, randomUUID } from 'node:crypto';
import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { loadConfig } from '../src/config.js';
import { COMMANDS_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, removeHostQueues } from '../src/consumers/topology.js';
import { OVIRT_VM_NS } from '../src/domain/ports.js';
import { instrumentActivities } from '../src/infra/instrumented-activities.js';
import { silentLogger } from '../src/infra/logging.js';
import { createActivities } from '../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../src/machines/drive.registry.js';
import { startWorker } from '../src/main.js';
import { FakeHypervisor } from '../test/fakes/hypervisor.fake.js';
import { FakeStorage } from '../test/fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B } from '../test/support/world.js';
import { startTraceSink, type TraceSink } from './lib/trace-sink.js';

/**
 * Throughput of the worker itself: the real broker, the real consumer, registry and
 * machine, over the fake hypervisor and storage — against a bare amqplib consume →
 * publish-with-confirm → ack loop on the same broker, in the same run.
 *
 * With `tracing`, each round also runs the worker as production does (activities
 * instrumented for metrics and step spans) twice: untraced, and tracing every command
 * over OTLP/HTTP to a local sink; the difference is what tracing costs.
 */

const AMQP = process.env['CDROM_AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';

export interface ThroughputResult {
  readonly commands: number;
  readonly drives: number;
  readonly concurrency: number;
  readonly workerPerSec: number;
  readonly barePerSec: number;
  readonly ratio: number;
  readonly rssMb: number;
  /** with `tracing`: instrumented workers, untraced vs traced, same rounds (medians) */
  readonly tracing?: { readonly untracedPerSec: number; readonly tracedPerSec: number; readonly ratio: number; readonly exports: number; readonly kb: number };
}

/** `plain`: the registry over bare activities (item 2 as it always was); else instrumented as in production, traced or not. */
type WorkerMode = { readonly kind: 'plain' } | { readonly kind: 'instrumented' } | { readonly kind: 'traced'; readonly sink: TraceSink };

async function publishAll(ch: ConfirmChannel, hostId: string, bodies: Buffer[]): Promise<void> {
  for (let i = 0; i < bodies.length; i++) {
    const ok = ch.publish(COMMANDS_EXCHANGE, hostId, bodies[i] as Buffer, { persistent: true, contentType: 'application/json' });
    if (!ok) await new Promise((r) => ch.once('drain', r));
    if (i % 1000 === 999) await ch.waitForConfirms();
  }
  await ch.waitForConfirms();
}

async function eventCounter(model: ChannelModel, hostId: string, total: number): Promise<{ done: Promise<number>; close: () => Promise<void> }> {
  const ch = await model.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  await ch.bindQueue(queue, EVENTS_EXCHANGE, `${hostId}.changeCD.*`);
  await ch.prefetch(1000);
  let n = 0;
  let resolve!: (t: number) => void;
  const done = new Promise<number>((r) => (resolve = r));
  await ch.consume(queue, (msg) => {
    if (msg === null) return;
    ch.ack(msg);
    if (++n === total) resolve(performance.now());
  });
  return { done, close: () => ch.close().catch(() => undefined) };
}

const deleteQueues = removeHostQueues;

function commands(total: number, drives: number): { bodies: Buffer[]; vmIds: string[] } {
  const vmIds = Array.from({ length: drives }, () => randomUUID());
  const bodies = Array.from({ length: total }, (_, i) =>
    Buffer.from(
      JSON.stringify({
        type: 'changeCD',
        version: 1,
        commandId: randomUUID(),
        vmId: vmIds[i % drives],
        drive: 'sdc',
        media: Math.floor(i / drives) % 2 === 0 ? ISO_A : ISO_B,
      }),
    ),
  );
  return { bodies, vmIds };
}

/** The worker over the fakes; returns commands/s from the first publish to the last event. */
export async function workerRun(total: number, drives: number, concurrency: number, mode: WorkerMode = { kind: 'plain' }): Promise<{ perSec: number; rssMb: number }> {
  const hostId = `bench-${randomBytes(4).toString('hex')}`;
  const hv = new FakeHypervisor();
  const storage = new FakeStorage();
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const { bodies, vmIds } = commands(total, drives);
  for (const vmId of vmIds) hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  const config = loadConfig({
    CDROM_HOST_ID: hostId,
    CDROM_AMQP_URL: AMQP,
    CDROM_HTTP_PORT: '0',
    CDROM_CONCURRENCY: String(concurrency),
    CDROM_LOG_LEVEL: 'silent',
    ...(mode.kind === 'traced' ? { OTEL_EXPORTER_OTLP_ENDPOINT: mode.sink.url } : {}),
  });
  const worker = await startWorker({
    config,
    logger: silentLogger(),
    createParts: ({ metrics, tracing }) => {
      const bare = createActivities({ hypervisor: hv, storage });
      const activities = mode.kind === 'plain' ? bare : instrumentActivities(bare, metrics, { tracing });
      return Promise.resolve({ executor: new DriveRegistry({ activities, concurrency, stepTimeoutMs: 60_000, log: silentLogger() }) });
    },
  });
  const model = await connect(AMQP, { noDelay: true });
  try {
    const counter = await eventCounter(model, hostId, total);
    const ch = await model.createConfirmChannel();
    const t0 = performance.now();
    await publishAll(ch, hostId, bodies);
    const t1 = await counter.done;
    const rssMb = process.memoryUsage().rss / 2 ** 20;
    await counter.close();
    return { perSec: total / ((t1 - t0) / 1000), rssMb };
  } finally {
    await worker.stop();
    await deleteQueues(model, hostId);
    await model.close();
  }
}

/** consume → publish event with confirm → ack, nothing else: the broker's own ceiling here. */
export async function bareRun(total: number, drives: number, concurrency: number): Promise<number> {
  const hostId = `bench-${randomBytes(4).toString('hex')}`;
  const { bodies } = commands(total, drives);
  const model = await connect(AMQP, { noDelay: true });
  const consumer = await connect(AMQP, { noDelay: true });
  try {
    const setup = await model.createChannel();
    await setup.assertQueue(commandsQueue(hostId), { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await setup.bindQueue(commandsQueue(hostId), COMMANDS_EXCHANGE, hostId);
    const counter = await eventCounter(model, hostId, total);
    const cch = await consumer.createConfirmChannel();
    await cch.prefetch(concurrency);
    await cch.consume(commandsQueue(hostId), (msg) => {
      if (msg === null) return;
      const cmd = JSON.parse(msg.content.toString('utf8')) as { commandId: string };
      const event = Buffer.from(JSON.stringify({ type: 'changeCD.completed', commandId: cmd.commandId }));
      cch.publish(EVENTS_EXCHANGE, `${hostId}.changeCD.completed`, event, { persistent: true, contentType: 'application/json' }, (err) => {
        if (err === null || err === undefined) cch.ack(msg);
      });
    });
    const ch = await model.createConfirmChannel();
    const t0 = performance.now();
    await publishAll(ch, hostId, bodies);
    const t1 = await counter.done;
    return total / ((t1 - t0) / 1000);
  } finally {
    await consumer.close().catch(() => undefined);
    await deleteQueues(model, hostId);
    await model.close();
  }
}

export async function throughput(opts: { total: number; drives: number; concurrency: number; rounds: number; tracing?: boolean }): Promise<ThroughputResult> {
  const w: number[] = [];
  const b: number[] = [];
  const untraced: number[] = [];
  const traced: number[] = [];
  const sink = opts.tracing === true ? await startTraceSink() : null;
  let rss = 0;
  try {
    for (let i = 0; i < opts.rounds; i++) {
      b.push(await bareRun(opts.total, opts.drives, opts.concurrency));
      const r = await workerRun(opts.total, opts.drives, opts.concurrency);
      w.push(r.perSec);
      rss = Math.max(rss, r.rssMb);
      if (sink !== null) {
        // who goes first alternates, so neither always runs on the warmer process
        const runs: WorkerMode[] = i % 2 === 0 ? [{ kind: 'instrumented' }, { kind: 'traced', sink }] : [{ kind: 'traced', sink }, { kind: 'instrumented' }];
        for (const mode of runs) (mode.kind === 'traced' ? traced : untraced).push((await workerRun(opts.total, opts.drives, opts.concurrency, mode)).perSec);
      }
    }
  } finally {
    await sink?.close();
  }
  const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] as number;
  const result: ThroughputResult = { commands: opts.total, drives: opts.drives, concurrency: opts.concurrency, workerPerSec: med(w), barePerSec: med(b), ratio: med(w) / med(b), rssMb: rss };
  if (sink === null) return result;
  return { ...result, tracing: { untracedPerSec: med(untraced), tracedPerSec: med(traced), ratio: med(traced) / med(untraced), exports: sink.stats.requests, kb: Math.round(sink.stats.bytes / 1024) } };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const total = Number(process.argv[2] ?? 5000);
  console.log(await throughput({ total, drives: 1000, concurrency: 16, rounds: 1 }));
}
