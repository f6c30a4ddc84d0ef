import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { closeConnections, connectionsNamed } from '../support/amqp.js';
import { canUseLoopLvm } from '../support/storage.js';
import { TestVms, type TestVm } from '../support/vm.js';
import {
  E2eStorage,
  Engine,
  REPO,
  acquireE2eLock,
  changeCd,
  compileWorker,
  freePort,
  onlyDomains,
  openAdapters,
  setDrive,
  startWorkerProcess,
  uniqueHostId,
  waitUntil,
  type WorkerProcess,
} from '../support/e2e.js';

/**
 * deploy/prometheus and deploy/grafana against a real Prometheus (Debian's 2.42, as
 * host-setup.sh installs it) scraping a real worker process every second, with the rules
 * file loaded and evaluated every second: every dashboard and rule expression evaluates,
 * the core series have data after real changeCD commands on a real VM, every rule is
 * healthy, and the broker-disconnected alert's expression goes non-empty when the worker
 * loses RabbitMQ.
 *
 * Losing the broker: `rabbitmqctl close_connection` alone is over in ~100 ms (the worker
 * reconnects at once), shorter than a scrape. So the worker reaches the broker through a
 * TCP relay of this test, which refuses new connections while the outage lasts: the
 * broker closes the worker's connection and the worker stays off it until the relay
 * accepts again.
 */

const PROMETHEUS = '/usr/bin/prometheus';
const RULES = join(REPO, 'deploy/prometheus/cdrom-worker.rules.yaml');
const DASHBOARD = join(REPO, 'deploy/grafana/cdrom-worker.json');

/** What Grafana puts in place of its variables, for a query Prometheus understands. */
function grafanaToPromql(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval', '15s')
    .replaceAll('$__range', '5m')
    .replace(/\$\{host(?::[a-z]+)?\}|\$host\b/g, '.*');
}

interface PromResponse<T> {
  status: 'success' | 'error';
  error?: string;
  errorType?: string;
  data: T;
}
type Vector = { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] };

