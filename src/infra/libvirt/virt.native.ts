import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Typed view of the project's own libvirt addon (native/, built to
 * build/Release/virt.node by `npm ci`). Every method returning a Promise runs its
 * libvirt call on the addon's own thread pool (never the libuv pool: a hung call must not
 * starve fs or dns); rejections are `VirtNativeError`s carrying libvirt's `code`
 * (virErrorNumber), `domain` (virErrorDomain) and message.
 */

export interface VirtNativeError extends Error {
  readonly code: number;
  readonly domain: number;
  readonly level: number;
  readonly libvirt: true;
}

export function isVirtNativeError(err: unknown): err is VirtNativeError {
  return err instanceof Error && (err as { libvirt?: unknown }).libvirt === true && typeof (err as { code?: unknown }).code === 'number';
}

export interface DomainSummary {
  readonly name: string;
  readonly uuid: string;
  /** -1 when inactive */
  readonly id: number;
  readonly active: boolean;
  readonly persistent: boolean;
}

export interface BlockInfo {
  readonly capacity: number;
  readonly allocation: number;
  readonly physical: number;
}

/** virDomainGetControlInfo: the state of the domain's monitor and job. */
export interface ControlInfo {
  /** VIR_DOMAIN_CONTROL_OK / JOB / OCCUPIED / ERROR */
  readonly state: number;
  /** for ERROR: a VIR_DOMAIN_CONTROL_ERROR_REASON_* */
  readonly details: number;
  /** milliseconds spent in the current state (JOB, OCCUPIED), else 0 */
  readonly stateTime: number;
}

export interface NativeDomain {
  readonly name: string;
  readonly uuid: string;
  xmlDesc(flags?: number): Promise<string>;
  isActive(): Promise<boolean>;
  isPersistent(): Promise<boolean>;
  updateDeviceFlags(xml: string, flags: number): Promise<void>;
  getMetadata(type: number, uri: string | null, flags: number): Promise<string>;
  /** `metadata` null removes the element of `uri`. `key` is the namespace prefix. */
  setMetadata(type: number, metadata: string | null, key: string | null, uri: string | null, flags: number): Promise<void>;
  create(flags?: number): Promise<void>;
  destroy(): Promise<void>;
  undefine(flags?: number): Promise<void>;
  getBlockInfo(disk: string): Promise<BlockInfo>;
  /**
   * Answered without taking the domain's job, so it works while another call on the
   * domain hangs. QEMU driver (libvirt 9): OK — no job at all (any client's job counts,
   * not only ours); OCCUPIED — a job is in QEMU's monitor waiting for an answer
   * (`stateTime` since it entered); JOB — an async job (migration, save…); ERROR with
   * details MONITOR — the monitor failed; ERROR with details INTERNAL — a job is active
   * outside the monitor, which libvirt calls a bug but also reports while a job waits,
   * domain unlocked, for a QEMU event (a CD-ROM change waiting for the tray to open).
   * Only OK says the job is over. Rejects (VIR_ERR_OPERATION_INVALID) when the domain is
   * not running.
   */
  getControlInfo(): Promise<ControlInfo>;
}

export type NativeEvent =
  | { readonly kind: 'close'; readonly event: number; readonly detail: number }
  | { readonly kind: 'lifecycle'; readonly uuid: string; readonly name: string; readonly event: number; readonly detail: number }
  | { readonly kind: 'tray-change'; readonly uuid: string; readonly name: string; readonly device: string; readonly reason: number }
  | { readonly kind: 'device-removed'; readonly uuid: string; readonly name: string; readonly device: string }
  | { readonly kind: 'metadata-change'; readonly uuid: string; readonly name: string; readonly type: number; readonly nsUri: string | null };

