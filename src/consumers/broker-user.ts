import type { Options } from 'amqplib';

/**
 * Who we are on the broker, for the AMQP `user_id` property (CONTRACT.md section 3, v1.1).
 * RabbitMQ accepts a user_id only if it equals the publishing connection's login; any
 * other value closes the channel (measured on 3.10: 406 PRECONDITION_FAILED "user_id
 * property set to 'x' but authenticated user was 'y'"), so the value must be exactly the
 * login, per connection.
 */

/**
 * The user a connection to `url` logs in as, decoded exactly as amqplib decodes it for
 * the login: `unescape` of the URL's user name, one character per `%XX`. For the names
 * amqplib can log in with at all that is plain percent-decoding (`a%40b` → `a@b`); a
 * percent-encoded UTF-8 name reaches the broker Latin-1-mangled by amqplib (measured:
 * `prøbe` is refused at login), and mirroring amqplib keeps user_id equal to whatever it
 * did send.
 *
 * undefined when the URL names no user. amqplib then logs in as guest/guest, and a login
 * that the URL does not name (EXTERNAL with a client certificate, were it configured) is
 * unknown here: user_id is left unset, which the broker accepts from anyone.
 */
export function brokerUser(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  // amqplib logs in with an empty name when only a password is given; the broker refuses
  // that login, so there is nothing to name.
  if (parsed.username === '') return undefined;
  return unescape(parsed.username);
}

/**
 * `options` as published by `user`: user_id set to it, or removed when the user is not
 * known. Whatever user_id `options` carried (a received message's, say) is replaced: only
 * our own login is accepted.
 */
export function asUser(options: Options.Publish, user: string | undefined): Options.Publish {
  const { userId: _theirs, ...rest } = options;
  return user === undefined ? rest : { ...rest, userId: user };
}
