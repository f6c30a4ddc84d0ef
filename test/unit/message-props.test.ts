import type { MessageProperties } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { deadLetterOptions, replayOptions } from '../../src/consumers/message-props.js';

function props(over: Partial<MessageProperties> = {}): MessageProperties {
  return {
    contentType: 'application/json',
    contentEncoding: undefined,
    headers: { mine: 'yes' },
    deliveryMode: 2,
    priority: undefined,
    correlationId: 'c-1',
    replyTo: 'amq.gen-reply',
    expiration: undefined,
    messageId: 'm-1',
    timestamp: 1_700_000_000,
    type: 'changeCD',
    userId: 'engine',
    appId: 'engine-app',
    clusterId: undefined,
    ...over,
  };
}

const error = { code: 'UNAUTHORIZED_SENDER', message: 'sender "engine" is not in CDROM_TRUSTED_SENDERS' };

describe('deadLetterOptions', () => {
  it("keeps the original's other properties and moves its user_id into x-cdrom-sender", () => {
    const o = deadLetterOptions(props(), error);
    expect(o).toEqual({
      contentType: 'application/json',
      deliveryMode: 2,
      correlationId: 'c-1',
      replyTo: 'amq.gen-reply',
      messageId: 'm-1',
      timestamp: 1_700_000_000,
      type: 'changeCD',
      appId: 'engine-app',
      headers: { mine: 'yes', 'x-cdrom-sender': 'engine', 'x-cdrom-error-code': 'UNAUTHORIZED_SENDER', 'x-cdrom-error-message': error.message },
    });
    expect(o).not.toHaveProperty('userId');
  });

  it('sets no x-cdrom-sender without a user_id, and drops one the sender forged', () => {
    const o = deadLetterOptions(props({ userId: undefined, headers: { 'x-cdrom-sender': 'engine', 'x-delivery-count': 3 } }), error);
    expect(o.headers).toEqual({ 'x-cdrom-error-code': 'UNAUTHORIZED_SENDER', 'x-cdrom-error-message': error.message });
  });

  it("replaces a forged x-cdrom-sender by the broker-validated user_id", () => {
    const o = deadLetterOptions(props({ userId: 'cdrom-h2', headers: { 'x-cdrom-sender': 'engine' } }), error);
    expect(o.headers).toMatchObject({ 'x-cdrom-sender': 'cdrom-h2' });
  });

  it('bounds the error message', () => {
    const o = deadLetterOptions(props(), { code: 'INTERNAL', message: 'x'.repeat(5000) });
    expect(String((o.headers as Record<string, unknown>)['x-cdrom-error-message'])).toHaveLength(1000);
  });
});

describe('replayOptions', () => {
  it('drops the verdict, the sender and the broker bookkeeping; counts the replay; sets no user_id', () => {
    const dead = props({
      userId: undefined,
      headers: {
        mine: 'yes',
        'x-cdrom-error-code': 'UNAUTHORIZED_SENDER',
        'x-cdrom-error-message': 'm',
        'x-cdrom-sender': 'cdrom-h2',
        'x-cdrom-replayed': 1,
        'x-delivery-count': 2,
        'x-death': [{ count: 1, reason: 'rejected', queue: 'q', exchange: '', 'routing-keys': ['q'], time: { '!': 'timestamp', value: 1_700_000_000 } }],
        'x-first-death-exchange': '',
        'x-first-death-queue': 'q',
        'x-first-death-reason': 'rejected',
      },
    });
    const o = replayOptions(dead, 2);
    expect(o.headers).toEqual({ mine: 'yes', 'x-cdrom-replayed': 2 });
    expect(o).toMatchObject({ messageId: 'm-1', correlationId: 'c-1', replyTo: 'amq.gen-reply', contentType: 'application/json', deliveryMode: 2 });
    expect(o).not.toHaveProperty('userId');
  });
});
