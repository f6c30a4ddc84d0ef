import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * Throwaway PKI for the TLS tests, made with openssl in a temp dir: a CA, a server
 * certificate for localhost/127.0.0.1 signed by it, a client certificate, and an
 * unrelated CA that must not be trusted.
 */

const run = promisify(execFile);

export interface TestPki {
  readonly dir: string;
  /** ca.pem, server.pem, server.key: the layout scripts/rabbitmq-cluster.sh expects. */
  readonly caFile: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** A CA that signed nothing here. */
  readonly wrongCaFile: string;
  remove(): Promise<void>;
}

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  await run('openssl', [...args], { cwd, timeout: 30_000 });
}

async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`], dir);
}

async function makeLeaf(dir: string, name: string, ca: string, ext: string): Promise<void> {
  await writeFile(join(dir, `${name}.ext`), ext);
  await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`], dir);
}

export async function createTestPki(): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'cdw-pki-'));
  try {
    await makeCa(dir, 'ca');
    await makeCa(dir, 'wrong-ca');
    await makeLeaf(dir, 'server', 'ca', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    await makeLeaf(dir, 'client', 'ca', 'extendedKeyUsage=clientAuth\n');
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const f = (name: string): string => join(dir, name);
  return {
    dir,
    caFile: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
    wrongCaFile: f('wrong-ca.pem'),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
