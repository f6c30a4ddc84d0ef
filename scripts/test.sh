#!/usr/bin/env bash
# The one test command (README, .ci/run): host services, dependencies, typecheck,
# lint and every test. Fails when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/host-setup.sh

if [ ! -x node_modules/.bin/vitest ] || [ ! -f build/Release/virt.node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

echo '== typecheck'
npx tsc -p tsconfig.json --noEmit
echo '== lint'
npx eslint . --max-warnings 0
echo '== tests'
# A skipped test fails the run here (vitest.config.ts, test/support/real-stack.ts);
# CDROM_ALLOW_SKIP=1 allows it outside CI, e.g. with `npm test -- -t <name>`.
CDROM_NO_SKIP=1 npx vitest run "$@"
