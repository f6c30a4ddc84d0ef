#!/usr/bin/env node
// libvirt calls run on the addon's own executor, not libuv's pool; the pool stays larger
// than Node's default of 4 for file I/O under load. Set before any use.
process.env.UV_THREADPOOL_SIZE ??= '16';
await import('../dist/cli/main.js');
