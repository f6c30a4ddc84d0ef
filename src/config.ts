import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import { parseFailpoints, type FailpointRule } from './infra/failpoints.js';

/**
 * The only reader of process.env (CONTRACT.md section 1). Everything is validated up
 * front so a bad setting stops the process before it connects anywhere.
 */

export type Env = Readonly<Record<string, string | undefined>>;

/** Invalid configuration: `message` is one line naming the variable and what is wrong. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'CONFIG_INVALID';
  constructor(
    readonly variable: string,
    problem: string,
  ) {
    super(`${variable}: ${problem}`.replace(/[\r\n]+/g, ' '));
  }
}

export const HOST_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface TlsFiles {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

/** What every command of the CLI needs to reach the bus. */
export interface BusConfig {
  readonly hostId: string;
  readonly amqpUrls: readonly string[];
  readonly tls: TlsFiles;
  readonly declareTopology: boolean;
}

export interface RetryConfig {
  /** Attempts after the first one before a retryable command is dead-lettered. */
  readonly limit: number;
  /** First backoff delay; doubles per attempt up to `maxDelayMs`. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/** How spans are sampled (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG). */
export interface SamplerConfig {
  readonly root: 'always_on' | 'always_off' | 'traceidratio';
  /** a span with a parent (the engine's traceparent) follows the parent's decision */
  readonly parentBased: boolean;
  /** for traceidratio, 0…1 */
  readonly ratio: number;
}

/**
 * OpenTelemetry tracing (README, Tracing). `endpoint` null: off, no SDK is created. Only
 * the standard OTEL_* variables are read; the SDK itself may still read its own tuning
 * knobs (span limits, OTEL_BSP_*) — those cannot change whether or where it exports.
 */
export interface TracingConfig {
  /** full OTLP/HTTP traces URL (…/v1/traces), or null when tracing is off */
  readonly endpoint: string | null;
  readonly serviceName: string;
  /** OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: sent with every export (e.g. an API key) */
  readonly headers: Readonly<Record<string, string>>;
  /** OTEL_RESOURCE_ATTRIBUTES */
  readonly resourceAttributes: Readonly<Record<string, string>>;
  readonly sampler: SamplerConfig;
}

export interface Config extends BusConfig {
  readonly libvirtUri: string;
  readonly storageRoot: string;
  readonly lvmActivation: 'dm' | 'loop';
  readonly isoDirs: readonly string[];
  readonly concurrency: number;
  /** deliveries held unacknowledged at once (AMQP prefetch); above `concurrency`, so that one blocked drive's backlog does not stop the others */
  readonly prefetch: number;
  /** the longest a delivery is held before it is settled one way or another; below the broker's consumer_timeout */
  readonly maxHoldMs: number;
  /** how often a standby worker tries to take over the host */
  readonly standbyPollMs: number;
  readonly httpPort: number;
  readonly logLevel: LogLevel;
  /** CDROM_FAILPOINT's items, in order (empty unless CDROM_ENABLE_FAILPOINTS=1) */
  readonly failpoints: readonly FailpointRule[];
  readonly retry: RetryConfig;
  /** Upper bound of one libvirt or storage step; the executor turns it into TIMEOUT. */
  readonly stepTimeoutMs: number;
  /** How long shutdown waits for commands in flight before closing the connection. */
  readonly drainTimeoutMs: number;
  /** background reconciliation period (recovery retries, orphan volumes); 0 turns it off */
  readonly reconcileIntervalMs: number;
  /**
   * Only domains whose name matches are recovered (all by default). For hosts shared by
   * several workers — test machines — so that one worker never "recovers" a change
   * another is in the middle of.
   */
  readonly domainFilter: RegExp | null;
  /**
   * Broker users allowed to send commands (CONTRACT.md section 3, v1.1): a command whose
   * AMQP user_id is missing or not listed is rejected UNAUTHORIZED_SENDER. null: no check.
   */
  readonly trustedSenders: readonly string[] | null;
  readonly tracing: TracingConfig;
}

function str(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function int(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = str(env, name);
  if (raw === undefined) return def;
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, `must be an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function flag(env: Env, name: string, def: boolean): boolean {
  const raw = str(env, name);
  if (raw === undefined) return def;
  if (raw === '1' || raw === 'true') return true;
  if (raw === '0' || raw === 'false') return false;
  throw new ConfigError(name, `must be 0 or 1, got ${JSON.stringify(raw)}`);
}

function absPath(name: string, value: string): string {
  if (!isAbsolute(value)) throw new ConfigError(name, `must be an absolute path, got ${JSON.stringify(value)}`);
  return value.replace(/(.)\/+$/, '$1');
}

function readPem(env: Env, name: string): Buffer | undefined {
  const path = str(env, name);
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(name, `cannot read ${JSON.stringify(path)} (${code})`);
  }
}

/** The short host name: an FQDN's dots are not allowed in a host id. */
function defaultHostId(): string {
  return hostname().split('.')[0] ?? '';
}

function parseAmqpUrls(env: Env): string[] {
  const name = 'CDROM_AMQP_URL';
  const raw = str(env, name) ?? 'amqp://guest:guest@127.0.0.1:5672';
  const urls = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (urls.length === 0) throw new ConfigError(name, 'is empty');
  for (const [i, u] of urls.entries()) {
    let parsed: URL;
    try {
      parsed = new URL(u);
    } catch {
      // The URL is not echoed: it may hold a password.
      throw new ConfigError(name, `entry ${i + 1} is not a valid URL`);
    }
    if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
      throw new ConfigError(name, `entry ${i + 1} must start with amqp:// or amqps://, got ${parsed.protocol}//`);
    }
    if (parsed.hostname === '') throw new ConfigError(name, `entry ${i + 1} has no host`);
  }
  return urls;
}

