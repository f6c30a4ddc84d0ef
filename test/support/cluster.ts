import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { connect, type ChannelModel } from 'amqplib';
import { afterEach } from 'vitest';

/**
 * Extra RabbitMQ nodes for the cluster tests, through scripts/rabbitmq-cluster.sh (the
 * default node on 5672 is never touched). Ports are picked free at start, so test files
 * and hand-started clusters do not collide.
 */

const run = promisify(execFile);
const SCRIPT = resolve(import.meta.dirname, '../../scripts/rabbitmq-cluster.sh');

export interface ClusterNode {
  readonly name: string;
  readonly port: number;
  /** guest/guest over plain AMQP. */
  readonly url: string;
  /** amqps://guest:guest@localhost:<port+1000>, when the cluster has TLS. */
  readonly tlsPort: number;
  readonly pidFile: string;
}

export interface TestCluster {
  readonly nodes: readonly ClusterNode[];
  /** As printed by the script ("cluster up in N s"). */
  readonly bringUpMs: number;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  /** Node name prefix, distinct per test file. */
  readonly prefix: string;
  readonly size: number;
  /** ca.pem, server.pem, server.key: adds an AMQPS listener on port + 1000. */
  readonly tlsDir?: string;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((done) => {
    const srv = createServer();
    srv.once('error', () => done(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => done(true)));
  });
}

/** A base port whose AMQP, AMQPS (+1000) and distribution (+20000) ports are all free. */
async function freeBasePort(size: number): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const base = 30_000 + Math.floor(Math.random() * 14_000);
    const ports = Array.from({ length: size }, (_, i) => base + i).flatMap((p) => [p, p + 1000, p + 20_000]);
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
  }
  throw new Error('no free port range for the test cluster');
}

export async function startCluster(opts: ClusterOptions): Promise<TestCluster> {
  const base = await freeBasePort(opts.size);
  const env = {
    ...process.env,
    CDW_CLUSTER_ROOT: join(tmpdir(), `cdrom-worker-${opts.prefix}`),
    CDW_CLUSTER_PREFIX: opts.prefix,
    CDW_CLUSTER_SIZE: String(opts.size),
    CDW_CLUSTER_BASE_PORT: String(base),
    ...(opts.tlsDir !== undefined ? { CDW_CLUSTER_TLS_DIR: opts.tlsDir } : {}),
  };
  const stop = async (): Promise<void> => {
    await run('bash', [SCRIPT, 'stop'], { env, timeout: 60_000 });
  };
  // A cluster left over by a killed run of this file holds the same names: start clean.
  await stop();
  let out: string;
  try {
    ({ stdout: out } = await run('bash', [SCRIPT, 'start'], { env, timeout: 180_000 }));
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  const m = /cluster up in (\d+)\.(\d{3}) s/.exec(out);
  const bringUpMs = m ? Number(m[1]) * 1000 + Number(m[2]) : NaN;
  const nodes = Array.from({ length: opts.size }, (_, i): ClusterNode => {
    const port = base + i;
    return {
      name: `${opts.prefix}${i + 1}@localhost`,
      port,
      url: `amqp://guest:guest@127.0.0.1:${port}`,
      tlsPort: port + 1000,
      pidFile: join(env.CDW_CLUSTER_ROOT, `${opts.prefix}${i + 1}`, 'pid'),
    };
  });
  return { nodes, bringUpMs, stop };
}

/** The node leading a quorum queue, as the cluster sees it (asked through `node`). */
export async function quorumLeader(node: ClusterNode, queue: string): Promise<string> {
  const { stdout } = await run('rabbitmqctl', ['-q', '-n', node.name, 'list_queues', 'name', 'leader', '--formatter', 'json'], { timeout: 60_000 });
  const rows = JSON.parse(stdout) as Array<{ name: string; leader: string }>;
  const row = rows.find((r) => r.name === queue);
  if (!row) throw new Error(`queue ${queue} not found on ${node.name}`);
  return row.leader;
}

/** kill -9 of a node's Erlang VM: no goodbye to clients or peers. */
export async function killNode(node: ClusterNode): Promise<void> {
  const pid = Number((await readFile(node.pidFile, 'utf8')).trim());
  if (!Number.isInteger(pid) || pid <= 1) throw new Error(`bad pid file ${node.pidFile}`);
  process.kill(pid, 'SIGKILL');
}

/**
 * Things to undo after each test, newest first, and a broker connection opener that
 * registers its own close there. Failures while undoing are ignored: the test already
 * reported what went wrong.
 */
export function useCleanups(): { cleanups: Array<() => Promise<unknown>>; open: (url: string) => Promise<ChannelModel> } {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });
  return {
    cleanups,
    open: async (url: string): Promise<ChannelModel> => {
      const model = await connect(url, { noDelay: true });
      model.on('error', () => undefined);
      cleanups.push(() => model.close());
      return model;
    },
  };
}
