/**
 * Whether a real-stack test (root: loop devices, LVM metadata, libvirtd's qemu:///system)
 * may be skipped where it cannot run. A skipped test passes silently, so skipping is an
 * explicit opt-in: `CDROM_ALLOW_SKIP=1`, and never under CI. Otherwise the test file
 * fails to load with this message, and the run fails.
 */

/** CI as the usual runners set it: any value but empty, `0` or `false`. */
export function inCi(env: NodeJS.ProcessEnv = process.env): boolean {
  const ci = env.CI?.trim().toLowerCase();
  return ci !== undefined && ci !== '' && ci !== '0' && ci !== 'false';
}

export function skipAllowed(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CDROM_ALLOW_SKIP === '1' && !inCi(env);
}

/**
 * `true` when the test can run; `false` (skip it) only with the opt-in; else throws.
 * `what` names the tests, `missing` what they lack here.
 */
export function realStack(what: string, available: boolean, missing: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (available) return true;
  if (skipAllowed(env)) return false;
  const how = inCi(env) ? 'CI runs every test: run it as root' : 'run it as root, or set CDROM_ALLOW_SKIP=1 to skip it knowingly';
  throw new Error(`${what} cannot run here (${missing}); not skipping it silently: ${how}`);
}
