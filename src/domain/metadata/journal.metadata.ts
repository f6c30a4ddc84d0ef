import type { Media } from '../media.js';
import type { ChangeAction, ChangeResult } from '../outcome.js';
import { JOURNAL_NS } from '../ports.js';
import { attrOf, buildXml, element, elementChildren, parseXml, tagOf, text, textOf, localName, type XmlElement } from './xml-tree.js';

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
export const JOURNAL_DEPTH = 16;

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

export class Journal {
  private constructor(private readonly records: readonly JournalRecord[]) {}

  static parse(xml: string | null): Journal {
    if (xml === null || xml.trim() === '') return new Journal([]);
    let root: XmlElement;
    try {
      root = parseXml(xml);
    } catch {
      // A journal we cannot read only costs idempotency of older commands; start afresh.
      return new Journal([]);
    }
    const records: JournalRecord[] = [];
    for (const el of elementChildren(root)) {
      if (localName(tagOf(el) ?? '') !== 'command') continue;
      try {
        const rec = JSON.parse(textOf(el)) as JournalRecord;
        if (typeof rec.commandId === 'string' && attrOf(el, 'id') === rec.commandId) records.push(rec);
      } catch {
        // skip a damaged record, keep the rest
      }
    }
    return new Journal(records);
  }

  toXml(): string {
    const p = JOURNAL_NS.prefix;
    const kids = this.records.map((r) =>
      element(`${p}:command`, { id: r.commandId, drive: r.drive, status: r.status }, [text(JSON.stringify(r))]),
    );
    return buildXml(element(`${p}:${JOURNAL_NS.key}`, { [`xmlns:${p}`]: JOURNAL_NS.uri }, kids));
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
