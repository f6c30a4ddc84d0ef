import type { Pdiv, Media } from './media.js';

/**
 * Ports: what the CD-ROM machine needs from the world. Real adapters live in src/infra,
 * small stateful fakes in test/fakes. Every method throws `CdromError` only.
 */

export type DiskType = 'block' | 'file';

/** What the drive holds as libvirt reports it now; `null` is an empty tray. */
export interface DriveSource {
  readonly type: DiskType;
  readonly path: string;
}

export interface DomainRef {
  readonly vmId: string;
  readonly name: string;
  readonly active: boolean;
}

/** The metadata namespaces this worker reads and writes. */
export const OVIRT_VM_NS = { uri: 'http://ovirt.org/vm/1.0', prefix: 'ovirt-vm', key: 'vm' } as const;
export const JOURNAL_NS = { uri: 'http://ovirt.org/cdrom-worker/1.0', prefix: 'cdrom', key: 'journal' } as const;

export interface MetadataNamespace {
  readonly uri: string;
  readonly prefix: string;
  /** local name of the root element */
  readonly key: string;
}

export type DomainEvent =
  | { readonly kind: 'lifecycle'; readonly vmId: string; readonly event: 'started' | 'resumed' | 'stopped' | 'defined' | 'undefined' | 'other' }
  | { readonly kind: 'tray-change'; readonly vmId: string; readonly device: string; readonly open: boolean }
  | { readonly kind: 'metadata-change'; readonly vmId: string; readonly nsUri: string | null }
  /** the hypervisor connection came back after a loss: events may have been missed */
  | { readonly kind: 'reconnected' };

export interface HypervisorPort {
  /** The drive's current source. Throws VM_NOT_FOUND, DRIVE_NOT_FOUND. */
  readDrive(vmId: string, drive: string): Promise<DriveSource | null>;
  /** The CD-ROM drives of a domain (target dev names, e.g. `sdc`). */
  listCdroms(vmId: string): Promise<string[]>;
  /**
   * Put `source` into the drive (null ejects), live, and in the persistent config when
   * the domain is persistent. Throws CHANGE_FAILED (refused), VM_NOT_FOUND,
   * DRIVE_NOT_FOUND, or a retryable error when libvirt is unreachable.
   */
  updateDevice(vmId: string, drive: string, source: DriveSource | null): Promise<void>;
  /**
   * The metadata element of namespace `ns`, as an XML string with the namespace
   * prefix `ns.prefix` declared on its root, or null when the domain has none.
   */
  getMetadata(vmId: string, ns: MetadataNamespace): Promise<string | null>;
  /** Replace (or with null remove) the metadata element of `ns`. */
  setMetadata(vmId: string, ns: MetadataNamespace, xml: string | null): Promise<void>;
  /** Every domain this hypervisor knows, running or not. */
  listDomains(): Promise<DomainRef[]>;
  /** Subscribe to domain events; returns the unsubscribe function. */
  onEvent?(listener: (event: DomainEvent) => void): () => void;
}

export interface PreparedVolume {
  /** What the VM's `<source>` names: the link for block volumes, the file for file ones. */
  readonly path: string;
  readonly diskType: DiskType;
}

export type TeardownResult = 'done' | 'in-use';

export type VolumeActivation = 'active' | 'inactive';

export interface StoragePort {
  /**
   * Make the volume usable by a VM: activate the LV and make the link (block), or
   * check the file (file domain), or check the legacy path. Idempotent.
   * Throws VOLUME_NOT_FOUND, PATH_NOT_ALLOWED, PREPARE_FAILED, TIMEOUT.
   */
  prepareVolume(media: Media): Promise<PreparedVolume>;
  /**
   * Undo prepareVolume. Idempotent (an inactive volume is `done`). A device held open
   * by someone else is `in-use`, not an error. Throws TEARDOWN_FAILED, TIMEOUT.
   */
  teardownVolume(media: Media): Promise<TeardownResult>;
  /** Whether the volume is active on this host now (file volumes are always `inactive`). */
  volumeActivation(media: Media): Promise<VolumeActivation>;
  /** Block volumes this worker activated and has not torn down (for orphan reconciliation). */
  listActiveVolumes(): Promise<Pdiv[]>;
}