/** The bus part of the configuration: what `send`, `events` and `dlq` need. */
export function loadBusConfig(env: Env = process.env): BusConfig {
  const hostId = str(env, 'CDROM_HOST_ID') ?? defaultHostId();
  if (!HOST_ID_RE.test(hostId)) {
    throw new ConfigError('CDROM_HOST_ID', `must match [A-Za-z0-9_-]{1,64}, got ${JSON.stringify(hostId)}`);
  }
  const amqpUrls = parseAmqpUrls(env);
  const tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  const ca = readPem(env, 'CDROM_AMQP_CA');
  const cert = readPem(env, 'CDROM_AMQP_CERT');
  const key = readPem(env, 'CDROM_AMQP_KEY');
  if (ca) tls.ca = ca;
  if (cert) tls.cert = cert;
  if (key) tls.key = key;
  if ((cert === undefined) !== (key === undefined)) {
    throw new ConfigError(cert ? 'CDROM_AMQP_KEY' : 'CDROM_AMQP_CERT', 'a client certificate needs both CDROM_AMQP_CERT and CDROM_AMQP_KEY');
  }
  return Object.freeze({
    hostId,
    amqpUrls: Object.freeze(amqpUrls),
    tls: Object.freeze(tls),
    declareTopology: flag(env, 'CDROM_DECLARE_TOPOLOGY', true),
  });
}

