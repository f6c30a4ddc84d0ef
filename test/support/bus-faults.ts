import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual, promisify } from 'node:util';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type GetMessage } from 'amqplib';
import type { ChangeCdCommand, ResultEvent } from '../../src/contracts/schemas.js';
import { COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, deadQueue, removeHostQueues } from '../../src/consumers/topology.js';
import { startCluster, type TestCluster } from './cluster.js';
import { sleep, waitUntil } from './e2e.js';

/**
 * Broker faults for end-to-end tests (CONTRACT 9, "broker connection lost or a broker
 * node restarted", "one active worker per host"), on a PRIVATE one-node RabbitMQ beside
 * the default one (scripts/rabbitmq-cluster.sh): `close_connection` and `stop_app` there
 * never disturb the test files that use 127.0.0.1:5672.
 *
 * `rabbitmqctl` needs ~0.5 s to start its Erlang VM (ENVIRONMENT.md), longer than a
 * burst of commands takes to get past the point a test aims at. So a fault is *armed*
 * in advance: a `rabbitmqctl eval` that is already running on the node polls for a
 * trigger file every 2 ms and then does exactly what `rabbitmqctl close_connection` /
 * `stop_app` do (`rabbit_networking:close_connection/2`, `rabbit:stop/0`: the same calls
 * the CLI makes), reporting the broker's own clock and how many deliveries the closed
 * connections' channels held unacknowledged at that moment. The same trick samples
 * `list_consumers`' data (`rabbit_amqqueue:consumers_all/1`) every 100 ms for as long as
 * a test wants. Every eval ends by itself after a deadline, even when the test died.
 * Free of vitest, like e2e.ts.
 */

const run = promisify(execFile);

/** What an armed fault reports once it fired. */
export interface FaultReport {
  /** the broker's wall clock (epoch ms) right after the fault */
  readonly at: number;
  /** connections named as asked, closed (close) or found (stop_app) */
  readonly connections: number;
  /** deliveries unacknowledged on those connections' channels just before the fault */
  readonly unacked: number;
}

export interface ArmedFault {
  /** Fires the fault now; resolves once the broker has done it. */
  fire(): Promise<FaultReport>;
  /** Disarms it when it has not fired (safe to call after `fire`). */
  cancel(): Promise<void>;
}

/** One `list_consumers` sample of a queue. */
export interface ConsumerSample {
  readonly at: number;
  readonly consumers: number;
  readonly active: number;
  /** `channel_pid:active` per consumer, for messages */
  readonly detail: string;
}

export interface ConsumerSampler {
  readonly samples: ConsumerSample[];
  /** Stops sampling; resolves with every sample taken. */
  stop(): Promise<ConsumerSample[]>;
}

const SAFE_NAME = /^[A-Za-z0-9 ._-]{1,120}$/;
const SAFE_PATH = /^\/[A-Za-z0-9/._-]{1,200}$/;

function erlString(s: string, what: string): string {
  if (!SAFE_PATH.test(s) && !SAFE_NAME.test(s)) throw new Error(`${what} ${JSON.stringify(s)} cannot go into an Erlang expression`);
  return `"${s}"`;
}

/** Erlang: `Props(P)` the client properties of connection P, `Named()` the connections named `name`, `Unacked(Conns)`. */
function erlConnectionFuns(name: string): string {
  return [
    `Name = list_to_binary(${erlString(name, 'connection name')}),`,
    'Props = fun(P) -> try rabbit_networking:connection_info(P, [client_properties]) of [{client_properties, CP}] when is_list(CP) -> CP; _ -> [] catch _:_ -> [] end end,',
    'Named = fun() -> [P || P <- rabbit_networking:connections(), lists:member({<<"connection_name">>, longstr, Name}, Props(P))] end,',
    'ChInfo = fun(C) -> try rabbit_channel:info(C, [connection, messages_unacknowledged]) of [{connection, X}, {messages_unacknowledged, Y}] -> {X, Y}; _ -> {none, 0} catch _:_ -> {none, 0} end end,',
    'Unacked = fun(Conns) -> lists:sum([N || C <- rabbit_channel:list(), {Conn, N} <- [ChInfo(C)], lists:member(Conn, Conns)]) end,',
  ].join('\n');
}

/** Erlang: `Wait()` → fire | cancel | timeout, polling the two files every 2 ms. */
function erlWaitFun(fire: string, cancel: string, deadlineMs: number): string {
  return [
    `Deadline = erlang:monotonic_time(millisecond) + ${deadlineMs},`,
    `Wait = fun W() -> case {filelib:is_file(${erlString(fire, 'trigger')}), filelib:is_file(${erlString(cancel, 'trigger')}), erlang:monotonic_time(millisecond) > Deadline} of {true, _, _} -> fire; {_, true, _} -> cancel; {_, _, true} -> timeout; _ -> timer:sleep(2), W() end end,`,
  ].join('\n');
}

