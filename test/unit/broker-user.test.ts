import { describe, expect, it } from 'vitest';
import { asUser, brokerUser } from '../../src/consumers/broker-user.js';
import { loadBusConfig } from '../../src/config.js';

describe('brokerUser: the login a URL makes, for user_id', () => {
  it('is guest for the default CDROM_AMQP_URL', () => {
    const [url] = loadBusConfig({ CDROM_HOST_ID: 'h' }).amqpUrls;
    expect(brokerUser(url!)).toBe('guest');
  });

  it.each([
    ['amqps://cdrom-h1:pw@broker:5671/vhost', 'cdrom-h1'],
    ['amqp://a%40b:p%3Aw@broker', 'a@b'],
    ['amqp://cdrom%2Dh1:x@broker', 'cdrom-h1'],
    ['amqp://user@broker', 'user'],
    // amqplib decodes the name with unescape for the login: user_id must match that byte for byte
    ['amqp://pr%C3%B8be:pw@broker', 'pr\u00c3\u00b8be'],
  ])('%s → %s', (url, user) => {
    expect(brokerUser(url)).toBe(user);
  });

  it.each(['amqp://broker', 'amqps://broker:5671/vh', 'amqp://:pw@broker', 'not a url'])('%s names no user: undefined', (url) => {
    expect(brokerUser(url)).toBeUndefined();
  });

  it('each URL of a list has its own', () => {
    const urls = loadBusConfig({ CDROM_HOST_ID: 'h', CDROM_AMQP_URL: 'amqp://u1:p@n1,amqp://u2:p@n2,amqp://n3' }).amqpUrls;
    expect(urls.map(brokerUser)).toEqual(['u1', 'u2', undefined]);
  });
});

describe('asUser', () => {
  it('replaces whatever user_id the options carried, or removes it when the user is unknown', () => {
    expect(asUser({ userId: 'engine', messageId: 'm' }, 'cdrom-h1')).toEqual({ userId: 'cdrom-h1', messageId: 'm' });
    expect(asUser({ userId: 'engine', messageId: 'm' }, undefined)).toEqual({ messageId: 'm' });
    expect(asUser({}, 'guest')).toEqual({ userId: 'guest' });
  });
});