/** The whole worker configuration, validated and frozen. Throws ConfigError. */
export function loadConfig(env: Env = process.env): Config {
  const bus = loadBusConfig(env);
  const storageRoot = absPath('CDROM_STORAGE_ROOT', str(env, 'CDROM_STORAGE_ROOT') ?? '/rhev/data-center');
  const lvm = str(env, 'CDROM_LVM_ACTIVATION') ?? 'dm';
  if (lvm !== 'dm' && lvm !== 'loop') throw new ConfigError('CDROM_LVM_ACTIVATION', `must be dm or loop, got ${JSON.stringify(lvm)}`);
  const isoRaw = str(env, 'CDROM_ISO_DIRS') ?? `${storageRoot}/mnt`;
  const isoDirs = isoRaw
    .split(':')
    .filter((s) => s !== '')
    .map((d) => absPath('CDROM_ISO_DIRS', d));
  if (isoDirs.length === 0) throw new ConfigError('CDROM_ISO_DIRS', 'names no directory');
  const libvirtUri = str(env, 'CDROM_LIBVIRT_URI') ?? 'qemu:///system';
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(libvirtUri)) {
    throw new ConfigError('CDROM_LIBVIRT_URI', `must be a libvirt URI like qemu:///system, got ${JSON.stringify(libvirtUri)}`);
  }
  const level = (str(env, 'CDROM_LOG_LEVEL') ?? 'info').toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new ConfigError('CDROM_LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`);
  }
  let failpoints: readonly FailpointRule[] = [];
  // Failpoints are parsed only when explicitly enabled, so a stray CDROM_FAILPOINT in a
  // production environment can neither crash the worker nor stop it from starting.
  if (flag(env, 'CDROM_ENABLE_FAILPOINTS', false)) {
    try {
      failpoints = Object.freeze(parseFailpoints(str(env, 'CDROM_FAILPOINT') ?? ''));
    } catch (err) {
      throw new ConfigError('CDROM_FAILPOINT', (err as Error).message);
    }
  }
  const baseDelayMs = int(env, 'CDROM_RETRY_BASE_MS', 1000, 1, 600_000);
  const retry: RetryConfig = Object.freeze({
    limit: int(env, 'CDROM_RETRY_LIMIT', 5, 0, 1000),
    baseDelayMs,
    maxDelayMs: Math.max(baseDelayMs, int(env, 'CDROM_RETRY_MAX_MS', 30_000, 1, 3_600_000)),
  });
  const concurrency = int(env, 'CDROM_CONCURRENCY', 16, 1, 10_000);
  const prefetch = int(env, 'CDROM_PREFETCH', Math.min(65_535, 4 * concurrency), 1, 65_535);
  if (prefetch < concurrency) throw new ConfigError('CDROM_PREFETCH', `must be at least CDROM_CONCURRENCY (${concurrency}), got ${prefetch}`);
  return Object.freeze({
    ...bus,
    libvirtUri,
    storageRoot,
    lvmActivation: lvm,
    isoDirs: Object.freeze(isoDirs),
    concurrency,
    prefetch,
    // RabbitMQ's default consumer_timeout is 30 min: stay 5 min below it.
    maxHoldMs: int(env, 'CDROM_MAX_HOLD_MS', 25 * 60_000, 1000, 86_400_000),
    standbyPollMs: int(env, 'CDROM_STANDBY_POLL_MS', 2000, 50, 60_000),
    httpPort: int(env, 'CDROM_HTTP_PORT', 9464, 0, 65_535),
    logLevel: level as LogLevel,
    failpoints,
    retry,
    stepTimeoutMs: int(env, 'CDROM_STEP_TIMEOUT_MS', 60_000, 1, 3_600_000),
    drainTimeoutMs: int(env, 'CDROM_DRAIN_TIMEOUT_MS', 30_000, 0, 3_600_000),
    reconcileIntervalMs: int(env, 'CDROM_RECONCILE_INTERVAL_MS', 60_000, 0, 86_400_000),
    domainFilter: regex(env, 'CDROM_DOMAIN_FILTER'),
    trustedSenders: trustedSenders(env),
    tracing: tracingConfig(env),
  });
}

const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;

/** `k=v,k2=v2` with percent-encoded values (the OTel spec's format for headers and resource attributes). */
function keyValues(env: Env, name: string): Record<string, string> {
  const raw = str(env, name);
  const out: Record<string, string> = {};
  if (raw === undefined) return out;
  for (const [i, item] of raw.split(',').entries()) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? '' : item.slice(0, eq).trim();
    if (key === '') throw new ConfigError(name, `entry ${i + 1} is not key=value`);
    try {
      out[key] = decodeURIComponent(item.slice(eq + 1).trim());
    } catch {
      throw new ConfigError(name, `entry ${i + 1} (${key}) has an invalid percent-encoding`);
    }
  }
  return out;
}

