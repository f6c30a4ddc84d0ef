import type { MessageProperties } from 'amqplib';
import { readableIds, type Rejection } from '../contracts/command.decode.js';
import { optString } from './message-props.js';

/**
 * Sender authentication (CONTRACT.md section 3, v1.1). RabbitMQ checks the AMQP user_id
 * property against the publishing connection's login (a mismatch closes the publisher's
 * channel), so a user_id on a delivered message names who published it. With
 * CDROM_TRUSTED_SENDERS set, only those users may steer this host's drives: a host whose
 * credentials leak can still publish to `cdrom.commands.<other host>` through the
 * default exchange (write on `amq.default`, docs/security.md), but not as the engine.
 */

/** The broker-validated publisher of a message; undefined when it set no user_id. */
export function senderOf(props: MessageProperties): string | undefined {
  return optString(props.userId);
}

/**
 * null when the message may be decoded and run (no list, or its sender is in it); else
 * its rejection, whatever the body says. The ids are those decodeCommand would name
 * (readable and valid), so the rejected event looks like any other rejection.
 */
export function unauthorizedSender(msg: { readonly properties: MessageProperties; readonly content: Buffer }, trusted: readonly string[] | null): { readonly ok: false; readonly rejection: Rejection } | null {
  if (trusted === null) return null;
  const sender = senderOf(msg.properties);
  if (sender !== undefined && trusted.includes(sender)) return null;
  const message = sender === undefined ? 'the command carries no user_id; CDROM_TRUSTED_SENDERS requires a trusted sender' : `sender ${JSON.stringify(sender)} is not in CDROM_TRUSTED_SENDERS`;
  return { ok: false, rejection: { code: 'UNAUTHORIZED_SENDER', field: '', message, ids: readableIds(msg.content) } };
}
