import type { MessageProperties, Options } from 'amqplib';

export const ERROR_CODE_HEADER = 'x-cdrom-error-code';
export const ERROR_MESSAGE_HEADER = 'x-cdrom-error-message';
export const REPLAYED_HEADER = 'x-cdrom-replayed';

/**
 * Headers the broker adds on delivery or when it dead-letters (the backstop policy);
 * they are not part of what the sender sent. The worker no longer reads the delivery
 * count: it counts crashes in its journal, per command (CONTRACT §9).
 */
const BROKER_HEADERS = ['x-delivery-count'];

/** amqplib types property values as `any`; these narrow them once, at the edge. */
export const optString = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const optNumber = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

export function headersOf(props: MessageProperties): Record<string, unknown> {
  const h: unknown = props.headers;
  return typeof h === 'object' && h !== null ? { ...(h as Record<string, unknown>) } : {};
}

/**
 * A received message's properties as publish options, so the message can be sent on
 * unchanged (dead-lettering, replay). `headers` replaces the original headers.
 */
export function republishOptions(props: MessageProperties, headers: Record<string, unknown>): Options.Publish {
  const out: Options.Publish = { headers };
  for (const h of BROKER_HEADERS) delete headers[h];
  const s = (k: keyof MessageProperties): string | undefined => optString(props[k]);
  const set = <K extends keyof Options.Publish>(k: K, v: Options.Publish[K] | undefined): void => {
    if (v !== undefined) out[k] = v;
  };
  set('contentType', s('contentType'));
  set('contentEncoding', s('contentEncoding'));
  set('deliveryMode', optNumber(props.deliveryMode));
  set('priority', optNumber(props.priority));
  set('correlationId', s('correlationId'));
  set('replyTo', s('replyTo'));
  set('expiration', s('expiration'));
  set('messageId', s('messageId'));
  set('timestamp', optNumber(props.timestamp));
  set('type', s('type'));
  set('appId', s('appId'));
  // user_id is validated by the broker against the publishing user: copying another
  // user's id would close the channel (406), so it is deliberately not carried over.
  return out;
}
