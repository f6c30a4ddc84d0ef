import type { Media } from '../media.js';
import type { ChangeAction, ChangeResult } from '../outcome.js';
import { JOURNAL_NS } from '../ports.js';
import { escapeXml } from './xml-tree.js';

/**
 * The command journal: which commands this drive has seen, kept in the domain's own
 * metadata (namespace JOURNAL_NS) so that it lives and dies with the VM and survives a
 * worker restart. It is what makes a redelivered or re-sent command answer with the
 * first outcome instead of changing the drive again.
 *
 * - `pending`: written before the flow's first change; says what the command set out to
 *   do, so a redelivery after a crash reports the same action and previous media.
 * - `done`: written before the flow's final metadata write; holds the result.
 */

/** Done records kept per drive; the contract asks for at least 8. */
export const JOURNAL_DEPTH = 10;

export interface PendingRecord {
  readonly status: 'pending';
  readonly commandId: string;
  readonly drive: string;
  readonly action: ChangeAction;
  readonly previous: Media | null;
  readonly requested: Media | null;
  readonly startedAt: string;
}

export interface DoneRecord {
  readonly status: 'done';
  readonly commandId: string;
  readonly drive: string;
  readonly result: ChangeResult;
  readonly startedAt: string;
}

export type JournalRecord = PendingRecord | DoneRecord;

const RECORD_RE = /<(?:[\w.-]+:)?command\b[^>]*>([A-Za-z0-9_=-]*)<\/(?:[\w.-]+:)?command>/g;

/** A record's element, as read or first written: records are immutable. */
const fragments = new WeakMap<JournalRecord, string>();

function fragmentOf(r: JournalRecord, payload?: string): string {
  let f = fragments.get(r);
  if (f === undefined) {
    const p = JOURNAL_NS.prefix;
    const body = payload ?? Buffer.from(JSON.stringify(r), 'utf8').toString('base64url');
    f = `<${p}:command id="${escapeXml(r.commandId)}" drive="${escapeXml(r.drive)}" status="${r.status}">${body}</${p}:command>`;
    fragments.set(r, f);
  }
  return f;
}

export class Journal {
  private xml: string | undefined;

  private constructor(private readonly records: readonly JournalRecord[]) {}

  /**
   * Each record is base64url JSON, so nothing in it needs XML escaping and reading it
   * back needs no XML parser: libvirt re-serialises the element, but never the payload.
   */
  static parse(xml: string | null): Journal {
    if (xml === null || xml.trim() === '') return new Journal([]);
    const records: JournalRecord[] = [];
    for (const m of xml.matchAll(RECORD_RE)) {
      try {
        const payload = m[1] ?? '';
        const rec = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as JournalRecord;
        if (typeof rec.commandId === 'string' && typeof rec.drive === 'string') {
          fragmentOf(rec, payload);
          records.push(rec);
        }
      } catch {
        // A damaged record only costs the idempotency of that command; keep the rest.
      }
    }
    const journal = new Journal(records);
    journal.xml = xml;
    return journal;
  }

  /** Written as a string: base64url payloads and UUID/drive attributes need no tree. */
  toXml(): string {
    if (this.xml !== undefined) return this.xml;
    const p = JOURNAL_NS.prefix;
    const open = `<${p}:${JOURNAL_NS.key} xmlns:${p}="${JOURNAL_NS.uri}"`;
    const xml = this.records.length === 0 ? `${open}/>` : `${open}>${this.records.map((r) => fragmentOf(r)).join('')}</${p}:${JOURNAL_NS.key}>`;
    this.xml = xml;
    return xml;
  }

  find(drive: string, commandId: string): JournalRecord | undefined {
    const id = commandId.toLowerCase();
    return this.records.find((r) => r.drive === drive && r.commandId.toLowerCase() === id);
  }

  /** Replaces any record of the same command; older pending records of the drive go. */
  withPending(rec: Omit<PendingRecord, 'status'>): Journal {
    const rest = this.records.filter((r) => !(r.drive === rec.drive && (r.status === 'pending' || r.commandId === rec.commandId)));
    return new Journal([...rest, { status: 'pending', ...rec }]);
  }

  withDone(rec: Omit<DoneRecord, 'status'>): Journal {
    const rest = this.records.filter((r) => !(r.drive === rec.drive && r.commandId === rec.commandId));
    const mine = rest.filter((r) => r.drive === rec.drive && r.status === 'done');
    const drop = new Set(mine.slice(0, Math.max(0, mine.length - (JOURNAL_DEPTH - 1))));
    return new Journal([...rest.filter((r) => !drop.has(r)), { status: 'done', ...rec }]);
  }

  get size(): number {
    return this.records.length;
  }
}
