import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config.js';

/**
 * compose.yaml and the Dockerfile cannot be run here (no Docker engine): this checks that
 * what they say agrees with the configuration the worker reads and the contract.
 */

const ROOT = join(import.meta.dirname, '..', '..');
const read = (f: string): string => readFileSync(join(ROOT, f), 'utf8');

interface Service {
  image?: string;
  build?: unknown;
  privileged?: boolean;
  pid?: string;
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition?: string }>;
  healthcheck?: { test?: string[] };
}

interface Compose {
  services: Record<string, Service>;
}

const compose = parse(read('compose.yaml')) as Compose;
const rabbit = compose.services['rabbitmq'];
const worker = compose.services['worker'];

/** Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` over `env`. */
function interpolate(value: string, env: Record<string, string>): string {
  return value.replace(/\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g, (_m, name: string, op: string | undefined, arg: string | undefined) => {
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (op === '-') return arg ?? '';
    throw new Error(`${name} is required: ${arg ?? ''}`);
  });
}

function workerEnv(env: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(worker?.environment ?? {}).map(([k, v]) => [k, interpolate(String(v), env)]));
}

/** `host:container[:mode]` → [host, container]. */
function mounts(s: Service | undefined): Array<[string, string]> {
  return (s?.volumes ?? []).map((v) => {
    const [host = '', container = ''] = v.split(':');
    return [host, container];
  });
}

describe('compose.yaml', () => {
  it('has a RabbitMQ with the management UI and the worker, started after the broker is healthy', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['rabbitmq', 'worker']);
    expect(rabbit?.image).toMatch(/^rabbitmq:3\.\d+-management$/);
    expect(rabbit?.ports).toEqual(expect.arrayContaining([expect.stringMatching(/:5672:5672$/), expect.stringMatching(/:15672:15672$/)]));
    expect(rabbit?.healthcheck?.test).toBeDefined();
    expect(worker?.build).toBe('.');
    expect(worker?.depends_on?.['rabbitmq']?.condition).toBe('service_healthy');
  });

  it('sets only variables that src/config.ts reads, and the ones a host needs', () => {
    const configSource = read('src/config.ts');
    const keys = Object.keys(worker?.environment ?? {});
    for (const k of keys) {
      expect(k).toMatch(/^CDROM_/);
      expect(configSource, `${k} is not read by src/config.ts`).toContain(`'${k}'`);
    }
    expect(keys).toEqual(expect.arrayContaining(['CDROM_HOST_ID', 'CDROM_AMQP_URL', 'CDROM_LIBVIRT_URI', 'CDROM_STORAGE_ROOT', 'CDROM_LVM_ACTIVATION', 'CDROM_HTTP_PORT']));
  });

  it('requires the host id: the container host name is not the host', () => {
    expect(() => workerEnv({})).toThrow(/CDROM_HOST_ID is required/);
  });

  it('is a valid configuration that reaches the rabbitmq service as its user', () => {
    const env = workerEnv({ CDROM_HOST_ID: 'host-1' });
    const config = loadConfig(env);
    expect(config.hostId).toBe('host-1');
    const url = new URL(config.amqpUrls[0] ?? '');
    expect(url.hostname).toBe('rabbitmq');
    expect(url.port).toBe('5672');
    expect(url.username).toBe(rabbit?.environment?.['RABBITMQ_DEFAULT_USER']);
    expect(url.password).toBe(interpolate(rabbit?.environment?.['RABBITMQ_DEFAULT_PASS'] ?? '', {}));
    // one password variable for both sides
    const withPassword = workerEnv({ CDROM_HOST_ID: 'h', CDROM_AMQP_PASSWORD: 's3cret' });
    expect(new URL(withPassword['CDROM_AMQP_URL'] ?? '').password).toBe('s3cret');
    expect(interpolate(rabbit?.environment?.['RABBITMQ_DEFAULT_PASS'] ?? '', { CDROM_AMQP_PASSWORD: 's3cret' })).toBe('s3cret');
    expect(config.lvmActivation).toBe('dm');
    expect(config.libvirtUri).toBe('qemu:///system');
  });

  it('mounts the libvirt socket, /dev and the storage root at the same paths, privileged, in the host PID namespace', () => {
    const config = loadConfig(workerEnv({ CDROM_HOST_ID: 'h' }));
    const m = mounts(worker);
    for (const path of ['/var/run/libvirt', '/dev', config.storageRoot]) expect(m).toContainEqual([path, path]);
    // CDROM_ISO_DIRS defaults under the storage root, so legacy paths are mounted too
    for (const dir of config.isoDirs) expect(m.some(([, c]) => dir === c || dir.startsWith(`${c}/`))).toBe(true);
    expect(worker?.privileged).toBe(true);
    expect(worker?.pid).toBe('host');
  });

  it('checks readiness on the configured HTTP port', () => {
    const config = loadConfig(workerEnv({ CDROM_HOST_ID: 'h' }));
    expect(config.httpPort).toBeGreaterThan(0);
    expect(worker?.healthcheck?.test?.join(' ')).toContain(`http://127.0.0.1:${config.httpPort}/readyz`);
  });
});

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');

  it('builds on node:20-bookworm with libvirt-dev, npm ci and the build', () => {
    expect(dockerfile).toMatch(/^FROM node:20-bookworm AS build$/m);
    expect(dockerfile).toMatch(/apt-get install[^\n]*libvirt-dev/);
    expect(dockerfile).toMatch(/npm ci\b/);
    expect(dockerfile).toMatch(/npm run build/);
  });

  it('copies what the worker loads at run time and runs `cdrom-worker run`', () => {
    for (const path of ['./dist', './bin', './node_modules', './build/Release/virt.node']) expect(dockerfile).toContain(path);
    expect(dockerfile).toMatch(/apt-get install[^\n]*libvirt0[^\n]*lvm2/);
    expect(dockerfile).toContain('ENTRYPOINT ["node", "bin/cdrom-worker.js"]');
    expect(dockerfile).toContain('CMD ["run"]');
  });

  it('sends no local build output or dependencies into the build context', () => {
    const ignored = read('.dockerignore').split('\n');
    for (const p of ['node_modules', 'dist', 'build', '.git']) expect(ignored).toContain(p);
  });
});