function otlpUrl(name: string, value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(name, `is not a valid URL, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(name, `must be an http:// or https:// URL, got ${url.protocol}//`);
  return url.toString();
}

/**
 * The standard OTEL_* variables. Tracing is on only when an OTLP endpoint is named: a
 * worker without one creates no SDK at all. The signal's own endpoint is used as given;
 * the generic one gets `v1/traces` appended, as the OTLP exporter spec says.
 */
function tracingConfig(env: Env): TracingConfig {
  const tracesEndpoint = str(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const baseEndpoint = str(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  let endpoint: string | null = null;
  if (tracesEndpoint !== undefined) endpoint = otlpUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', tracesEndpoint);
  else if (baseEndpoint !== undefined) endpoint = otlpUrl('OTEL_EXPORTER_OTLP_ENDPOINT', `${baseEndpoint.replace(/\/+$/, '')}/v1/traces`);
  if (flag(env, 'OTEL_SDK_DISABLED', false) || str(env, 'OTEL_TRACES_EXPORTER') === 'none') endpoint = null;
  for (const name of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
    const protocol = str(env, name);
    // The exporter shipped is OTLP/HTTP (it sends JSON, which every OTLP/HTTP receiver
    // accepts beside protobuf); a gRPC endpoint would refuse every export, silently.
    if (protocol !== undefined && protocol !== 'http/json' && protocol !== 'http/protobuf') {
      throw new ConfigError(name, `must be http/json or http/protobuf (only OTLP over HTTP is supported), got ${JSON.stringify(protocol)}`);
    }
  }
  const samplerName = (str(env, 'OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on').toLowerCase();
  if (!(SAMPLERS as readonly string[]).includes(samplerName)) {
    throw new ConfigError('OTEL_TRACES_SAMPLER', `must be one of ${SAMPLERS.join(', ')}, got ${JSON.stringify(samplerName)}`);
  }
  let ratio = 1;
  const arg = str(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (samplerName.endsWith('traceidratio') && arg !== undefined) {
    ratio = Number(arg);
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new ConfigError('OTEL_TRACES_SAMPLER_ARG', `must be a number between 0 and 1, got ${JSON.stringify(arg)}`);
  }
  const parentBased = samplerName.startsWith('parentbased_');
  const root = (parentBased ? samplerName.slice('parentbased_'.length) : samplerName) as SamplerConfig['root'];
  return Object.freeze({
    endpoint,
    serviceName: str(env, 'OTEL_SERVICE_NAME') ?? 'cdrom-worker',
    headers: Object.freeze({ ...keyValues(env, 'OTEL_EXPORTER_OTLP_HEADERS'), ...keyValues(env, 'OTEL_EXPORTER_OTLP_TRACES_HEADERS') }),
    resourceAttributes: Object.freeze(keyValues(env, 'OTEL_RESOURCE_ATTRIBUTES')),
    sampler: Object.freeze({ root, parentBased, ratio }),
  });
}

/**
 * CDROM_TRUSTED_SENDERS: comma-separated broker user names, spaces around the commas
 * allowed. Unset means no check. Set but empty is refused rather than read as "unset":
 * for a security setting, a value that got lost on the way (`VAR=` in an env file) must
 * not quietly turn the check off.
 */
function trustedSenders(env: Env): readonly string[] | null {
  const name = 'CDROM_TRUSTED_SENDERS';
  const raw = env[name];
  if (raw === undefined) return null;
  if (raw.trim() === '') throw new ConfigError(name, 'is set but names no user; unset it to accept commands from any sender');
  const names = raw.split(',').map((s) => s.trim());
  for (const [i, n] of names.entries()) {
    if (n === '') throw new ConfigError(name, `entry ${i + 1} is empty`);
    // A user name with whitespace inside is far more likely a missing comma than a real user.
    if (/\s/.test(n)) throw new ConfigError(name, `entry ${i + 1} (${JSON.stringify(n)}) contains whitespace; separate names with commas`);
  }
  return Object.freeze([...new Set(names)]);
}

function regex(env: Env, name: string): RegExp | null {
  const raw = str(env, name);
  if (raw === undefined) return null;
  try {
    return new RegExp(raw);
  } catch (err) {
    throw new ConfigError(name, `is not a valid regular expression: ${(err as Error).message}`);
  }
}

export function isConfigError(err: unknown): err is ConfigError {
  return err instanceof ConfigError || (err instanceof Error && err.name === 'ConfigError');
}