/** The broker through a relay this test can make refuse connections. */
class BrokerRelay {
  refusing = false;
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(target: { host: string; port: number }): Promise<BrokerRelay> {
    const port = await freePort();
    const server = createServer();
    const relay = new BrokerRelay(server, port);
    server.on('connection', (client) => {
      if (relay.refusing) return void client.destroy();
      const upstream = tcpConnect(target.port, target.host);
      for (const s of [client, upstream]) {
        relay.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          relay.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    return relay;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Prometheus as a child process on a free port, with its own config and data directory. */
class TestPrometheus {
  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
    private readonly logs: string[],
  ) {}

  static async start(dir: string, scrapeTarget: string, host: string): Promise<TestPrometheus> {
    const port = await freePort();
    const config = {
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      rule_files: [RULES],
      scrape_configs: [{ job_name: 'cdrom-worker', static_configs: [{ targets: [scrapeTarget], labels: { host } }] }],
    };
    // JSON is YAML: no second serialiser needed.
    await writeFile(join(dir, 'prometheus.yml'), JSON.stringify(config, null, 2));
    const child = spawn(
      PROMETHEUS,
      [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const logs: string[] = [];
    const keep = (d: Buffer): void => {
      logs.push(d.toString('utf8'));
      if (logs.length > 200) logs.splice(0, logs.length - 200);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const prom = new TestPrometheus(child, `http://127.0.0.1:${port}`, logs);
    try {
      await waitUntil(
        async () => {
          if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${logs.join('')}`);
          return fetch(`${prom.url}/-/ready`, { signal: AbortSignal.timeout(1000) }).then(
            (r) => r.ok,
            () => false,
          );
        },
        30_000,
        'prometheus /-/ready',
        100,
      );
    } catch (err) {
      await prom.stop();
      throw err;
    }
    return prom;
  }

  log(): string {
    return this.logs.join('').slice(-4000);
  }

  async api<T>(path: string, params: Record<string, string> = {}): Promise<PromResponse<T>> {
    const res = await fetch(`${this.url}/api/v1/${path}?${new URLSearchParams(params).toString()}`, { signal: AbortSignal.timeout(10_000) });
    return (await res.json()) as PromResponse<T>;
  }

  async query(expr: string): Promise<PromResponse<Vector>> {
    return this.api<Vector>('query', { query: expr });
  }

  /** The instant vector of `expr`; fails the test on a query error. */
  async vector(expr: string): Promise<Vector['result']> {
    const r = await this.query(expr);
    if (r.status !== 'success') throw new Error(`${expr}: ${r.errorType}: ${r.error}`);
    return r.data.result;
  }

  /** SIGTERM by pid, SIGKILL after 10 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
}

describe.skipIf(!canUseLoopLvm())('Prometheus rules and dashboard on a real Prometheus scraping a real worker', () => {
  const hostId = uniqueHostId('prom');
  let release: (() => Promise<void>) | null = null;
  let compiled: { entry: string; remove: () => Promise<void> } | null = null;
  let storage: E2eStorage | null = null;
  let vms: TestVms | null = null;
  let vm: TestVm;
  let engine: Engine | null = null;
  let relay: BrokerRelay | null = null;
  let worker: WorkerProcess | null = null;
  let prom: TestPrometheus | null = null;
  let dir: string | null = null;

  beforeAll(async () => {
    release = await acquireE2eLock();
    compiled = await compileWorker();
    storage = await E2eStorage.create(2);
    vms = await TestVms.open();
    vm = await vms.create();
    const adapters = await openAdapters(storage);
    await setDrive(adapters, storage, vm.uuid, null);
    await adapters.hypervisor.close();
    engine = await Engine.open(hostId);
    relay = await BrokerRelay.open({ host: '127.0.0.1', port: 5672 });
    worker = await startWorkerProcess({
      hostId,
      storageRoot: storage.root,
      entry: compiled.entry,
      domainFilter: onlyDomains(vm.name),
      extraEnv: { CDROM_AMQP_URL: `amqp://guest:guest@127.0.0.1:${relay.port}` },
    });
    dir = await mkdtemp(join(tmpdir(), 'cdw-prom-'));
    prom = await TestPrometheus.start(dir, `127.0.0.1:${worker.port}`, hostId);
    // Ready is not yet scraping (target discovery reaches the scrape loop up to 5 s
    // later): commands sent before the first scrape would show in no rate().
    const p = prom;
    await waitUntil(async () => (await p.vector(`count_over_time(up{host="${hostId}"}[1m]) >= 2`)).length > 0, 30_000, 'two scrapes of the worker', 250);
  }, 180_000);

  afterAll(async () => {
    const errors: unknown[] = [];
    if (relay !== null) relay.refusing = false;
    await prom?.stop().catch((err: unknown) => errors.push(err));
    const exit = await worker?.stop();
    await relay?.close().catch((err: unknown) => errors.push(err));
    await engine?.close().catch((err: unknown) => errors.push(err));
    await vms?.cleanup().catch((err: unknown) => errors.push(err));
    await storage?.remove().catch((err: unknown) => errors.push(err));
    await compiled?.remove();
    if (dir !== null) await rm(dir, { recursive: true, force: true });
    await release?.();
    if (exit !== undefined && exit.code !== 0) errors.push(new Error(`worker exited with ${JSON.stringify(exit)}:\n${worker?.logs().slice(-3000)}`));
    if (errors.length > 0) throw new AggregateError(errors, 'end-to-end cleanup failed');
  }, 120_000);

  async function change(media: Parameters<typeof changeCd>[1]): Promise<void> {
    const cmd = changeCd(vm.uuid, media);
    await (engine as Engine).send(cmd);
    const [e] = await (engine as Engine).waitFor(cmd.commandId, 1, 60_000);
    expect(e?.type).toBe('changeCD.completed');
  }

  it('after real commands every dashboard and rule expression evaluates, the core series have data, and every rule is healthy', async () => {
    const p = prom as TestPrometheus;
    const s = storage as E2eStorage;
    await change(s.pdiv(0));
    await change(s.pdiv(1));
    await change(null);
    // and one the worker rejects (a vmId that is no UUID): a dead letter
    await (engine as Engine).send({ ...changeCd(vm.uuid, null), vmId: 'not-a-uuid' });

    const mine = `host="${hostId}"`;
    const scraped = async (expr: string, what: string): Promise<void> => {
      try {
        await waitUntil(async () => (await p.vector(expr)).length > 0, 30_000, what, 250);
      } catch (err) {
        const seen = await p.vector(`{__name__=~"cdrom_commands_total|cdrom_dead_lettered_total|cdrom:.*", ${mine}}`);
        throw new Error(`${(err as Error).message}; Prometheus holds ${JSON.stringify(seen)}\n${p.log()}`);
      }
    };
    await scraped(`sum(cdrom_commands_total{${mine}, outcome="completed"}) >= 3`, 'the 3 completed commands scraped');
    await scraped(`sum(cdrom_dead_lettered_total{${mine}, reason="rejected"}) >= 1`, 'the rejected command scraped');
    // the recording rules run after the scrape; rate() needs two samples after the commands
    await scraped(`cdrom:commands:rate5m{${mine}, outcome="completed", action="change"} > 0`, 'the commands rate recorded');
    await scraped(`cdrom:command_duration_seconds:p50_5m{${mine}} > 0`, 'the median command time recorded');
    await scraped(`cdrom:step_duration_seconds:p99_5m{${mine}, step="update"} > 0`, 'the p99 update step time recorded');

    // every rule: loaded, evaluated, healthy
    await waitUntil(
      async () => {
        const r = await p.api<{ groups: { rules: { health: string }[] }[] }>('rules');
        return r.data.groups.flatMap((g) => g.rules).every((x) => x.health === 'ok');
      },
      10_000,
      'every rule evaluated',
      250,
    );
    const rulesNow = await p.api<{ groups: { name: string; rules: { name: string; health: string; lastError?: string; type: string }[] }[] }>('rules');
    const loaded = rulesNow.data.groups.flatMap((g) => g.rules);
    const doc = parse(await readFile(RULES, 'utf8')) as { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] };
    const fileRules = doc.groups.flatMap((g) => g.rules);
    expect(loaded.map((r) => r.name).sort()).toEqual(fileRules.map((r) => r.alert ?? r.record ?? '').sort());
    expect(loaded.filter((r) => r.health !== 'ok')).toEqual([]);

    // every rule expression evaluates through the query API
    for (const r of fileRules) {
      const res = await p.query(r.expr);
      expect(res.status, `${r.alert ?? r.record}: ${res.error}`).toBe('success');
    }

    // every dashboard expression evaluates, and has data, but for the ones that are
    // empty on a healthy worker by design
    const dash = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: { title: string; targets?: { expr: string }[] }[] };
    const emptyWhenHealthy = [
      'cdrom_standby{', // `== 1` only on a standby
      'result="error"', // no step threw
      'cdrom_recovery_actions_total', // nothing to recover: the counter has no row label yet
    ];
    const targets = dash.panels.flatMap((panel) => (panel.targets ?? []).map((t) => ({ title: panel.title, expr: grafanaToPromql(t.expr) })));
    expect(targets.length).toBeGreaterThanOrEqual(15);
    for (const t of targets) {
      const res = await p.query(t.expr);
      expect(res.status, `${t.title}: ${t.expr}: ${res.error}`).toBe('success');
      if (!emptyWhenHealthy.some((x) => t.expr.includes(x))) expect(res.data.result.length, `${t.title}: ${t.expr} has no data`).toBeGreaterThan(0);
    }

    // the core series, scraped from the worker
    for (const series of [
      'cdrom_commands_total',
      'cdrom_command_duration_seconds_bucket',
      'cdrom_step_duration_seconds_bucket',
      'cdrom_command_retries_total',
      'cdrom_commands_in_flight',
      'cdrom_active_volumes',
      'cdrom_hung_calls',
      'cdrom_broker_connected',
      'cdrom_ready',
      'cdrom_dead_lettered_total',
      'cdrom_recovery_failures_total',
    ])
      expect((await p.vector(`${series}{${mine}}`)).length, series).toBeGreaterThan(0);
    expect(await p.vector(`cdrom_ready{${mine}}`)).toMatchObject([{ value: [expect.any(Number), '1'] }]);
    expect(await p.vector(`cdrom_broker_connected{${mine}}`)).toMatchObject([{ value: [expect.any(Number), '1'] }]);
    const steps = new Set((await p.vector(`sum by (step) (cdrom_step_duration_seconds_count{${mine}}) > 0`)).map((x) => x.metric['step']));
    for (const step of ['prepare', 'update', 'teardown', 'metadata']) expect(steps, step).toContain(step);

    const byOutcome = await p.vector(`sum by (outcome, action) (cdrom_commands_total{${mine}}) > 0`);
    expect(byOutcome.map((x) => `${x.metric['outcome']} ${x.metric['action']} ${x.value[1]}`).sort()).toEqual(['completed change 1', 'completed eject 1', 'completed load 1', 'rejected none 1']);
    const p99 = await p.vector(`cdrom:command_duration_seconds:p99_5m{${mine}}`);
    // eslint-disable-next-line no-console -- what Prometheus holds after the commands, printed on purpose (it goes into the closing note)
    console.log(`sum by (outcome, action) (cdrom_commands_total) from Prometheus:\n${JSON.stringify(byOutcome)}\ncdrom:command_duration_seconds:p99_5m: ${JSON.stringify(p99)}`);
  }, 120_000);

  it("a worker kept off the broker makes the broker-disconnected alert's expression non-empty (and the alert pending)", async () => {
    const p = prom as TestPrometheus;
    const r = relay as BrokerRelay;
    const w = worker as WorkerProcess;
    const alert = (parse(await readFile(RULES, 'utf8')) as { groups: { rules: { alert?: string; expr: string }[] }[] }).groups
      .flatMap((g) => g.rules)
      .find((x) => x.alert === 'CdromBrokerDisconnected');
    expect(alert?.expr).toBeDefined();
    const expr = alert?.expr ?? '';
    expect(await p.vector(expr)).toEqual([]);

    const name = `cdrom-worker ${hostId}`;
    const connections = await connectionsNamed(name);
    expect(connections.length).toBeGreaterThan(0);
    r.refusing = true;
    try {
      await closeConnections(connections);
      await waitUntil(async () => (await p.vector(expr)).length > 0, 15_000, `${expr} to be non-empty`, 250);
      const firing = await p.vector(expr);
      expect(firing).toMatchObject([{ metric: { host: hostId, job: 'cdrom-worker' }, value: [expect.any(Number), '0'] }]);
      // the rule itself sees it: pending until its `for` (2 minutes) has passed
      await waitUntil(
        async () => {
          const a = await p.api<{ alerts: { labels: Record<string, string>; state: string }[] }>('alerts');
          return a.data.alerts.some((x) => x.labels['alertname'] === 'CdromBrokerDisconnected' && x.labels['host'] === hostId && x.state === 'pending');
        },
        10_000,
        'CdromBrokerDisconnected pending',
        250,
      );
      // readiness follows the connection
      expect(await p.vector(`cdrom_ready{host="${hostId}"} == 0`)).toHaveLength(1);
      expect(await connectionsNamed(name)).toEqual([]);
    } finally {
      r.refusing = false;
    }
    await waitUntil(async () => (await p.vector(expr)).length === 0 && (await p.vector(`cdrom_ready{host="${hostId}"} == 1`)).length === 1, 30_000, 'the worker back on the broker, as Prometheus sees it', 250);
    expect(w.running()).toBe(true);
    // and it still works
    await change((storage as E2eStorage).pdiv(0));
    await change(null);
  }, 120_000);
});
