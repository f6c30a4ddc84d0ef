import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logging.js';

export interface HealthState {
  /** Set by main once startup recovery has finished and the consumer is attached. */
  ready: boolean;
  /** False once shutdown has begun. */
  live: boolean;
}

export interface HttpServer {
  readonly port: number;
  close(): Promise<void>;
}

/** /healthz, /readyz and /metrics on 127.0.0.1 only: nothing here is meant for the network. */
export async function startHttpServer(port: number, state: HealthState, registry: Registry, logger: Logger): Promise<HttpServer> {
  const log = logger.child({ component: 'http' });
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(status, { 'content-type': type }).end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return state.live ? text(200, 'ok\n') : text(503, 'shutting down\n');
    if (path === '/readyz') return state.ready && state.live ? text(200, 'ready\n') : text(503, 'not ready\n');
    if (path === '/metrics') {
      registry
        .metrics()
        .then((body) => text(200, body, registry.contentType))
        .catch((err: unknown) => {
          log.error({ err }, 'metrics collection failed');
          text(500, 'metrics failed\n');
        });
      return;
    }
    text(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  log.info({ port: actual }, 'http listening');
  return {
    port: actual,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
