#!/usr/bin/env node
/**
 * builder-client: schedule, execute, observe and fetch. Exit status: 0 success, 1 bad usage,
 * 2 the server refused or could not be reached, 3 the observed run failed.
 */
import fs from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Client, ClientError, EXIT } from '../lib/client.js';
import * as commands from '../lib/client-commands.js';
import { parseTime, periodFromOptions } from '../lib/period.js';
import type { JobSource, Period } from '../protocol/types.js';
import { LABEL_PATTERN, LABEL_RULE, NAME_PATTERN } from '../protocol/types.js';
import { parseEnvAssignments, readEnvFiles, readSecretEnv } from '../lib/job-env.js';
import { urlOption, countOption, dialTlsOption, durationOption, remoteDefault, tokenOption, usageError } from './args.js';
import { withConfig } from './args.js';
import { CLIENT_CONFIG } from './config-keys.js';
import type { DialTls } from '../protocol/connection.js';

const PROGRAM = 'builder-client';
/** Set from --token-file or $BUILDER_TOKEN before any command runs. */
let token: string | undefined;
let tls: DialTls | null = null;

/** Runs one command against the server and exits with its status. */
async function withClient(remote: string, action: (client: Client) => Promise<number>): Promise<never> {
  let code: number;
  let client: Client | null = null;
  try {
    client = await Client.open(remote, token, tls);
    code = await action(client);
  } catch (error) {
    if (!(error instanceof ClientError)) throw error;
    process.stderr.write(`${PROGRAM}: ${error.message}\n`);
    code = error.exitCode;
  }
  client?.close();
  // Let stdout drain before exiting (large consoles piped into another program).
  await new Promise<void>((resolve) => (process.stdout.writableNeedDrain ? process.stdout.once('drain', resolve) : resolve()));
  process.exit(code);
}

function checkName(what: string, value: string): string {
  if (!NAME_PATTERN.test(value)) usageError(PROGRAM, `invalid ${what} '${value}': use 1-128 letters, digits, . _ + - (starting with a letter or digit)`);
  return value;
}

function checkUuid(value: string): string {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value)) {
    usageError(PROGRAM, `invalid run UUID '${value}': expected 8-4-4-4-12 lowercase hex digits`);
  }
  return value;
}

function period(argv: { every?: string; cron?: string; period?: string }, fallback: Period | null): Period | null {
  try {
    return periodFromOptions(argv, fallback);
  } catch (error) {
    return usageError(PROGRAM, (error as Error).message);
  }
}

function scheduleOptions<T>(y: Argv<T>) {
  return y
    .option('every', { type: 'string', describe: 'queue every DURATION (30m, 6h, 1d, 1w, 1d12h)' })
    .option('cron', { type: 'string', describe: 'queue on a cron schedule, in UTC ("0 3 * * *")' })
    .option('period', { type: 'string', choices: ['hourly', 'daily', 'weekly', 'never'], describe: 'a named period' })
    .option('replace', { type: 'boolean', default: false, describe: 'replace an existing job of the same name' })
    .option('timeout', { type: 'string', describe: "this job's timeout (default: the server's, 1h)" })
    .option('keep-runs', { type: 'number', describe: "finished runs of this job to keep, older ones are removed (default: the server's --keep-runs)" })
    .option('requires', { type: 'string', array: true, default: [] as string[], describe: 'labels a worker must have to run this job, comma-separated (repeatable)' })
    .option('env', { type: 'string', array: true, default: [] as string[], describe: 'variable KEY=VALUE for the job (repeatable); shown in show and the web view' })
    .option('env-file', { type: 'string', array: true, default: [] as string[], describe: 'file of KEY=VALUE lines for the job (repeatable); --env wins' })
    .option('secret-env', { type: 'string', array: true, default: [] as string[], describe: 'secret variable KEY=@FILE, its value read from FILE; never shown, masked as *** in the console' })
    .option('notify', { type: 'string', array: true, default: [] as string[], describe: 'URL to POST to when a run of this job is queued, starts and finishes (repeatable)' });
}