/** A `rabbitmqctl eval` child whose stdout lines are kept and can be waited for. */
class EvalProcess {
  readonly lines: string[] = [];
  private stderr = '';
  private wake: (() => void)[] = [];
  readonly exited: Promise<number | null>;
  private done = false;

  constructor(readonly child: ChildProcess) {
    let buf = '';
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const parts = buf.split('\n');
      buf = parts.pop() ?? '';
      for (const l of parts) if (l.trim() !== '') this.lines.push(l.trim());
      for (const w of this.wake.splice(0)) w();
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString('utf8');
    });
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        if (buf.trim() !== '') this.lines.push(buf.trim());
        this.done = true;
        for (const w of this.wake.splice(0)) w();
        resolve(code);
      }),
    );
  }

  /** The first line matching `re`; throws when the eval ends or the time is up first. */
  async line(re: RegExp, timeoutMs: number, what: string): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const l of this.lines) {
        const m = re.exec(l);
        if (m !== null) return m;
      }
      if (this.done) throw new Error(`rabbitmqctl eval ended before ${what}: ${this.lines.join(' | ')} ${this.stderr.trim()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`rabbitmqctl eval: no ${what} within ${timeoutMs} ms: ${this.lines.join(' | ')} ${this.stderr.trim()}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Our own child only: the eval on the node ends by its own deadline or trigger. */
  async kill(): Promise<void> {
    if (this.done) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

/**
 * A private one-node RabbitMQ (`<prefix>1@localhost` on a free port), its `rabbitmqctl`,
 * and the faults above. `stop()` removes the node and its data directory.
 */
export class PrivateBroker {
  private serial = 0;
  private readonly evals = new Set<EvalProcess>();

  private constructor(
    private readonly cluster: TestCluster,
    readonly node: string,
    readonly url: string,
    /** where the trigger files go (world-readable: the node runs as `rabbitmq`) */
    private readonly dir: string,
    /** the flock file scripts/rabbitmq-cluster.sh leaves beside the node's data root */
    private readonly scriptLock: string,
  ) {}

  static async start(prefix: string): Promise<PrivateBroker> {
    const dir = await mkdtemp(join(tmpdir(), 'cdw-busfaults-'));
    try {
      await chmod(dir, 0o755);
      const cluster = await startCluster({ prefix, size: 1 });
      const node = cluster.nodes[0];
      if (node === undefined) throw new Error('the private broker has no node');
      return new PrivateBroker(cluster, node.name, node.url, dir, join(tmpdir(), `cdrom-worker-${prefix}.lock`));
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      await rm(join(tmpdir(), `cdrom-worker-${prefix}.lock`), { force: true });
      throw err;
    }
  }

  get bringUpMs(): number {
    return this.cluster.bringUpMs;
  }

  /** `rabbitmqctl -q -n <node> …`, stdout. */
  async ctl(args: readonly string[], timeoutMs = 60_000): Promise<string> {
    const { stdout } = await run('rabbitmqctl', ['-q', '-n', this.node, ...args], { timeout: timeoutMs });
    return stdout;
  }

  /** `list_connections pid client_properties`: the broker pids of the connections named `name`. */
  async connectionsNamed(name: string): Promise<string[]> {
    const out = await this.ctl(['list_connections', 'pid', 'client_properties']);
    return out
      .split('\n')
      .filter((line) => line.includes(`{"connection_name","${name}"}`))
      .map((line) => line.split('\t')[0] ?? '')
      .filter((pid) => pid.startsWith('<'));
  }

  /** `list_consumers queue_name channel_pid active` for one queue. */
  async listConsumers(queue: string): Promise<{ channelPid: string; active: boolean }[]> {
    const out = await this.ctl(['list_consumers', 'queue_name', 'channel_pid', 'active']);
    return out
      .split('\n')
      .map((line) => line.split('\t'))
      .filter((cols) => cols[0] === queue)
      .map((cols) => ({ channelPid: cols[1] ?? '', active: cols[2] === 'true' }));
  }

  private evaluate(expr: string): EvalProcess {
    const child = spawn('rabbitmqctl', ['-q', '-n', this.node, 'eval', expr], { stdio: ['ignore', 'pipe', 'pipe'] });
    const p = new EvalProcess(child);
    this.evals.add(p);
    void p.exited.then(() => this.evals.delete(p));
    return p;
  }

  /**
   * Arms `close_connection` of every connection named `connectionName`, or `stop_app`
   * (connectionName then only names whose unacked deliveries are reported). Resolves
   * once the eval runs on the node and waits for `fire()`.
   */
  async arm(action: 'close_connection' | 'stop_app', connectionName: string, deadlineMs = 180_000): Promise<ArmedFault> {
    const n = ++this.serial;
    const fire = join(this.dir, `fire-${n}`);
    const cancel = join(this.dir, `cancel-${n}`);
    const act = action === 'close_connection' ? `[rabbit_networking:close_connection(P, "cdrom-worker e2e: ${action} mid-burst") || P <- Conns]` : 'ok = rabbit:stop()';
    const expr = [
      erlConnectionFuns(connectionName),
      erlWaitFun(fire, cancel, deadlineMs),
      'io:format("armed ~b~n", [length(Named())]),',
      'case Wait() of',
      `  fire -> Conns = Named(), U = Unacked(Conns), ${act}, io:format("fired ~b ~b ~b~n", [length(Conns), U, os:system_time(millisecond)]);`,
      '  Other -> io:format("~w~n", [Other])',
      'end,',
      'ok.',
    ].join('\n');
    const p = this.evaluate(expr);
    try {
      await p.line(/^armed (\d+)$/, 30_000, 'the armed line');
    } catch (err) {
      await p.kill();
      throw err;
    }
    let fired: Promise<FaultReport> | null = null;
    return {
      fire: () =>
        (fired ??= (async () => {
          await writeFile(fire, '');
          const m = await p.line(/^fired (\d+) (\d+) (\d+)$/, 30_000, `${action} to fire`);
          return { connections: Number(m[1]), unacked: Number(m[2]), at: Number(m[3]) };
        })()),
      cancel: async () => {
        if (fired === null) await writeFile(cancel, '').catch(() => undefined);
        await Promise.race([p.exited, sleep(5000)]);
        await p.kill();
      },
    };
  }

  /** Samples the consumers of `queue` every `everyMs` (the data `list_consumers` prints). */
  async sampleConsumers(queue: string, everyMs = 100, deadlineMs = 180_000): Promise<ConsumerSampler> {
    const n = ++this.serial;
    const stopFile = join(this.dir, `stop-${n}`);
    const expr = [
      `Q = rabbit_misc:r(<<"/">>, queue, list_to_binary(${erlString(queue, 'queue name')})),`,
      `Deadline = erlang:monotonic_time(millisecond) + ${deadlineMs},`,
      'Sample = fun() -> try [{proplists:get_value(channel_pid, C), proplists:get_value(active, C)} || C <- rabbit_amqqueue:consumers_all(<<"/">>), proplists:get_value(queue_name, C) =:= Q] catch _:_ -> error end end,',
      'Loop = fun L(N) ->',
      '  case Sample() of',
      '    error -> io:format("sample ~b error~n", [os:system_time(millisecond)]);',
      '    Cs -> io:format("sample ~b ~b ~b ~s~n", [os:system_time(millisecond), length(Cs), length([x || {_, true} <- Cs]), string:join([pid_to_list(P) ++ ":" ++ atom_to_list(A) || {P, A} <- Cs], ",")])',
      '  end,',
      `  case filelib:is_file(${erlString(stopFile, 'stop file')}) orelse erlang:monotonic_time(millisecond) > Deadline of true -> N; false -> timer:sleep(${Math.max(10, Math.floor(everyMs))}), L(N + 1) end`,
      'end,',
      'io:format("sampled ~b~n", [Loop(1)]),',
      'ok.',
    ].join('\n');
    const p = this.evaluate(expr);
    const samples: ConsumerSample[] = [];
    const parse = (): void => {
      samples.length = 0;
      for (const l of p.lines) {
        const m = /^sample (\d+) (\d+) (\d+) ?(.*)$/.exec(l);
        if (m !== null) samples.push({ at: Number(m[1]), consumers: Number(m[2]), active: Number(m[3]), detail: m[4] ?? '' });
      }
    };
    try {
      await p.line(/^sample /, 30_000, 'the first sample');
    } catch (err) {
      await p.kill();
      throw err;
    }
    const sampler: ConsumerSampler = {
      get samples() {
        parse();
        return samples;
      },
      stop: async () => {
        await writeFile(stopFile, '').catch(() => undefined);
        await p.line(/^sampled \d+$/, 10_000, 'the end of sampling').catch(() => undefined);
        await p.kill();
        parse();
        return samples;
      },
    };
    return sampler;
  }

  /**
   * `rabbitmqctl start_app`: starts the application after a `stop_app` and returns once it
   * runs; on a running node it does nothing. Call it from `finally` whenever a case may
   * have stopped the app.
   */
  async startApp(): Promise<void> {
    await this.ctl(['start_app'], 90_000);
  }

  /** Disarms what is still waiting, starts the app if a test left it stopped, removes the node. */
  async stop(): Promise<void> {
    try {
      await writeFile(join(this.dir, 'cancel-all'), '').catch(() => undefined);
      for (const p of [...this.evals]) await p.kill();
      await this.cluster.stop();
      await rm(this.scriptLock, { force: true });
    } finally {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}

// ---- the engine's side, on the private broker -------------------------------------------

/** A result event as it arrived, with what the AMQP message said about it. */
export interface ArrivedEvent {
  readonly event: ResultEvent;
  readonly messageId: string | undefined;
  readonly routingKey: string;
  /** test clock, epoch ms */
  readonly at: number;
}

/**
 * The engine's side of a host on the private broker: publishes commands (persistent,
 * mandatory, `message_id` = commandId, confirmed) and collects the host's result events
 * in a durable quorum queue of its own, so that none is lost while the broker restarts
 * or this connection is down: it reconnects by itself (every 200 ms) after `stop_app`.
 */
export class BusEngine {
  readonly arrived: ArrivedEvent[] = [];
  private model: ChannelModel | null = null;
  private pub: ConfirmChannel | null = null;
  private closing = false;
  private reconnecting: Promise<void> | null = null;
  private readonly returned = new Set<string>();
  private wake: (() => void)[] = [];
  /** times this engine lost its connection */
  losses = 0;

  private constructor(
    readonly url: string,
    readonly hostId: string,
    readonly eventsQueue: string,
  ) {}

  static async open(url: string, hostId: string): Promise<BusEngine> {
    const e = new BusEngine(url, hostId, `cdw-e2e-events.${hostId}`);
    await e.connect();
    return e;
  }

  get events(): ResultEvent[] {
    return this.arrived.map((a) => a.event);
  }

  private async connect(): Promise<void> {
    const model = await connect(this.url, { noDelay: true });
    model.on('error', () => undefined);
    try {
      const pub = await model.createConfirmChannel();
      pub.on('error', () => undefined);
      pub.on('return', (msg: { properties: { messageId?: unknown } }) => {
        if (typeof msg.properties.messageId === 'string') this.returned.add(msg.properties.messageId);
      });
      await pub.assertExchange(COMMANDS_EXCHANGE, 'direct', { durable: true });
      await pub.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
      await pub.assertExchange(DEAD_EXCHANGE, 'direct', { durable: true });
      const sub: Channel = await model.createChannel();
      sub.on('error', () => undefined);
      await sub.assertQueue(this.eventsQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
      await sub.bindQueue(this.eventsQueue, EVENTS_EXCHANGE, `${this.hostId}.#`);
      // noAck: an event is handed over once; nothing comes back to this engine after a reconnect
      await sub.consume(
        this.eventsQueue,
        (msg) => {
          if (msg === null) return;
          const messageId: unknown = msg.properties.messageId;
          this.arrived.push({
            event: JSON.parse(msg.content.toString('utf8')) as ResultEvent,
            messageId: typeof messageId === 'string' ? messageId : undefined,
            routingKey: msg.fields.routingKey,
            at: Date.now(),
          });
          for (const w of this.wake.splice(0)) w();
        },
        { noAck: true },
      );
      model.on('close', () => {
        if (this.model !== model) return;
        this.model = null;
        this.pub = null;
        this.losses++;
        if (!this.closing) void this.reconnect();
      });
      this.model = model;
      this.pub = pub;
    } catch (err) {
      await model.close().catch(() => undefined);
      throw err;
    }
  }

  private reconnect(): Promise<void> {
    this.reconnecting ??= (async () => {
      const deadline = Date.now() + 120_000;
      while (!this.closing && this.model === null) {
        try {
          await this.connect();
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await sleep(200);
        }
      }
    })().finally(() => {
      this.reconnecting = null;
    });
    return this.reconnecting;
  }

  /** Connected again (after `stop_app`/`start_app`), waiting at most `timeoutMs`. */
  async connected(timeoutMs = 60_000): Promise<void> {
    await waitUntil(() => this.model !== null, timeoutMs, 'the engine to reconnect to the broker', 50);
  }

  async send(command: ChangeCdCommand): Promise<void> {
    if (this.pub === null) await this.connected();
    const pub = this.pub;
    if (pub === null) throw new Error('engine not connected');
    pub.publish(COMMANDS_EXCHANGE, this.hostId, Buffer.from(JSON.stringify(command)), {
      persistent: true,
      mandatory: true,
      contentType: 'application/json',
      messageId: command.commandId,
    });
    await pub.waitForConfirms();
    if (this.returned.has(command.commandId)) throw new Error(`command ${command.commandId} was unroutable: is the worker's queue declared?`);
  }

  eventsFor(commandId: string): ResultEvent[] {
    return this.events.filter((e) => e.commandId === commandId);
  }

  /** Resolves once every id has at least one event; false after `timeoutMs`. */
  async settle(ids: readonly string[], timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const have = new Set(this.events.map((e) => e.commandId));
      if (ids.every((id) => have.has(id))) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Resolves once `pred` holds for the events that arrived (checked at every arrival). */
  async until(pred: (arrived: readonly ArrivedEvent[]) => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.arrived)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${this.arrived.length} events)`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private async withChannel<T>(fn: (ch: Channel) => Promise<T>): Promise<T> {
    if (this.model === null) await this.connected();
    const model = this.model;
    if (model === null) throw new Error('engine not connected');
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    try {
      return await fn(ch);
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  /** Messages waiting in `cdrom.commands.<hostId>` (ready, not delivered). */
  commandsWaiting(): Promise<number> {
    return this.withChannel(async (ch) => (await ch.checkQueue(commandsQueue(this.hostId))).messageCount);
  }

  /** Takes every message of `cdrom.dead.<hostId>` (the queue ends empty). */
  takeDeadLetters(): Promise<GetMessage[]> {
    return this.withChannel(async (ch) => {
      const out: GetMessage[] = [];
      for (;;) {
        const m = await ch.get(deadQueue(this.hostId), { noAck: true });
        if (m === false) return out;
        out.push(m);
      }
    });
  }

  /** Closes the connection and deletes the host's queues and this engine's event queue. */
  async close(): Promise<void> {
    this.closing = true;
    await this.reconnecting?.catch(() => undefined);
    await this.model?.close().catch(() => undefined);
    this.model = null;
    const model = await connect(this.url, { noDelay: true });
    model.on('error', () => undefined);
    try {
      await removeHostQueues(model, this.hostId);
      const ch = await model.createChannel();
      ch.on('error', () => undefined);
      await ch.deleteQueue(this.eventsQueue).catch(() => undefined);
      await ch.close().catch(() => undefined);
    } finally {
      await model.close().catch(() => undefined);
    }
  }
}

// ---- what the events must show, beyond faults.ts' eventProblems ---------------------------

/**
 * Every repeat of a commandId is its first event again, whole (deep equality of the JSON
 * bodies, timestamps included): [] when so, readable lines otherwise. CONTRACT 4 itself
 * asks for the same outcome, action, previous and current (faults.ts' eventProblems).
 */
export function repeatProblems(arrived: readonly ArrivedEvent[], ids: readonly string[], name: (commandId: string) => string = (id) => id): string[] {
  const problems: string[] = [];
  for (const id of ids) {
    const mine = arrived.filter((a) => a.event.commandId === id);
    const first = mine[0];
    if (first === undefined) continue;
    mine.forEach((a, i) => {
      if (i === 0 || isDeepStrictEqual(a.event, first.event)) return;
      const diff = ([...new Set([...Object.keys(first.event), ...Object.keys(a.event)])] as (keyof ResultEvent)[]).filter((k) => !isDeepStrictEqual(first.event[k], a.event[k]));
      problems.push(`${name(id)}: repeat ${i} differs from the first event in ${diff.map((k) => `${k} (${JSON.stringify(first.event[k])} then ${JSON.stringify(a.event[k])})`).join(', ')}`);
    });
  }
  return problems;
}

/** Events whose AMQP `message_id` is not their commandId. */
export function messageIdProblems(arrived: readonly ArrivedEvent[], ids: readonly string[], name: (commandId: string) => string = (id) => id): string[] {
  const wanted = new Set(ids);
  return arrived.filter((a) => a.event.commandId !== null && wanted.has(a.event.commandId) && a.messageId !== a.event.commandId).map((a) => `${name(a.event.commandId as string)}: message_id ${a.messageId ?? '(none)'}`);
}

/** commandIds with more than one event, with their counts. */
export function repeatCounts(arrived: readonly ArrivedEvent[], ids: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const id of ids) {
    const n = arrived.filter((a) => a.event.commandId === id).length;
    if (n > 1) out.set(id, n);
  }
  return out;
}

/** `GET <path>` on the worker's HTTP port: the status, 0 when there was no answer within a second. */
export async function httpStatus(port: number, path: '/readyz' | '/healthz'): Promise<number> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}
