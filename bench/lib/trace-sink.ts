import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A local OTLP/HTTP receiver that accepts every export and keeps only counts: the
 * benchmarks' "tracing on" exports through the real OTLP exporter (serialisation and
 * HTTP included) without a collector's own cost in the figures. It runs in the bench's
 * process, so reading the requests is charged to the worker's CPU: a conservative figure.
 */
export interface TraceSink {
  /** for OTEL_EXPORTER_OTLP_ENDPOINT */
  readonly url: string;
  readonly stats: { requests: number; bytes: number };
  close(): Promise<void>;
}

export async function startTraceSink(): Promise<TraceSink> {
  const stats = { requests: 0, bytes: 0 };
  const server = createServer((req, res) => {
    req.on('data', (c: Buffer) => (stats.bytes += c.length));
    req.on('end', () => {
      stats.requests += 1;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
