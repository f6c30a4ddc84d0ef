import type { Media } from '../media.js';
import type { ChangeAction, ChangeResult } from '../outcome.js';
import { JOURNAL_NS } from '../ports.js';
import { escapeXml, unescapeXml } from './xml-tree.js';

/**
 * The command journal: which commands this drive has seen, kept in the domain's own
 * metadata (namespace JOURNAL_NS) so that it lives and dies with the VM and survives a
 * worker restart. It is what makes a redelivered or re-sent command answer with the
 * first outcome instead of changing the drive again.
 *
 * - `pending`: written before the flow's first change; says what the command set out to
 *   do, so a redelivery after a crash reports the same action and previous media. It also
 *   names the worker run that wrote it: a later run that finds it knows that run died (or
 *   stopped) while running the command, which is how poison messages are counted
 *   (CONTRACT §9) without blaming the commands that merely were in flight beside it.
 * - `done`: written before the flow's final metadata write; holds the result and the
 *   times of the first event, so a repeat is answered with an identical one.
 */

/** Done records kept per drive (beyond those still pinned); the contract asks for at least 8. */
export const JOURNAL_DEPTH = 10;

export interface PendingRecord {
  readonly status: 'pending';
  readonly commandId: string;
  readonly drive: string;
  readonly action: ChangeAction;
  readonly previous: Media | null;
  readonly requested: Media | null;
  readonly startedAt: string;
  /** the worker run (process) that last started executing it */
  readonly run?: string;
  /** earlier runs that ended while it was pending: each died, or stopped, while running it */
  readonly deaths?: number;
}

export interface DoneRecord {
  readonly status: 'done';
  readonly commandId: string;
  readonly drive: string;
  readonly result: ChangeResult;
  readonly startedAt: string;
  /** when the result was recorded: the `finishedAt` of every event for this command */
  readonly finishedAt?: string;
}

export type JournalRecord = PendingRecord | DoneRecord;

const RECORD_RE = /<(?:[\w.-]+:)?command\b([^>]*)>([A-Za-z0-9_=-]*)<\/(?:[\w.-]+:)?command>/g;
const ATTR_RE = /([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;

/**
 * One record as kept in memory: what `find` and the bounding need (its attributes) and
 * its element as written; the JSON payload is decoded only when the record is asked for.
 */
interface Entry {
  /** commandId, lower case */
  readonly id: string;
  readonly drive: string;
  readonly status: JournalRecord['status'];
  /** the record's element, as read or written */
  readonly xml: string;
  /** base64url JSON */
  readonly payload: string;
}

function entryOf(r: JournalRecord): Entry {
  const p = JOURNAL_NS.prefix;
  const payload = Buffer.from(JSON.stringify(r), 'utf8').toString('base64url');
  const xml = `<${p}:command id="${escapeXml(r.commandId)}" drive="${escapeXml(r.drive)}" status="${r.status}">${payload}</${p}:command>`;
  return { id: r.commandId.toLowerCase(), drive: r.drive, status: r.status, xml, payload };
}

function decode(e: Entry): JournalRecord | undefined {
  try {
    const rec = JSON.parse(Buffer.from(e.payload, 'base64url').toString('utf8')) as JournalRecord;
    // A damaged record only costs the idempotency of that command.
    return typeof rec === 'object' && rec !== null && typeof rec.commandId === 'string' && rec.drive === e.drive && rec.status === e.status ? rec : undefined;
  } catch {
    return undefined;
  }
}

export class Journal {
  private xml: string | undefined;

  private constructor(private readonly entries: readonly Entry[]) {}

  /**
   * Each record is base64url JSON, so nothing in it needs XML escaping and reading it
   * back needs no XML parser: libvirt re-serialises the element, but never the payload.
   * Only the records' attributes are read here; a payload is decoded when asked for.
   */
  static parse(xml: string | null): Journal {
    if (xml === null || xml.trim() === '') return new Journal([]);
    const entries: Entry[] = [];
    for (const m of xml.matchAll(RECORD_RE)) {
      const attrs = new Map<string, string>();
      for (const a of (m[1] ?? '').matchAll(ATTR_RE)) attrs.set(a[1] as string, a[2] ?? a[3] ?? '');
      const id = attrs.get('id');
      const drive = attrs.get('drive');
      const status = attrs.get('status');
      if (id === undefined || drive === undefined || (status !== 'pending' && status !== 'done')) continue;
      entries.push({ id: unescapeXml(id).toLowerCase(), drive: unescapeXml(drive), status, xml: m[0], payload: m[2] ?? '' });
    }
    const journal = new Journal(entries);
    journal.xml = xml;
    return journal;
  }

  /** Written as a string: base64url payloads and UUID/drive attributes need no tree. */
  toXml(): string {
    if (this.xml !== undefined) return this.xml;
    const p = JOURNAL_NS.prefix;
    const open = `<${p}:${JOURNAL_NS.key} xmlns:${p}="${JOURNAL_NS.uri}"`;
    const xml = this.entries.length === 0 ? `${open}/>` : `${open}>${this.entries.map((e) => e.xml).join('')}</${p}:${JOURNAL_NS.key}>`;
    this.xml = xml;
    return xml;
  }

  find(drive: string, commandId: string): JournalRecord | undefined {
    const id = commandId.toLowerCase();
    const e = this.entries.find((x) => x.drive === drive && x.id === id);
    return e === undefined ? undefined : decode(e);
  }

  /** Replaces any record of the same command; older pending records of the drive go. */
  withPending(rec: Omit<PendingRecord, 'status'>): Journal {
    const id = rec.commandId.toLowerCase();
    const rest = this.entries.filter((e) => !(e.drive === rec.drive && (e.status === 'pending' || e.id === id)));
    return new Journal([...rest, entryOf({ status: 'pending', ...rec })]);
  }

  /**
   * Replaces the command's pending record; the drive keeps its last JOURNAL_DEPTH done
   * ones, and beyond them every record `pinned` names (lower-case commandIds): those of
   * commands the broker may still redeliver, whose repeat must be answered from here
   * however many commands of the drive finished since.
   */
  withDone(rec: Omit<DoneRecord, 'status'>, pinned?: (commandId: string) => boolean): Journal {
    const id = rec.commandId.toLowerCase();
    const rest = this.entries.filter((e) => !(e.drive === rec.drive && e.id === id));
    const mine = rest.filter((e) => e.drive === rec.drive && e.status === 'done');
    const older = mine.slice(0, Math.max(0, mine.length - (JOURNAL_DEPTH - 1)));
    const drop = new Set(older.filter((e) => pinned?.(e.id) !== true));
    return new Journal([...rest.filter((e) => !drop.has(e)), entryOf({ status: 'done', ...rec })]);
  }

  /** Forgets the command's pending record (a poison message given up: a replay starts afresh). */
  withoutPending(drive: string, commandId: string): Journal {
    const id = commandId.toLowerCase();
    const rest = this.entries.filter((e) => !(e.drive === drive && e.id === id && e.status === 'pending'));
    return rest.length === this.entries.length ? this : new Journal(rest);
  }

  get size(): number {
    return this.entries.length;
  }
}