interface ScheduleArgv {
  remote: string; name: string; platform: string; every?: string; cron?: string; period?: string;
  replace: boolean; timeout?: string; 'keep-runs'?: number;
  requires: string[]; env: string[]; 'env-file': string[]; 'secret-env': string[]; notify: string[];
}

/** --requires a,b --requires c → [a, b, c], each a valid label. */
function labelsOption(items: string[]): string[] {
  const labels = items.flatMap((item) => String(item).split(',')).map((label) => label.trim()).filter((label) => label !== '');
  for (const label of labels) {
    if (!LABEL_PATTERN.test(label)) usageError(PROGRAM, `--requires: invalid label '${label}': ${LABEL_RULE}`);
  }
  return [...new Set(labels)];
}

/** The job's variables and secrets from --env-file, --env and --secret-env; exits 1 on a problem. */
function envOptions(argv: ScheduleArgv): { env: Record<string, string>; secretEnv: Record<string, string> } {
  try {
    const env = { ...readEnvFiles(argv['env-file'].map(String)), ...parseEnvAssignments(argv.env.map(String)) };
    const secretEnv = readSecretEnv(argv['secret-env'].map(String));
    const both = Object.keys(secretEnv).find((key) => key in env);
    if (both !== undefined) usageError(PROGRAM, `${both} is given both as --secret-env and as --env/--env-file; give it once`);
    return { env, secretEnv };
  } catch (error) {
    return usageError(PROGRAM, (error as Error).message);
  }
}

function runSchedule(argv: ScheduleArgv, source: JobSource): Promise<never> {
  const args = {
    name: checkName('job name', argv.name),
    platform: checkName('platform', argv.platform),
    source,
    period: period(argv, { kind: 'every', seconds: 86400 }) as Period,
    replace: argv.replace,
    timeoutSeconds: argv.timeout === undefined ? null : durationOption(PROGRAM, 'timeout', argv.timeout),
    keepRuns: argv['keep-runs'] === undefined ? null : countOption(PROGRAM, 'keep-runs', argv['keep-runs']),
    requires: labelsOption(argv.requires),
    ...envOptions(argv),
    notify: argv.notify.map((url) => urlOption(PROGRAM, 'notify', String(url))),
  };
  return withClient(argv.remote, (client) => commands.schedule(client, args, commands.stdio));
}

function parseVars(list: string[]): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf('=');
    const key = eq > 0 ? item.slice(0, eq) : '';
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) usageError(PROGRAM, `invalid --var '${item}': expected KEY=VALUE with KEY an identifier`);
    vars[key] = item.slice(eq + 1);
  }
  return vars;
}

const args = hideBin(process.argv);
const cli = yargs(args);
// yargs renders the whole help text each time a command's handler starts, to show it should the
// handler fail later. Our .fail() never shows help, and rendering it took a sixth of the client's
// start-up (see BENCHMARKS.md): skipped, through yargs' internal API when it is there.
const usage = (cli as unknown as { getInternalMethods?: () => { getUsageInstance(): { cacheHelpMessage?: () => void } } })
  .getInternalMethods?.().getUsageInstance();
if (usage?.cacheHelpMessage !== undefined) usage.cacheHelpMessage = () => {};

