#!/usr/bin/env node
/**
 * `npm start`: a server with state under ./var plus one local worker (--loop) for this machine's
 * platform, in one terminal. For trying builder out and for development; deployments run
 * builder-server and builder-worker as separate services.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SERVER_OPTIONS, startServer } from '../lib/server.js';
import { DEFAULT_TEMPLATES_DIR, detectPlatform } from '../lib/platform.js';

const listen = process.env.BUILDER_LISTEN ?? DEFAULT_SERVER_OPTIONS.listen;
const stateDir = path.resolve(process.env.BUILDER_STATE_DIR ?? 'var');
const platform = process.env.BUILDER_PLATFORM ?? detectPlatform();
// The web view on loopback; BUILDER_HTTP=off turns it off.
const httpEnv = process.env.BUILDER_HTTP ?? '127.0.0.1:8080';
const http = httpEnv === 'off' ? null : httpEnv;

let server;
try {
  server = await startServer({ ...DEFAULT_SERVER_OPTIONS, listen, stateDir, templatesDir: DEFAULT_TEMPLATES_DIR, http });
} catch (error) {
  process.stderr.write(`builder: ${(error as Error).message}\n`);
  process.exit(2);
}
const workerScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'builder-worker.js');
const worker = spawn(process.execPath, [workerScript, platform, '--remote', server.address, '--loop'], { stdio: ['ignore', 'inherit', 'inherit'] });
const client = path.join(path.dirname(fileURLToPath(import.meta.url)), 'builder-client.js');
process.stderr.write(`\nbuilder is running: server on ${server.address}, state in ${stateDir}, one ${platform} worker.\n`
  + (server.webAddress === null ? '' : `Web view:             http://${server.webAddress}/\n`)
  + `In another terminal:  alias builder-client="node ${client}"\n`
  + `                      builder-client info\nStop with Ctrl-C.\n\n`);

const stop = (): void => {
  worker.kill('SIGTERM');
  void server.close().then(() => process.exit(0));
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
worker.on('exit', (code) => {
  process.stderr.write(`builder: the local worker exited (${code}); stopping\n`);
  void server.close().then(() => process.exit(1));
});