export interface NativeConnection {
  close(): Promise<void>;
  /** Local state only: false once the socket failed or keepalive timed out. */
  isAlive(): boolean;
  setKeepAlive(intervalSec: number, count: number): Promise<void>;
  listAllDomains(flags?: number): Promise<DomainSummary[]>;
  lookupByUUIDString(uuid: string): Promise<NativeDomain>;
  lookupByName(name: string): Promise<NativeDomain>;
  defineXML(xml: string): Promise<NativeDomain>;
  createXML(xml: string, flags?: number): Promise<NativeDomain>;
  /** Idempotent; events arrive at the listener given to `open`. */
  registerDomainEvents(): Promise<void>;
  deregisterDomainEvents(): Promise<void>;
}

export interface VirtConstants {
  readonly VIR_DOMAIN_XML_SECURE: number;
  readonly VIR_DOMAIN_XML_INACTIVE: number;
  readonly VIR_DOMAIN_AFFECT_CURRENT: number;
  readonly VIR_DOMAIN_AFFECT_LIVE: number;
  readonly VIR_DOMAIN_AFFECT_CONFIG: number;
  readonly VIR_DOMAIN_DEVICE_MODIFY_FORCE: number;
  readonly VIR_DOMAIN_METADATA_ELEMENT: number;
  readonly VIR_DOMAIN_NONE: number;
  readonly VIR_DOMAIN_START_PAUSED: number;
  readonly VIR_DOMAIN_UNDEFINE_NVRAM: number;
  readonly VIR_DOMAIN_EVENT_DEFINED: number;
  readonly VIR_DOMAIN_EVENT_UNDEFINED: number;
  readonly VIR_DOMAIN_EVENT_STARTED: number;
  readonly VIR_DOMAIN_EVENT_SUSPENDED: number;
  readonly VIR_DOMAIN_EVENT_RESUMED: number;
  readonly VIR_DOMAIN_EVENT_STOPPED: number;
  readonly VIR_DOMAIN_EVENT_SHUTDOWN: number;
  readonly VIR_DOMAIN_EVENT_CRASHED: number;
  readonly VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN: number;
  readonly VIR_DOMAIN_EVENT_TRAY_CHANGE_CLOSE: number;
  readonly VIR_CONNECT_CLOSE_REASON_CLIENT: number;
  readonly VIR_CONNECT_CLOSE_REASON_EOF: number;
  readonly VIR_ERR_INTERNAL_ERROR: number;
  readonly VIR_ERR_NO_CONNECT: number;
  readonly VIR_ERR_INVALID_CONN: number;
  readonly VIR_ERR_SYSTEM_ERROR: number;
  readonly VIR_ERR_RPC: number;
  readonly VIR_ERR_NO_DOMAIN: number;
  readonly VIR_ERR_INVALID_DOMAIN: number;
  readonly VIR_ERR_OPERATION_FAILED: number;
  readonly VIR_ERR_OPERATION_INVALID: number;
  readonly VIR_ERR_OPERATION_TIMEOUT: number;
  readonly VIR_ERR_OPERATION_UNSUPPORTED: number;
  readonly VIR_ERR_OPERATION_ABORTED: number;
  readonly VIR_ERR_XML_ERROR: number;
  readonly VIR_ERR_XML_DETAIL: number;
  readonly VIR_ERR_CONFIG_UNSUPPORTED: number;
  readonly VIR_ERR_INVALID_ARG: number;
  readonly VIR_ERR_NO_DOMAIN_METADATA: number;
  readonly VIR_ERR_NO_SOURCE: number;
  readonly VIR_ERR_NO_SUPPORT: number;
  readonly VIR_ERR_DEVICE_MISSING: number;
  readonly VIR_ERR_AGENT_UNRESPONSIVE: number;
  readonly VIR_ERR_AUTH_FAILED: number;
  readonly VIR_ERR_AUTH_UNAVAILABLE: number;
  readonly VIR_ERR_AUTH_CANCELLED: number;
  readonly VIR_FROM_RPC: number;
  readonly VIR_FROM_REMOTE: number;
  readonly VIR_FROM_QEMU: number;
  readonly VIR_DOMAIN_CONTROL_OK: number;
  readonly VIR_DOMAIN_CONTROL_JOB: number;
  readonly VIR_DOMAIN_CONTROL_OCCUPIED: number;
  readonly VIR_DOMAIN_CONTROL_ERROR: number;
  readonly VIR_DOMAIN_CONTROL_ERROR_REASON_NONE: number;
  readonly VIR_DOMAIN_CONTROL_ERROR_REASON_UNKNOWN: number;
  readonly VIR_DOMAIN_CONTROL_ERROR_REASON_MONITOR: number;
  readonly VIR_DOMAIN_CONTROL_ERROR_REASON_INTERNAL: number;
  readonly HAS_METADATA_CHANGE_EVENT: number;
}