await withConfig(cli, PROGRAM, CLIENT_CONFIG)
  .scriptName(PROGRAM)
  .usage('$0 [--remote HOST:PORT] COMMAND\n\nTalks to a builder-server. Exit status: 0 success, 1 bad usage, 2 the server refused or '
    + 'could not be reached, 3 the observed run failed.')
  .option('remote', { type: 'string', default: remoteDefault(), describe: 'server HOST:PORT (env BUILDER_REMOTE)', global: true })
  .option('token-file', { type: 'string', describe: 'file holding the token to present (default: env BUILDER_TOKEN)', global: true })
  .option('tls-ca', { type: 'string', describe: 'connect over TLS, trusting the CA certificates (PEM) in this file', global: true })
  .option('tls', { type: 'boolean', default: false, describe: "connect over TLS, trusting the system's CAs", global: true })
  .middleware((argv) => {
    token = tokenOption(PROGRAM, argv['token-file']);
    tls = dialTlsOption(PROGRAM, argv['tls-ca'], argv.tls);
  })
  .command('schedule <name> <platform> <script>', 'add a job running SCRIPT_FILE; queue it now and on its schedule (default daily)',
    (y) => scheduleOptions(y.positional('name', { type: 'string', demandOption: true })
      .positional('platform', { type: 'string', demandOption: true }).positional('script', { type: 'string', demandOption: true, describe: 'script file, - for stdin' })),
    (argv) => {
      // yargs hands a lone `-` to a positional as '' (yargs/yargs#1312): the raw arguments tell
      // "read stdin" from an empty file name (an unset shell variable), which is refused.
      const stdin = argv.script === '-' || (argv.script === '' && args.includes('-'));
      if (argv.script === '' && !stdin) return usageError(PROGRAM, 'the script file name is empty: give a file, or - to read the script from stdin');
      let script: string;
      try {
        script = fs.readFileSync(stdin ? 0 : argv.script, 'utf8');
      } catch (error) {
        return usageError(PROGRAM, `cannot read script file ${argv.script}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
      return runSchedule(argv, { kind: 'script', script });
    })
  .command('schedule-template <name> <platform> <template>', 'add a job from a template (see templates/)',
    (y) => scheduleOptions(y.positional('name', { type: 'string', demandOption: true })
      .positional('platform', { type: 'string', demandOption: true }).positional('template', { type: 'string', demandOption: true })
      .option('var', { type: 'string', array: true, default: [] as string[], describe: 'template variable KEY=VALUE (repeatable)' })),
    (argv) => runSchedule(argv, { kind: 'template', template: checkName('template', argv.template), vars: parseVars(argv.var.map(String)) }))
  .command('unschedule <name>', 'remove a job (its history stays)', (y) => y.positional('name', { type: 'string', demandOption: true }),
    (argv) => withClient(argv.remote, (c) => commands.simple(c, { type: 'unschedule', name: checkName('job name', argv.name) }, commands.stdio)))
  .command('execute <name>', 'queue a run of a job now, at the front of its queue; prints the run UUID',
    (y) => y.positional('name', { type: 'string', demandOption: true }),
    (argv) => withClient(argv.remote, (c) => commands.execute(c, checkName('job name', argv.name), commands.stdio)))
  .command('reschedule <name> <next>', 'set when a job is next due (ISO time, now, +2h), optionally a new period',
    (y) => y.positional('name', { type: 'string', demandOption: true }).positional('next', { type: 'string', demandOption: true })
      .option('every', { type: 'string' }).option('cron', { type: 'string' }).option('period', { type: 'string', choices: ['hourly', 'daily', 'weekly', 'never'] }),
    (argv) => {
      let nextDue: number;
      try {
        nextDue = parseTime(argv.next);
      } catch (error) {
        return usageError(PROGRAM, (error as Error).message);
      }
      const newPeriod = period(argv, null);
      return withClient(argv.remote, (c) => commands.simple(c, { type: 'reschedule', name: checkName('job name', argv.name), nextDue, period: newPeriod }, commands.stdio));
    })
  .command('drop-platform <platform>', 'stop queuing jobs for a platform (its queue is cancelled)',
    (y) => y.positional('platform', { type: 'string', demandOption: true }),
    (argv) => withClient(argv.remote, (c) => commands.simple(c, { type: 'drop-platform', platform: checkName('platform', argv.platform) }, commands.stdio)))
  .command('undrop-platform <platform>', 'resume queuing jobs for a platform',
    (y) => y.positional('platform', { type: 'string', demandOption: true }),
    (argv) => withClient(argv.remote, (c) => commands.simple(c, { type: 'undrop-platform', platform: checkName('platform', argv.platform) }, commands.stdio)))
  .command('cancel <uuid>', 'cancel a queued or running run',
    (y) => y.positional('uuid', { type: 'string', demandOption: true }),
    (argv) => withClient(argv.remote, (c) => commands.simple(c, { type: 'cancel', uuid: checkUuid(argv.uuid) }, commands.stdio)))
  .command('info', 'schedules, queues, running runs, dropped platforms',
    (y) => y.option('json', { type: 'boolean', default: false }),
    (argv) => withClient(argv.remote, (c) => commands.info(c, argv.json, commands.stdio)))
  .command('results <name>', 'the runs of a job, newest first',
    (y) => y.positional('name', { type: 'string', demandOption: true }).option('json', { type: 'boolean', default: false })
      .option('limit', { type: 'number', default: 50, describe: 'at most this many runs' }),
    (argv) => {
      if (!Number.isInteger(argv.limit) || argv.limit < 1 || argv.limit > 10000) usageError(PROGRAM, '--limit must be an integer from 1 to 10000');
      return withClient(argv.remote, (c) => commands.results(c, checkName('job name', argv.name), argv.limit, argv.json, commands.stdio));
    })
  .command('workers', 'connected workers', (y) => y.option('json', { type: 'boolean', default: false }),
    (argv) => withClient(argv.remote, (c) => commands.workers(c, argv.json, commands.stdio)))
  .command('show <uuid>', "one run's metadata, its exact script, its console",
    (y) => y.positional('uuid', { type: 'string', demandOption: true }).option('script', { type: 'boolean', default: false })
      .option('console', { type: 'boolean', default: false }).option('json', { type: 'boolean', default: false }),
    (argv) => withClient(argv.remote, (c) => commands.show(c, { uuid: checkUuid(argv.uuid), script: argv.script, console: argv.console, json: argv.json }, commands.stdio)))
  .command('observe <uuid>', 'replay a run\'s console, follow it live; exit 0 if it succeeded, 3 if not',
    (y) => y.positional('uuid', { type: 'string', demandOption: true }).option('raw', { type: 'boolean', default: false, describe: 'print only the text: stdout lines to stdout, the rest to stderr' }),
    (argv) => withClient(argv.remote, (c) => commands.observe(c, { uuid: checkUuid(argv.uuid), raw: argv.raw }, commands.stdio)))
  .command('observe-latest', 'observe the newest run (of a job, on a platform), waiting for one if there is none',
    (y) => y.option('job', { type: 'string' }).option('platform', { type: 'string' }).option('raw', { type: 'boolean', default: false }),
    (argv) => withClient(argv.remote, (c) => commands.observe(c, {
      job: argv.job === undefined ? null : checkName('job name', argv.job),
      platform: argv.platform === undefined ? null : checkName('platform', argv.platform), raw: argv.raw,
    }, commands.stdio)))
  .command('fetch <uuid>', "download a run's artifacts and verify each SHA-256",
    (y) => y.positional('uuid', { type: 'string', demandOption: true }).option('o', { alias: 'output', type: 'string', describe: 'directory (default ./UUID)' }),
    (argv) => withClient(argv.remote, (c) => commands.fetchArtifacts(c, { uuid: checkUuid(argv.uuid), dir: argv.o ?? argv.uuid, progress: process.stderr.isTTY === true }, commands.stdio)))
  .demandCommand(1, 'give a command; --help lists them')
  .strict()
  .fail((message, error) => usageError(PROGRAM, error?.message ?? message))
  .help()
  .version(false)
  .parseAsync()
  .catch((error: Error) => {
    process.stderr.write(`${PROGRAM}: ${error.message}\n`);
    process.exit(EXIT.server);
  });
