import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A vhost of its own on the default node, with broker users made for one test. remove()
 * deletes the vhost (its queues, exchanges and permissions with it) and exactly the users
 * this object created, also after a failure half way; nothing else is touched.
 */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '../..');
const ctl = (args: readonly string[]): Promise<unknown> => run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });

export interface Permissions {
  readonly configure: string;
  readonly write: string;
  readonly read: string;
}

export class TestVhost {
  readonly password = randomBytes(12).toString('hex');
  private readonly users: string[] = [];

  private constructor(readonly name: string) {}

  /** Creates the vhost; `guest` gets every permission on it (the administrator). */
  static async create(prefix: string): Promise<TestVhost> {
    const v = new TestVhost(`${prefix}-${randomBytes(4).toString('hex')}`);
    try {
      await ctl(['add_vhost', v.name]);
      await ctl(['set_permissions', '-p', v.name, 'guest', '.*', '.*', '.*']);
    } catch (err) {
      await v.remove();
      throw err;
    }
    return v;
  }

  get adminUrl(): string {
    return `amqp://guest:guest@127.0.0.1:5672/${this.name}`;
  }

  urlOf(user: string): string {
    return `amqp://${encodeURIComponent(user)}:${this.password}@127.0.0.1:5672/${this.name}`;
  }

  /** A user with these permissions on this vhost (and nowhere else). */
  async addUser(user: string, perms: Permissions): Promise<void> {
    // Recorded only once made: a name that existed already (it cannot, with the random
    // suffixes the tests use) would make add_user fail, and is then not ours to delete.
    await ctl(['add_user', user, this.password]);
    this.users.push(user);
    await ctl(['set_permissions', '-p', this.name, user, perms.configure, perms.write, perms.read]);
  }

  /** A host's least-privilege user, made by scripts/rabbitmq-host-user; returns its name. */
  async addHostUser(hostId: string, options: { replyTo: boolean }): Promise<string> {
    const user = `cdrom-${hostId}`;
    // Recorded first: the script may fail after creating the user. Host ids in tests are
    // random (uniqueHost), so the name is this test's own.
    this.users.push(user);
    await run('bash', [join(ROOT, 'scripts/rabbitmq-host-user'), ...(options.replyTo ? [] : ['--no-reply-to']), hostId, this.password, this.name], { timeout: 60_000 });
    return user;
  }

  async remove(): Promise<void> {
    await Promise.allSettled([ctl(['delete_vhost', this.name]), ...this.users.map((u) => ctl(['delete_user', u]))]);
  }
}
