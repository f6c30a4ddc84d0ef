import type { MessageProperties, Options } from 'amqplib';

export const ERROR_CODE_HEADER = 'x-cdrom-error-code';
export const ERROR_MESSAGE_HEADER = 'x-cdrom-error-message';
export const REPLAYED_HEADER = 'x-cdrom-replayed';
/** A dead letter's original AMQP user_id (CONTRACT.md section 3, v1.1). */
export const SENDER_HEADER = 'x-cdrom-sender';

/**
 * Headers the broker adds on delivery or when it dead-letters (the backstop policy);
 * they are not part of what the sender sent. The worker no longer reads the delivery
 * count: it counts crashes in its journal, per command (CONTRACT §9).
 */
const BROKER_HEADERS = ['x-delivery-count'];
/**
 * Headers the broker adds when it dead-letters a message itself (x-dead-letter-exchange:
 * the backstop policy, scripts/rabbitmq-backstop). A replay starts the history afresh.
 */
const DEATH_HEADERS = ['x-death', 'x-first-death-exchange', 'x-first-death-queue', 'x-first-death-reason', 'x-last-death-exchange', 'x-last-death-queue', 'x-last-death-reason'];

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
  // The publisher sets its own (asUser); a dead letter keeps the original's in
  // SENDER_HEADER (deadLetterOptions).
  return out;
}

/**
 * CONTRACT.md section 6: the original, properties unchanged, plus why. The original
 * user_id moves into `x-cdrom-sender` (the dead letter itself is published as the
 * worker). A `x-cdrom-sender` the sender set itself is dropped, also when it set no
 * user_id: only the broker-validated user_id may fill it, so `dlq show` never shows a
 * forged sender.
 */
export function deadLetterOptions(props: MessageProperties, error: { readonly code: string; readonly message: string }): Options.Publish {
  const headers = headersOf(props);
  headers[ERROR_CODE_HEADER] = error.code;
  headers[ERROR_MESSAGE_HEADER] = error.message.slice(0, 1000);
  delete headers[SENDER_HEADER];
  const sender = optString(props.userId);
  if (sender !== undefined) headers[SENDER_HEADER] = sender;
  return republishOptions(props, headers);
}

/**
 * A dead letter sent back to `cdrom.commands` (`dlq replay`): the original without the
 * worker's verdict (`x-cdrom-error-*`), without its sender (whoever replays it sends it
 * now, as their own user_id, and is authenticated as such) and without the broker's
 * delivery and death bookkeeping, counting the replay in `x-cdrom-replayed`.
 */
export function replayOptions(props: MessageProperties, replayed: number): Options.Publish {
  const headers = headersOf(props);
  for (const h of [ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER, SENDER_HEADER, ...DEATH_HEADERS]) delete headers[h];
  headers[REPLAYED_HEADER] = replayed;
  return republishOptions(props, headers);
}
