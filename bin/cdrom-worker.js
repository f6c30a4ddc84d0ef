#!/usr/bin/env node
// libvirt calls run on libuv's pool (as async work); a call stuck in libvirtd must not
// starve file I/O, so the pool is larger than Node's default of 4. Set before any use.
process.env.UV_THREADPOOL_SIZE ??= '16';
await import('../dist/cli/main.js');
