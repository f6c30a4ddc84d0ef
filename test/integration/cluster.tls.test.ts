import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { COMMANDS_EXCHANGE } from '../../src/consumers/topology.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker } from '../../src/main.js';
import { EventTap, command, uniqueHost } from '../support/amqp.js';
import { startCluster, type ClusterNode, type TestCluster } from '../support/cluster.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { createTestPki, type TestPki } from '../support/tls.js';

/**
 * amqps:// with CDROM_AMQP_CA (and a client certificate) against an extra node with an
 * SSL listener; a wrong CA or host name stops the worker at start with one clear line.
 */

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '../../src/cli/main.ts');

let pki: TestPki;
let cluster: TestCluster | null = null;
let node: ClusterNode;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  pki = await createTestPki();
  cluster = await startCluster({ prefix: 'cdwtls', size: 1, tlsDir: pki.dir });
  node = cluster.nodes[0]!;
  // eslint-disable-next-line no-console -- a measured figure, printed on purpose
  console.info(`TLS node up in ${cluster.bringUpMs} ms`);
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await pki?.remove();
}, 60_000);

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

const tlsUrl = (host = 'localhost'): string => `amqps://guest:guest@${host}:${node.tlsPort}`;

function workerConfig(hostId: string, env: Record<string, string>) {
  return loadConfig({ CDROM_HOST_ID: hostId, CDROM_HTTP_PORT: '0', CDROM_DRAIN_TIMEOUT_MS: '1000', ...env });
}

async function roundTrip(env: Record<string, string>): Promise<void> {
  const hostId = uniqueHost();
  const executor = new FakeExecutor();
  const worker = await startWorker({ config: workerConfig(hostId, env), logger: silentLogger(), createParts: () => Promise.resolve({ executor }) });
  cleanups.push(() => worker.stop('test end'));
  const model = await connect(node.url, { noDelay: true });
  cleanups.push(() => model.close());
  const tap = await EventTap.open(model, hostId);
  const ch = await model.createConfirmChannel();
  const cmd = command();
  ch.publish(COMMANDS_EXCHANGE, hostId, Buffer.from(JSON.stringify(cmd)), { persistent: true });
  await ch.waitForConfirms();
  const [event] = await tap.count(1);
  expect(event).toMatchObject({ type: 'changeCD.completed', commandId: cmd['commandId'] });
  cleanups.push(async () => {
    const c = await model.createChannel();
    await c.deleteQueue(`cdrom.commands.${hostId}`);
    await c.deleteQueue(`cdrom.dead.${hostId}`);
  });
}

/** A name of this machine that resolves to 127.0.0.1 but is not in the certificate. */
async function otherNameForLoopback(): Promise<string | null> {
  for (const name of [hostname(), 'runsc']) {
    if (name === 'localhost') continue;
    const a = await lookup(name, { family: 4 }).catch(() => null);
    if (a?.address === '127.0.0.1') return name;
  }
  return null;
}

describe('TLS to the broker', () => {
  it('connects with the right CA and serves a command end to end', async () => {
    await roundTrip({ CDROM_AMQP_URL: tlsUrl(), CDROM_AMQP_CA: pki.caFile });
  });

  it('connects with a client certificate too', async () => {
    await roundTrip({ CDROM_AMQP_URL: tlsUrl(), CDROM_AMQP_CA: pki.caFile, CDROM_AMQP_CERT: pki.clientCert, CDROM_AMQP_KEY: pki.clientKey });
  });

  it('refuses a server certificate from another CA, at start, with one clear error', async () => {
    const t0 = Date.now();
    const config = workerConfig(uniqueHost(), { CDROM_AMQP_URL: tlsUrl(), CDROM_AMQP_CA: pki.wrongCaFile });
    const err = await startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toMatch(/^cannot use the broker at amqps:\/\/guest:\[redacted\]@localhost:\d+: .*\(the server certificate does not verify against CDROM_AMQP_CA\)$/);
    expect(err!.message).not.toContain('\n');
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('refuses a host name that is not in the server certificate', async () => {
    const other = await otherNameForLoopback();
    expect(other, 'this machine has a second name for 127.0.0.1 (/etc/hosts)').not.toBeNull();
    const config = workerConfig(uniqueHost(), { CDROM_AMQP_URL: tlsUrl(other!), CDROM_AMQP_CA: pki.caFile });
    await expect(startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) })).rejects.toThrow(
      /\(the URL's host name is not in the server certificate\)$/,
    );
  });

  it('tries the next node of the list when one refuses TLS, and only fails when all did', async () => {
    // Node 1 of the list: a port nobody listens on (transient); node 2: the wrong name.
    const other = await otherNameForLoopback();
    const config = workerConfig(uniqueHost(), { CDROM_AMQP_URL: `amqps://guest:guest@127.0.0.1:1,${tlsUrl(other!)}`, CDROM_AMQP_CA: pki.caFile });
    await expect(startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: new FakeExecutor() }) })).rejects.toThrow(/host name/);
    await roundTrip({ CDROM_AMQP_URL: `amqps://guest:guest@${other!}:${node.tlsPort},${tlsUrl()}`, CDROM_AMQP_CA: pki.caFile });
  });

  it('`cdrom-worker run` with a wrong CA prints one line `cdrom-worker: …` on stderr and exits 1', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cdw-tls-run-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const env = {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      CDROM_HOST_ID: uniqueHost(),
      CDROM_AMQP_URL: tlsUrl(),
      CDROM_AMQP_CA: pki.wrongCaFile,
      // The real composition root, on libvirt's test driver and a scratch storage root.
      CDROM_LIBVIRT_URI: 'test:///default',
      CDROM_STORAGE_ROOT: dir,
      CDROM_LVM_ACTIVATION: 'loop',
      CDROM_HTTP_PORT: '0',
      CDROM_RECONCILE_INTERVAL_MS: '0',
    };
    const res = await run(process.execPath, ['--import', 'tsx', CLI, 'run'], { env, timeout: 60_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code?: number; stderr?: string }) => ({ code: e.code ?? -1, stderr: e.stderr ?? '' }),
    );
    expect(res.code).toBe(1);
    const lines = res.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^cdrom-worker: cannot use the broker at amqps:\/\/guest:\[redacted\]@localhost:\d+: .*CDROM_AMQP_CA\)$/);
  });
});
