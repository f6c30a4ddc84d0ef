// Placeholder until the CLI lands (issue 5): `cdrom-worker run | send | events | dlq | recover | status`.
console.error('cdrom-worker: CLI not built yet');
process.exitCode = 2;
