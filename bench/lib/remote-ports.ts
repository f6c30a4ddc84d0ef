import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CdromError, type ErrorInfo } from '../../src/domain/errors.js';
import type { Media, Pdiv } from '../../src/domain/media.js';
import type { DomainRef, DriveSource, HypervisorPort, MetadataNamespace, PreparedVolume, StoragePort, TeardownResult, VolumeActivation } from '../../src/domain/ports.js';

/**
 * The fake hypervisor and fake storage in another process (bench/lib/fake-host.ts), the
 * way libvirtd and LVM hold their state outside the worker in production: the memory
 * bench then measures the worker's process alone. Each port call is one request over the
 * IPC channel, with an id; its answer resolves the matching promise, and an error comes
 * back as its code, message and `retryable`, rebuilt here as the `CdromError` the fake
 * threw, so the machine's retries and failures are those of the in-process fakes.
 *
 * Only what the activities call is forwarded; the reconciler's methods throw.
 */

/** What the host process holds and how much memory that takes. */
export interface HostMemory {
  readonly rss: number;
  readonly heapUsed: number;
  readonly heapTotal: number;
  /** the host process's RSS high-water mark, bytes */
  readonly maxRss: number;
  readonly vms: number;
}

export interface HostSetup {
  readonly vmIds: readonly string[];
  /** every VM's metadata elements at start, by namespace URI */
  readonly metadata: Readonly<Record<string, string>>;
  readonly volumes: readonly Pdiv[];
}

/** Requests, by operation: the arguments and what the answer carries. */
export interface HostOps {
  setup: { args: HostSetup; value: number };
  readDrive: { args: { vmId: string; drive: string }; value: DriveSource | null };
  updateDevice: { args: { vmId: string; drive: string; source: DriveSource | null }; value: null };
  getMetadata: { args: { vmId: string; ns: MetadataNamespace }; value: string | null };
  setMetadata: { args: { vmId: string; ns: MetadataNamespace; xml: string | null }; value: null };
  prepareVolume: { args: { media: Media }; value: PreparedVolume };
  teardownVolume: { args: { media: Media }; value: TeardownResult };
  volumeActivation: { args: { media: Media }; value: VolumeActivation };
  /** after a full GC; with `dropVms` the fake first forgets every VM */
  memory: { args: { dropVms: boolean }; value: HostMemory };
}

export type HostOp = keyof HostOps;
export type HostRequest = { [K in HostOp]: { readonly id: number; readonly op: K; readonly args: HostOps[K]['args'] } }[HostOp];
export type HostReply = { readonly id: number; readonly ok: true; readonly value: HostOps[HostOp]['value'] } | { readonly id: number; readonly ok: false; readonly error: ErrorInfo };

interface Waiter {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

const notSupported = (what: string): Error => new Error(`${what} is not supported in the memory bench (only what the activities call is forwarded)`);

/**
 * The host process and its two ports. `start()` forks it; `close()` kills it and waits
 * for its exit. A process `exit` handler kills it too, so a section that dies without
 * reaching `close()` (an uncaught error, `process.exit` on a signal) leaves no orphan;
 * the host also exits on its own when its IPC channel closes.
 */
export class RemoteHost {
  readonly hypervisor: HypervisorPort;
  readonly storage: StoragePort;
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private gone: CdromError | null = null;
  private readonly exited: Promise<void>;
  private readonly killOnExit = (): void => {
    this.child.kill('SIGKILL');
  };

  private constructor(private readonly child: ChildProcess) {
    process.on('exit', this.killOnExit);
    child.on('message', (m) => this.answer(m as HostReply));
    this.exited = new Promise<void>((done) => {
      child.on('exit', (code, signal) => {
        this.fail(`the fake host exited (${signal ?? `code ${code}`})`);
        done();
      });
    });
    child.on('error', (err) => this.fail(`the fake host failed: ${err.message}`));
    this.hypervisor = remoteHypervisor(this);
    this.storage = remoteStorage(this);
  }

  static async start(setup: HostSetup): Promise<RemoteHost> {
    // Compiled (.bench-dist) the host is a .js next to this file; under tsx it is the .ts.
    const ts = import.meta.url.endsWith('.ts');
    const script = fileURLToPath(new URL(`./fake-host.${ts ? 'ts' : 'js'}`, import.meta.url));
    const child = fork(script, [], { execArgv: ['--expose-gc', ...(ts ? ['--import', 'tsx'] : [])], serialization: 'json', stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const host = new RemoteHost(child);
    try {
      await host.call('setup', setup);
    } catch (err) {
      await host.close();
      throw err;
    }
    return host;
  }

  call<K extends HostOp>(op: K, args: HostOps[K]['args']): Promise<HostOps[K]['value']> {
    if (this.gone !== null) return Promise.reject(this.gone);
    const id = this.nextId++;
    return new Promise<HostOps[K]['value']>((resolve, reject) => {
      this.waiters.set(id, { resolve, reject });
      this.child.send({ id, op, args }, (err) => {
        if (err === null) return;
        this.waiters.delete(id);
        reject(new CdromError('INTERNAL', `cannot reach the fake host: ${err.message}`, { retryable: false }));
      });
    });
  }

  /** Kills the host and waits for it; idempotent. */
  async close(): Promise<void> {
    process.off('exit', this.killOnExit);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }

  private answer(m: HostReply): void {
    const w = this.waiters.get(m.id);
    if (w === undefined) return;
    this.waiters.delete(m.id);
    if (m.ok) w.resolve(m.value);
    else w.reject(new CdromError(m.error.code, m.error.message, { retryable: m.error.retryable }));
  }

  private fail(why: string): void {
    this.gone ??= new CdromError('INTERNAL', why, { retryable: false });
    for (const w of this.waiters.values()) w.reject(this.gone);
    this.waiters.clear();
  }
}

function remoteHypervisor(host: RemoteHost): HypervisorPort {
  return {
    readDrive: (vmId, drive) => host.call('readDrive', { vmId, drive }),
    updateDevice: async (vmId, drive, source) => {
      await host.call('updateDevice', { vmId, drive, source });
    },
    getMetadata: (vmId, ns) => host.call('getMetadata', { vmId, ns }),
    setMetadata: async (vmId, ns, xml) => {
      await host.call('setMetadata', { vmId, ns, xml });
    },
    listCdroms: (): Promise<string[]> => Promise.reject(notSupported('HypervisorPort.listCdroms')),
    listDomains: (): Promise<DomainRef[]> => Promise.reject(notSupported('HypervisorPort.listDomains')),
    onEvent: (): (() => void) => {
      throw notSupported('HypervisorPort.onEvent');
    },
  };
}

function remoteStorage(host: RemoteHost): StoragePort {
  return {
    prepareVolume: (media) => host.call('prepareVolume', { media }),
    teardownVolume: (media) => host.call('teardownVolume', { media }),
    volumeActivation: (media) => host.call('volumeActivation', { media }),
    listActiveVolumes: (): Promise<Pdiv[]> => Promise.reject(notSupported('StoragePort.listActiveVolumes')),
  };
}
