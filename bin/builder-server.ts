#!/usr/bin/env node
/** builder-server: keeps jobs, schedules, queues and run history; workers and clients dial in. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import fs from 'node:fs';
import { ROLES, TokenError, Tokens } from '../lib/auth.js';
import { DEFAULT_SERVER_OPTIONS, startServer } from '../lib/server.js';
import { DEFAULT_TEMPLATES_DIR, defaultStateDir } from '../lib/platform.js';
import {
  addressOption, countOption, durationOption, limitOption, millisecondsOption, secretFileOption, serverTlsOption, urlOption, usageError,
} from './args.js';
import { configuredStateDir, optionName, withConfig } from './args.js';
import { SERVER_CONFIG } from './config-keys.js';

const PROGRAM = 'builder-server';

// builder-server token add|list|revoke: manages the tokens in STATE/auth.sqlite, also while the
// server runs (that file is not locked by it).
if (process.argv[2] === 'token') {
  await yargs(hideBin(process.argv).slice(1))
    .scriptName(`${PROGRAM} token`)
    .usage('$0 add NAME --role ROLE | list | revoke NAME  [--state-dir DIR]')
    .option('state-dir', { type: 'string', describe: 'state directory (default ./var in a checkout, /var/lib/builder when installed)', global: true })
    .option('config', { type: 'string', describe: 'config file whose state-dir to use (see builder-server --help)', global: true })
    .command('add <name>', 'create a token and print it (once) on stdout', (y) => y
      .positional('name', { type: 'string', demandOption: true })
      .option('role', { choices: ROLES, demandOption: true, describe: 'viewer, operator, admin or worker' }),
    (argv) => tokenCommand(argv['state-dir'], (tokens) => {
      process.stdout.write(`${tokens.add(argv.name, argv.role)}\n`);
      process.stderr.write(`${PROGRAM}: token ${argv.name} (${argv.role}) created; it is shown only this once\n`);
    }))
    .command('list', 'list the tokens: name, role, created', () => {}, (argv) => tokenCommand(argv['state-dir'], (tokens) => {
      for (const t of tokens.list()) process.stdout.write(`${t.name}\t${t.role}\t${new Date(t.createdAt).toISOString()}\n`);
    }))
    .command('revoke <name>', 'delete a token; connections using it are refused from their next request', (y) => y
      .positional('name', { type: 'string', demandOption: true }),
    (argv) => tokenCommand(argv['state-dir'], (tokens) => {
      if (!tokens.revoke(argv.name)) usageError(PROGRAM, `no token named ${argv.name}`);
      process.stderr.write(`${PROGRAM}: token ${argv.name} revoked\n`);
    }))
    .demandCommand(1, 'say add, list or revoke')
    .strict()
    .fail((message, error) => usageError(PROGRAM, error?.message ?? message))
    .help()
    .version(false)
    .parseAsync();
  process.exit(0);
}

function tokenCommand(stateDir: string | undefined, action: (tokens: Tokens) => void): void {
  const dir = configuredStateDir(PROGRAM, SERVER_CONFIG, stateDir);
  let tokens: Tokens;
  try {
    fs.mkdirSync(dir, { recursive: true });
    tokens = new Tokens(dir);
  } catch (error) {
    usageError(PROGRAM, `cannot open the tokens in ${dir}: ${(error as Error).message}`);
  }
  try {
    action(tokens);
  } catch (error) {
    if (error instanceof TokenError) usageError(PROGRAM, error.message);
    throw error;
  } finally {
    tokens.close();
  }
}

const argv = withConfig(yargs(hideBin(process.argv)), PROGRAM, SERVER_CONFIG)
  .scriptName(PROGRAM)
  .usage('$0 [options]\n\nRuns the builder server: SQLite state, schedules, per-platform queues, and the worker/client protocol.')
  .option('listen', { type: 'string', default: DEFAULT_SERVER_OPTIONS.listen, describe: 'HOST:PORT to listen on' })
  .option('state-dir', { type: 'string', default: defaultStateDir(), describe: 'state directory (./var in a checkout, /var/lib/builder when installed)' })
  .option('templates', { type: 'string', default: DEFAULT_TEMPLATES_DIR, describe: 'directory of job templates (TEMPLATE/PLATFORM.sh.hbs)' })
  .option('job-timeout', { type: 'string', default: '1h', describe: 'default job timeout (30m, 2h, 1d, ...)' })
  .option('heartbeat', { type: 'string', default: '10s', describe: 'how often running workers send heartbeats; 3 missed = worker lost' })
  .option('max-frame-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxFrameBytes, describe: 'largest protocol frame accepted' })
  .option('strict', { type: 'boolean', default: false, describe: 'fsync every commit (survives power loss, slower)' })
  .option('max-artifact-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxArtifactBytes, describe: 'largest single artifact file accepted; a larger one fails its run' })
  .option('max-run-artifact-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxRunArtifactBytes, describe: 'most artifact bytes one run may upload in all' })
  .option('max-line-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxLineBytes, describe: 'longest console line kept whole; longer ones are cut, saying so' })
  .option('max-console-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxConsoleBytes, describe: 'console bytes kept per run; beyond, output is dropped, saying so' })
  .option('max-connections-per-address', { type: 'number', default: DEFAULT_SERVER_OPTIONS.maxConnectionsPerAddress, describe: 'simultaneous connections accepted from one IP address' })
  .option('min-free-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.minFreeBytes, describe: 'below this much free space in the state directory, no new work is accepted' })
  .option('hello-timeout', { type: 'string', default: '10s', describe: 'a connection that has not said hello by then is closed' })
  .option('observer-backlog-bytes', { type: 'number', default: DEFAULT_SERVER_OPTIONS.observerBacklogBytes, describe: 'unsent bytes after which a slow observer reads the console file instead of live lines' })
  .option('tls-cert', { type: 'string', describe: 'certificate (PEM) for TLS on the builder port and the web view' })
  .option('tls-key', { type: 'string', describe: 'private key (PEM) of --tls-cert' })
  .option('allow-plaintext', { type: 'boolean', default: false, describe: 'listen beyond loopback without TLS (trusted networks only)' })
  .option('keep-runs', { type: 'number', default: 0, describe: 'finished runs kept per job, older ones removed with their consoles and artifacts (0: keep all; a job may set its own)' })
  .option('vacuum-every', { type: 'string', default: '1h', describe: 'how often free database pages are handed back to the file system' })
  .option('http', { type: 'string', describe: 'serve the read-only web view on HOST:PORT, e.g. 127.0.0.1:8080 (off by default)' })
  .option('notify', { type: 'string', array: true, default: [] as string[], describe: 'URL to POST to when any run is queued, starts and finishes (repeatable)' })
  .option('notify-secret-file', { type: 'string', describe: 'file holding the key that signs webhook bodies (HMAC-SHA256, header X-Builder-Signature-256)' })
  .option('notify-attempts', { type: 'number', default: DEFAULT_SERVER_OPTIONS.notifyAttempts, describe: 'attempts per webhook delivery before it is recorded as failed' })
  .option('notify-backoff', { type: 'string', default: '2s', describe: 'wait after a failed webhook attempt, doubled after each further one (500ms, 2s, 1m)' })
  .option('public-url', { type: 'string', describe: 'base URL of the web view for links in webhooks (default: http(s)://the --http address)' })
  .option('forget-workers-after', { type: 'string', default: '1h', describe: 'gone workers are listed this long, then forgotten' })
  .strict()
  .fail((message, error) => usageError(PROGRAM, error?.message ?? message))
  .help()
  .version(false)
  .parseSync();

const maxFrameBytes = argv['max-frame-bytes'];
// Artifact chunks are 256 KiB and console batches up to about 1 MiB; smaller frames would refuse them.
if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 2 * 1024 * 1024) usageError(PROGRAM, `${optionName('max-frame-bytes')} must be an integer of at least 2097152 (2 MiB)`);

try {
  const server = await startServer({
    ...DEFAULT_SERVER_OPTIONS,
    listen: addressOption(PROGRAM, 'listen', argv.listen),
    stateDir: argv['state-dir'],
    templatesDir: argv.templates,
    jobTimeoutSeconds: durationOption(PROGRAM, 'job-timeout', argv['job-timeout']),
    heartbeatSeconds: durationOption(PROGRAM, 'heartbeat', argv.heartbeat, 3600),
    maxFrameBytes,
    maxArtifactBytes: limitOption(PROGRAM, 'max-artifact-bytes', argv['max-artifact-bytes']),
    maxRunArtifactBytes: limitOption(PROGRAM, 'max-run-artifact-bytes', argv['max-run-artifact-bytes']),
    maxLineBytes: limitOption(PROGRAM, 'max-line-bytes', argv['max-line-bytes'], 1024),
    maxConsoleBytes: limitOption(PROGRAM, 'max-console-bytes', argv['max-console-bytes'], 4096),
    maxConnectionsPerAddress: limitOption(PROGRAM, 'max-connections-per-address', argv['max-connections-per-address']),
    minFreeBytes: limitOption(PROGRAM, 'min-free-bytes', argv['min-free-bytes'], 0),
    helloTimeoutSeconds: Math.max(1, durationOption(PROGRAM, 'hello-timeout', argv['hello-timeout'], 3600)),
    observerBacklogBytes: limitOption(PROGRAM, 'observer-backlog-bytes', argv['observer-backlog-bytes'], 65_536),
    strict: argv.strict,
    http: argv.http === undefined ? null : addressOption(PROGRAM, 'http', argv.http),
    tls: serverTlsOption(PROGRAM, argv['tls-cert'], argv['tls-key']),
    allowPlaintext: argv['allow-plaintext'],
    keepRuns: argv['keep-runs'] === 0 ? 0 : countOption(PROGRAM, 'keep-runs', argv['keep-runs']),
    vacuumIntervalSeconds: Math.max(1, durationOption(PROGRAM, 'vacuum-every', argv['vacuum-every'], 7 * 86400)),
    forgetWorkersSeconds: durationOption(PROGRAM, 'forget-workers-after', argv['forget-workers-after'], 30 * 86400),
    notify: argv.notify.map((url) => urlOption(PROGRAM, 'notify', String(url))),
    notifySecret: secretFileOption(PROGRAM, 'notify-secret-file', argv['notify-secret-file']),
    notifyAttempts: limitOption(PROGRAM, 'notify-attempts', argv['notify-attempts']),
    notifyBackoffMs: millisecondsOption(PROGRAM, 'notify-backoff', argv['notify-backoff']),
    publicUrl: argv['public-url'] === undefined ? null : urlOption(PROGRAM, 'public-url', argv['public-url']),
  });
  const stop = (signal: string): void => {
    process.stderr.write(`${new Date().toISOString()} stopping signal=${signal}\n`);
    server.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
} catch (error) {
  process.stderr.write(`${PROGRAM}: ${(error as Error).message}\n`);
  process.exit(2);
}
