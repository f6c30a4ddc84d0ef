import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * `import { connect } from 'cdrom-worker/client'` as the engine writes it: resolved by
 * Node and by TypeScript through package.json "exports" (a self-reference here, the same
 * lookup an installed copy gets), against what `npm run build` emits into dist/. The
 * other client tests import the source; this one is what catches a broken exports map,
 * a missing declaration file, or a client that only works under tsx.
 *
 * The package is a copy: this package.json and a build of its own, in a temporary
 * directory. Rebuilding the repository's dist/ here would rewrite files under the CLI
 * that other test files run at the same time.
 */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '../..');
const PKG = join(tmpdir(), `cdw-client-package-${process.pid}`);
// Inside the package, so that the self-reference resolves.
const DIR = join(PKG, 'engine');

beforeAll(async () => {
  mkdirSync(DIR, { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(PKG, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(PKG, 'node_modules'));
  await run('npx', ['tsc', '-p', 'tsconfig.build.json', '--outDir', join(PKG, 'dist')], { cwd: ROOT, timeout: 110_000 });
}, 120_000);

afterAll(() => rmSync(PKG, { recursive: true, force: true }));

describe('cdrom-worker/client as a package', () => {
  it('Node resolves it to the built client', async () => {
    const file = join(DIR, 'engine.mjs');
    writeFileSync(
      file,
      [
        "import { connect, CdromClientError, isCdromClientError } from 'cdrom-worker/client';",
        "const err = await connect('amqp://guest:guest@127.0.0.1:1').catch((e) => e);",
        'console.log(JSON.stringify({ connect: typeof connect, code: err.code, typed: err instanceof CdromClientError && isCdromClientError(err, "CONNECT_FAILED") }));',
      ].join('\n'),
    );
    const { stdout } = await run(process.execPath, [file], { cwd: DIR, timeout: 20_000 });
    expect(JSON.parse(stdout)).toEqual({ connect: 'function', code: 'CONNECT_FAILED', typed: true });
  });

  it('TypeScript finds its declarations, typed with the contract', async () => {
    const file = join(DIR, 'engine.ts');
    writeFileSync(
      file,
      [
        "import { connect, type ResultEvent } from 'cdrom-worker/client';",
        'export async function load(url: string): Promise<ResultEvent> {',
        '  const client = await connect(url);',
        "  return client.changeCD('host-1', { vmId: 'v', drive: 'sdc', media: null }, { timeoutMs: 1000 });",
        '}',
        // A wrong request must not compile: the types come from the contract, not `any`.
        '// @ts-expect-error media is required',
        "export const wrong = (url: string) => connect(url).then((c) => c.changeCD('h', { vmId: 'v', drive: 'sdc' }));",
      ].join('\n'),
    );
    const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
    const args = [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node', '--skipLibCheck', file];
    const result = await run(process.execPath, args, { cwd: DIR, timeout: 60_000 }).catch((err: Error & { stdout?: string }) => ({ stdout: err.stdout || err.message }));
    expect(result.stdout).toBe('');
  });
});