/** The addon's thread pool, process-wide (worker_threads share it). */
export interface ExecutorStats {
  /** threads alive: busy + idle */
  readonly threads: number;
  /** running a call (a hung call keeps its thread busy) */
  readonly busy: number;
  readonly idle: number;
  /** calls waiting for a thread (only when `threads` is at `maxThreads`) */
  readonly queued: number;
}

export interface ExecutorOptions {
  /** Hard cap on threads; past it calls wait in FIFO order. Default 64. */
  readonly maxThreads?: number;
  /** An idle thread retires after this long. Default 10,000. */
  readonly idleTimeoutMs?: number;
}

/** Live native objects, process-wide; for leak tests. */
export interface DebugCounts {
  /** calls started and not yet settled */
  readonly calls: number;
  /** per-connection callback contexts (freed once libvirt can no longer call them) */
  readonly contexts: number;
  /** thread-safe functions Node has not finalized yet (one per env for results, one per live connection) */
  readonly tsfns: number;
  /** Connection objects not yet garbage-collected */
  readonly connections: number;
  /** Domain objects not yet garbage-collected */
  readonly domains: number;
}

/**
 * Test-only failpoints, each a real libvirt failure made on purpose:
 * `listAllDomains.isActive` — the next N domain queries of listAllDomains fail
 * (VIR_ERR_INVALID_DOMAIN); `registerDomainEvents` — the next registerDomainEvents has its
 * K-th (0-based) registration refused (VIR_ERR_INVALID_ARG); -1 clears it.
 */
export type DebugFailpoint = 'listAllDomains.isActive' | 'registerDomainEvents';

export interface VirtBinding {
  /**
   * Opens `uri` with keepalive (interval 0 disables it) and a close callback. The
   * listener gets close and (after registerDomainEvents) domain events; it never keeps
   * the process alive by itself.
   */
  open(uri: string, listener: (event: NativeEvent) => void, keepAliveIntervalSec?: number, keepAliveCount?: number): Promise<NativeConnection>;
  /** libvirt library version, major * 1,000,000 + minor * 1,000 + release */
  libVersion(): number;
  /** Changes the executor's settings (omitted ones stay); returns those now in force. */
  configureExecutor(options?: ExecutorOptions): Required<ExecutorOptions>;
  executorStats(): ExecutorStats;
  debugCounts(): DebugCounts;
  debugFailpoint(name: DebugFailpoint, value: number): void;
  readonly constants: VirtConstants;
}

/** The addon's path: the repo's build/Release, found from src/ and from dist/ alike. */
function addonPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'build', 'Release', 'virt.node');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('build/Release/virt.node not found: run `npm ci` (or `npx node-gyp rebuild`) to build the libvirt addon');
}

let loaded: unknown;

/**
 * The addon module, loaded on first use, so modules importing this one work without it.
 * Each typed view declares its own part of it: this file the libvirt API,
 * storage/loop.native.ts the loop ioctls and the holder scan, storage/direct-read.native.ts
 * the O_DIRECT reads.
 */
export function loadAddon(): unknown {
  if (loaded === undefined) {
    const require = createRequire(import.meta.url);
    loaded = require(addonPath());
  }
  return loaded;
}

export function loadVirt(): VirtBinding {
  return loadAddon() as VirtBinding;
}
