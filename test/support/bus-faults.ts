import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startCluster, type TestCluster } from './cluster.js';
import { sleep } from './e2e.js';

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
 * connections' channels held unacknowledged at that moment (measured here: the close lands
 * ~10 ms after the trigger file is written; arming takes ~0.7 s, like any `rabbitmqctl`).
 * The same trick samples
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
