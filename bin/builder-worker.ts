#!/usr/bin/env node
/** builder-worker PLATFORM: runs jobs for one platform, one at a time, and reports back. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NAME_PATTERN } from '../protocol/types.js';
import type { Sandbox } from '../lib/sandbox.js';
import {
  CONTAINER_ENGINES, CONTAINER_NETWORKS, type ContainerOptions, ContainerSandbox, SandboxUnavailable, prepareContainerEngine,
} from '../lib/sandbox-container.js';
import { WORKER_EXIT, defaultHostname, runWorker } from '../lib/worker.js';
import { addressOption, dialTlsOption, remoteDefault, tokenOption, usageError } from './args.js';
import { optionName, withConfig } from './args.js';
import { WORKER_CONFIG } from './config-keys.js';

const PROGRAM = 'builder-worker';

const argv = withConfig(yargs(hideBin(process.argv)), PROGRAM, WORKER_CONFIG)
  .scriptName(PROGRAM)
  .usage('$0 PLATFORM [options]\n\nAsks the server for one job of PLATFORM, runs it, uploads its artifacts and exits (or keeps going with --loop).\n'
    + 'Exit status: 0 job done, 1 bad usage, 2 the server refused us, 3 the server was lost mid-job, 4 the sandbox cannot be used.')
  // Optional for yargs, so that --print-config works without it; required below.
  .command('$0 [platform]', false)
  .positional('platform', { type: 'string', describe: 'platform to run jobs for, e.g. debian-12' })
  .option('remote', { type: 'string', default: remoteDefault(), describe: 'server HOST:PORT (env BUILDER_REMOTE)' })
  .option('labels', { type: 'string', default: '', describe: 'comma-separated labels this worker announces' })
  .option('loop', { type: 'boolean', default: false, describe: 'keep running jobs instead of exiting after one' })
  .option('hostname', { type: 'string', default: defaultHostname(), describe: 'host name to announce' })
  .option('tls-ca', { type: 'string', describe: 'dial over TLS, trusting the CA certificates (PEM) in this file' })
  .option('tls', { type: 'boolean', default: false, describe: "dial over TLS, trusting the system's CAs" })
  .option('token-file', { type: 'string', describe: 'file holding the worker token (default: env BUILDER_TOKEN)' })
  .option('tmp-dir', { type: 'string', describe: 'where per-job builder-XXXXXX directories are made (default: the OS temp dir)' })
  .option('sandbox', { choices: ['process', ...CONTAINER_ENGINES] as const, default: 'process' as const, describe: 'run each job as a plain process group, or in a fresh docker/podman container' })
  .option('image', { type: 'string', describe: 'container image for --sandbox docker|podman, e.g. builder/debian:12' })
  .option('memory', { type: 'string', describe: 'container memory limit, e.g. 2g (no swap beyond it)' })
  .option('cpus', { type: 'string', describe: 'container CPU limit, e.g. 2 or 0.5' })
  .option('pids', { type: 'number', describe: 'container limit on processes and threads, e.g. 512' })
  .option('network', { choices: CONTAINER_NETWORKS, default: 'none' as const, describe: 'container network: none, or the host\'s' })
  .strict()
  .fail((message, error) => usageError(PROGRAM, error?.message ?? message))
  .help()
  .version(false)
  .parseSync();

if (argv.platform === undefined) usageError(PROGRAM, 'give the PLATFORM to run jobs for, e.g. builder-worker debian-12');
const platform = String(argv.platform);
if (!NAME_PATTERN.test(platform)) usageError(PROGRAM, `invalid platform '${platform}': use letters, digits, . _ + -, e.g. debian-12`);
const labels = argv.labels.split(',').map((label) => label.trim()).filter((label) => label.length > 0);

const remote = addressOption(PROGRAM, 'remote', argv.remote);
const containerFlags = (['image', 'memory', 'cpus', 'pids'] as const).filter((flag) => argv[flag] !== undefined);
let sandbox: (() => Sandbox) | undefined;
if (argv.sandbox === 'process') {
  if (containerFlags.length > 0) usageError(PROGRAM, `--${containerFlags[0]} is for containers: add --sandbox docker or --sandbox podman`);
} else {
  if (argv.image === undefined || argv.image === '') usageError(PROGRAM, `--sandbox ${argv.sandbox} needs --image, e.g. --image builder/debian:12`);
  if (argv.memory !== undefined && !/^\d+(\.\d+)?[bkmg]?$/i.test(argv.memory)) usageError(PROGRAM, `${optionName('memory')}: '${argv.memory}' is not a size: use e.g. 512m or 2g`);
  if (argv.cpus !== undefined && !(/^\d+(\.\d+)?$/.test(argv.cpus) && Number(argv.cpus) > 0)) usageError(PROGRAM, `${optionName('cpus')}: '${argv.cpus}' is not a positive number: use e.g. 2 or 0.5`);
  if (argv.pids !== undefined && !(Number.isInteger(argv.pids) && argv.pids > 0)) usageError(PROGRAM, `${optionName('pids')}: '${argv.pids}' is not a positive whole number: use e.g. 512`);
  const options: ContainerOptions = {
    engine: argv.sandbox, image: argv.image, memory: argv.memory, cpus: argv.cpus, pids: argv.pids, network: argv.network, tmpDir: argv['tmp-dir'],
  };
  try {
    for (const line of await prepareContainerEngine(options)) process.stderr.write(`${PROGRAM}: ${line}\n`);
  } catch (error) {
    if (!(error instanceof SandboxUnavailable)) throw error;
    process.stderr.write(`${PROGRAM}: ${error.message}\n`);
    process.exit(WORKER_EXIT.sandbox);
  }
  sandbox = () => new ContainerSandbox(options);
}

const token = tokenOption(PROGRAM, argv['token-file']);
const code = await runWorker({ platform, remote, labels, loop: argv.loop, hostname: argv.hostname, tmpDir: argv['tmp-dir'], sandbox, token,
  tls: dialTlsOption(PROGRAM, argv['tls-ca'], argv.tls),
});
process.exit(code);
