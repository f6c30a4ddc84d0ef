import type { ResultEvent } from '../contracts/schemas.js';
import type { Media } from '../domain/media.js';

function media(m: Media | null): string {
  if (m === null) return 'empty';
  if ('path' in m) return m.path;
  return `${m.domainID}/${m.imageID}/${m.volumeID}`;
}

/** One human line per event; `--json` prints the event itself instead. */
export function formatEvent(e: ResultEvent): string {
  const outcome = e.type.replace('changeCD.', '');
  const parts = [
    e.finishedAt,
    e.hostId,
    outcome.padEnd(9),
    `cmd=${e.commandId ?? '-'}`,
    `vm=${e.vmId ?? '-'}`,
    `drive=${e.drive ?? '-'}`,
    `action=${e.action ?? '-'}`,
    `${media(e.previous)} -> ${media(e.current)}`,
    `${e.durationMs}ms`,
  ];
  if (e.error) parts.push(`error=${e.error.code}: ${e.error.message}${e.error.retryable ? ' (retryable)' : ''}`);
  for (const w of e.warnings) parts.push(`warning=${w.code}: ${w.message}`);
  return parts.join('  ');
}
