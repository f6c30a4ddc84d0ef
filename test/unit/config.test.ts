import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadBusConfig, loadConfig } from '../../src/config.js';

const CLI = join(import.meta.dirname, '../../src/cli/main.ts');

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

describe('loadConfig', () => {
  it('has the contract defaults and is frozen', () => {
    const c = loadConfig({ CDROM_HOST_ID: 'host-1' });
    expect(c).toMatchObject({
      hostId: 'host-1',
      amqpUrls: ['amqp://guest:guest@127.0.0.1:5672'],
      declareTopology: true,
      libvirtUri: 'qemu:///system',
      storageRoot: '/rhev/data-center',
      lvmActivation: 'dm',
      isoDirs: ['/rhev/data-center/mnt'],
      concurrency: 16,
      httpPort: 9464,
      logLevel: 'info',
      retry: { limit: 5 },
    });
    expect(c.failpoints).toEqual([]);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.amqpUrls)).toBe(true);
  });

  it('takes a list of brokers, amqps included, and the other variables', () => {
    const c = loadConfig({
      CDROM_HOST_ID: 'h_2',
      CDROM_AMQP_URL: 'amqps://u:p@a:5671, amqp://b',
      CDROM_DECLARE_TOPOLOGY: '0',
      CDROM_STORAGE_ROOT: '/srv/rhev/',
      CDROM_ISO_DIRS: '/isos:/more',
      CDROM_LVM_ACTIVATION: 'loop',
      CDROM_CONCURRENCY: '4',
      CDROM_HTTP_PORT: '0',
      CDROM_RETRY_LIMIT: '2',
    });
    expect(c).toMatchObject({ amqpUrls: ['amqps://u:p@a:5671', 'amqp://b'], declareTopology: false, storageRoot: '/srv/rhev', isoDirs: ['/isos', '/more'], lvmActivation: 'loop', concurrency: 4, httpPort: 0, retry: { limit: 2 } });
  });

  it('parses failpoints only when enabled', () => {
    expect(loadConfig({ CDROM_HOST_ID: 'h', CDROM_FAILPOINT: 'garbage' }).failpoints).toEqual([]);
    const c = loadConfig({ CDROM_HOST_ID: 'h', CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'prepare:error,before-ack:crash' });
    expect(c.failpoints).toEqual([
      { point: 'prepare', action: 'error', vmId: null },
      { point: 'before-ack', action: 'crash', vmId: null },
    ]);
    expect(Object.isFrozen(c.failpoints)).toBe(true);
    expect(configError({ CDROM_HOST_ID: 'h', CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'nowhere:crash' }).variable).toBe('CDROM_FAILPOINT');
  });

  it.each([
    [{ CDROM_HOST_ID: 'bad host!' }, 'CDROM_HOST_ID'],
    [{ CDROM_HOST_ID: 'x'.repeat(65) }, 'CDROM_HOST_ID'],
    [{ CDROM_AMQP_URL: 'http://broker' }, 'CDROM_AMQP_URL'],
    [{ CDROM_AMQP_URL: 'amqp://ok,::nonsense' }, 'CDROM_AMQP_URL'],
    [{ CDROM_AMQP_CA: '/nonexistent/ca.pem' }, 'CDROM_AMQP_CA'],
    [{ CDROM_DECLARE_TOPOLOGY: 'yes' }, 'CDROM_DECLARE_TOPOLOGY'],
    [{ CDROM_STORAGE_ROOT: 'relative' }, 'CDROM_STORAGE_ROOT'],
    [{ CDROM_ISO_DIRS: '/ok:relative' }, 'CDROM_ISO_DIRS'],
    [{ CDROM_LVM_ACTIVATION: 'lvm' }, 'CDROM_LVM_ACTIVATION'],
    [{ CDROM_CONCURRENCY: '0' }, 'CDROM_CONCURRENCY'],
    [{ CDROM_CONCURRENCY: '1.5' }, 'CDROM_CONCURRENCY'],
    [{ CDROM_HTTP_PORT: '70000' }, 'CDROM_HTTP_PORT'],
    [{ CDROM_LOG_LEVEL: 'loud' }, 'CDROM_LOG_LEVEL'],
    [{ CDROM_RETRY_LIMIT: '-1' }, 'CDROM_RETRY_LIMIT'],
  ])('rejects %j naming %s in one line', (env, variable) => {
    const err = configError({ CDROM_HOST_ID: 'h', ...env });
    expect(err.variable).toBe(variable);
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message.startsWith(`${variable}: `)).toBe(true);
    expect(err.message).not.toMatch(/\n/);
  });

  it('never echoes a broker password', () => {
    const err = configError({ CDROM_HOST_ID: 'h', CDROM_AMQP_URL: 'ftp://user:s3cret@host' });
    expect(err.message).not.toMatch(/s3cret/);
  });

  it('reads CDROM_TRUSTED_SENDERS: unset is no check; names are trimmed around commas and deduplicated', () => {
    expect(loadConfig({ CDROM_HOST_ID: 'h' }).trustedSenders).toBeNull();
    const c = loadConfig({ CDROM_HOST_ID: 'h', CDROM_TRUSTED_SENDERS: ' engine , ops,engine,cdrom-h@x' });
    expect(c.trustedSenders).toEqual(['engine', 'ops', 'cdrom-h@x']);
    expect(Object.isFrozen(c.trustedSenders)).toBe(true);
  });

  it.each([
    ['', /names no user/],
    ['   ', /names no user/],
    ['engine,,ops', /entry 2 is empty/],
    ['engine,', /entry 2 is empty/],
    ['engine ops', /entry 1 \("engine ops"\) contains whitespace/],
    ['engine,o\tps', /entry 2 .* contains whitespace/],
  ])('refuses CDROM_TRUSTED_SENDERS=%j', (value, problem) => {
    const err = configError({ CDROM_HOST_ID: 'h', CDROM_TRUSTED_SENDERS: value });
    expect(err.variable).toBe('CDROM_TRUSTED_SENDERS');
    expect(err.message).toMatch(/^CDROM_TRUSTED_SENDERS: /);
    expect(err.message).toMatch(problem);
    expect(err.message).not.toMatch(/\n/);
  });

  it('reads the TLS files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cdrom-cfg-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), 'CA');
      const c = loadBusConfig({ CDROM_HOST_ID: 'h', CDROM_AMQP_URL: 'amqps://h', CDROM_AMQP_CA: join(dir, 'ca.pem') });
      expect(c.tls.ca?.toString()).toBe('CA');
      writeFileSync(join(dir, 'cert.pem'), 'CERT');
      expect(() => loadBusConfig({ CDROM_HOST_ID: 'h', CDROM_AMQP_CERT: join(dir, 'cert.pem') })).toThrow(/CDROM_AMQP_KEY/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('every CONTRACT section 1 variable has its invalid form refused', () => {
  it.each([
    [{ CDROM_HOST_ID: 'host.example.com' }, 'CDROM_HOST_ID'],
    [{ CDROM_AMQP_URL: 'amqp://' }, 'CDROM_AMQP_URL'],
    [{ CDROM_AMQP_URL: ' , ' }, 'CDROM_AMQP_URL'],
    [{ CDROM_AMQP_CERT: '/nonexistent/cert.pem' }, 'CDROM_AMQP_CERT'],
    [{ CDROM_AMQP_KEY: '/nonexistent/key.pem' }, 'CDROM_AMQP_KEY'],
    [{ CDROM_DECLARE_TOPOLOGY: '2' }, 'CDROM_DECLARE_TOPOLOGY'],
    [{ CDROM_LIBVIRT_URI: 'not a uri' }, 'CDROM_LIBVIRT_URI'],
    [{ CDROM_STORAGE_ROOT: './rhev' }, 'CDROM_STORAGE_ROOT'],
    [{ CDROM_LVM_ACTIVATION: 'LOOP' }, 'CDROM_LVM_ACTIVATION'],
    [{ CDROM_ISO_DIRS: ':::' }, 'CDROM_ISO_DIRS'],
    [{ CDROM_CONCURRENCY: '-3' }, 'CDROM_CONCURRENCY'],
    [{ CDROM_HTTP_PORT: 'http' }, 'CDROM_HTTP_PORT'],
    [{ CDROM_HTTP_PORT: '-1' }, 'CDROM_HTTP_PORT'],
    [{ CDROM_LOG_LEVEL: 'verbose' }, 'CDROM_LOG_LEVEL'],
    [{ CDROM_ENABLE_FAILPOINTS: 'yes' }, 'CDROM_ENABLE_FAILPOINTS'],
    [{ CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'prepare:explode' }, 'CDROM_FAILPOINT'],
    [{ CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'libvirt-update:error,rollback:error' }, 'CDROM_FAILPOINT'],
    [{ CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'before-ack:error' }, 'CDROM_FAILPOINT'],
    [{ CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: 'prepare:crash@vm-1' }, 'CDROM_FAILPOINT'],
    [{ CDROM_RETRY_BASE_MS: '0' }, 'CDROM_RETRY_BASE_MS'],
    [{ CDROM_RETRY_MAX_MS: 'soon' }, 'CDROM_RETRY_MAX_MS'],
    [{ CDROM_STEP_TIMEOUT_MS: '0' }, 'CDROM_STEP_TIMEOUT_MS'],
    [{ CDROM_DRAIN_TIMEOUT_MS: '1e3' }, 'CDROM_DRAIN_TIMEOUT_MS'],
    [{ CDROM_RECONCILE_INTERVAL_MS: '-5' }, 'CDROM_RECONCILE_INTERVAL_MS'],
    [{ CDROM_TRUSTED_SENDERS: 'a,,b' }, 'CDROM_TRUSTED_SENDERS'],
  ])('%j → %s', (env, variable) => {
    const err = configError({ CDROM_HOST_ID: 'h', ...env });
    expect(err.variable).toBe(variable);
    expect(err.message.startsWith(`${variable}: `)).toBe(true);
    expect(err.message).not.toMatch(/\n/);
  });

  it('accepts the valid edge values', () => {
    const c = loadConfig({
      CDROM_HOST_ID: 'A'.repeat(64),
      CDROM_AMQP_URL: 'amqps://broker.example:5671',
      CDROM_LIBVIRT_URI: 'qemu+tls://host/system',
      CDROM_HTTP_PORT: '65535',
      CDROM_LOG_LEVEL: 'SILENT',
      CDROM_DECLARE_TOPOLOGY: 'false',
      CDROM_RECONCILE_INTERVAL_MS: '0',
      CDROM_DRAIN_TIMEOUT_MS: '0',
    });
    expect(c).toMatchObject({ httpPort: 65535, logLevel: 'silent', declareTopology: false, reconcileIntervalMs: 0, drainTimeoutMs: 0, libvirtUri: 'qemu+tls://host/system' });
  });

  it('keeps a stray failpoint from stopping a production worker', () => {
    expect(() => loadConfig({ CDROM_HOST_ID: 'h', CDROM_ENABLE_FAILPOINTS: '0', CDROM_FAILPOINT: 'prepare:explode' })).not.toThrow();
  });
});

describe('cdrom-worker run with invalid configuration', () => {
  it('prints one line naming the variable and exits 2 before connecting', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      // An unreachable broker: had it tried to connect, it would hang instead of exiting.
      const env = { ...process.env, CDROM_HOST_ID: 'h', CDROM_CONCURRENCY: 'many', CDROM_AMQP_URL: 'amqp://10.255.255.1:1' };
      const child = execFile(process.execPath, ['--import', 'tsx', CLI, 'run'], { env, timeout: 20_000 }, (_err, out, err) => resolve({ code: child.exitCode, stdout: out, stderr: err }));
    });
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/CDROM_CONCURRENCY: must be an integer/);
  });

  it('refuses an empty CDROM_TRUSTED_SENDERS with one line and exit 2', async () => {
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const env = { ...process.env, CDROM_HOST_ID: 'h', CDROM_TRUSTED_SENDERS: 'engine, ', CDROM_AMQP_URL: 'amqp://10.255.255.1:1' };
      const child = execFile(process.execPath, ['--import', 'tsx', CLI, 'run'], { env, timeout: 20_000 }, (_err, _out, err) => resolve({ code: child.exitCode, stderr: err }));
    });
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr.trim()).toMatch(/: CDROM_TRUSTED_SENDERS: entry 2 is empty$/);
  });

  it.each([
    ['rollback:error', /: CDROM_FAILPOINT: rollback:error is not supported: .*rollback:crash/],
    ['before-ack:error', /: CDROM_FAILPOINT: before-ack:error is not supported: .*before-ack:crash/],
  ])('refuses %s with one line and exit 2', async (spec, line) => {
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const env = { ...process.env, CDROM_HOST_ID: 'h', CDROM_ENABLE_FAILPOINTS: '1', CDROM_FAILPOINT: spec, CDROM_AMQP_URL: 'amqp://10.255.255.1:1' };
      const child = execFile(process.execPath, ['--import', 'tsx', CLI, 'run'], { env, timeout: 20_000 }, (_err, _out, err) => resolve({ code: child.exitCode, stderr: err }));
    });
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr.trim()).toMatch(line);
  });
});
