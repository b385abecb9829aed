#!/usr/bin/env node
/** builder-worker PLATFORM: runs jobs for one platform, one at a time, and reports back. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NAME_PATTERN } from '../protocol/types.js';
import { defaultHostname, runWorker } from '../lib/worker.js';
import { addressOption, remoteDefault, usageError } from './args.js';

const PROGRAM = 'builder-worker';

const argv = yargs(hideBin(process.argv))
  .scriptName(PROGRAM)
  .usage('$0 PLATFORM [options]\n\nAsks the server for one job of PLATFORM, runs it, uploads its artifacts and exits (or keeps going with --loop).\n'
    + 'Exit status: 0 job done, 1 bad usage, 2 the server refused us, 3 the server was lost mid-job.')
  .command('$0 <platform>', false)
  .positional('platform', { type: 'string', describe: 'platform to run jobs for, e.g. debian-12' })
  .option('remote', { type: 'string', default: remoteDefault(), describe: 'server HOST:PORT (env BUILDER_REMOTE)' })
  .option('labels', { type: 'string', default: '', describe: 'comma-separated labels this worker announces' })
  .option('loop', { type: 'boolean', default: false, describe: 'keep running jobs instead of exiting after one' })
  .option('hostname', { type: 'string', default: defaultHostname(), describe: 'host name to announce' })
  .option('tmp-dir', { type: 'string', describe: 'where per-job builder-XXXXXX directories are made (default: the OS temp dir)' })
  .strict()
  .fail((message, error) => usageError(PROGRAM, error?.message ?? message))
  .help()
  .version(false)
  .parseSync();

const platform = String(argv.platform);
if (!NAME_PATTERN.test(platform)) usageError(PROGRAM, `invalid platform '${platform}': use letters, digits, . _ + -, e.g. debian-12`);
const labels = argv.labels.split(',').map((label) => label.trim()).filter((label) => label.length > 0);

const code = await runWorker({
  platform, remote: addressOption(PROGRAM, 'remote', argv.remote), labels, loop: argv.loop, hostname: argv.hostname, tmpDir: argv['tmp-dir'],
});
process.exit(code);
