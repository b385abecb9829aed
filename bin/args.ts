/** Argument helpers shared by the three entry points: one-line usage errors and exit status 1. */
import fs from 'node:fs';
import type { Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import {
  ConfigError, type ConfigKey, type ConfigSpec, type LoadedConfig, flagValue, formatConfig, keySpec, loadConfig, systemConfigDir,
} from '../lib/config.js';
import { formatDuration, parseDuration } from '../lib/period.js';
import { defaultStateDir } from '../lib/platform.js';
import { type DialTls, parseAddress } from '../protocol/connection.js';
import { MAX_TIMEOUT_SECONDS, webhookUrlProblem } from '../protocol/types.js';

export function usageError(program: string, message: string): never {
  process.stderr.write(`${program}: ${message}\n`);
  process.exit(1);
}

/** Parses a duration option into seconds (at most `max`), or exits 1 naming the option. */
export function durationOption(program: string, option: string, value: string, max = MAX_TIMEOUT_SECONDS): number {
  let seconds: number;
  try {
    seconds = parseDuration(value);
  } catch (error) {
    return usageError(program, `${optionName(option)}: ${(error as Error).message}`);
  }
  if (seconds > max) usageError(program, `${optionName(option)}: ${value} is longer than the maximum of ${formatDuration(max)}`);
  return seconds;
}

/** A duration that may be shorter than a second (250ms), in milliseconds; or exits 1 naming the option. */
export function millisecondsOption(program: string, option: string, value: string): number {
  const ms = /^\s*(\d+)ms\s*$/.exec(value);
  if (ms !== null) {
    if (Number(ms[1]) < 1) usageError(program, `${optionName(option)}: '${value}' must be longer than zero`);
    return Number(ms[1]);
  }
  return durationOption(program, option, value, 86400) * 1000;
}

/** Checks an http(s) URL, or exits 1 naming the option. */
export function urlOption(program: string, option: string, value: string): string {
  const problem = webhookUrlProblem(value);
  if (problem === 'not-http') usageError(program, `${optionName(option)}: '${value}' is not an http:// or https:// URL`);
  if (problem === 'credentials') {
    usageError(program, `${optionName(option)}: a URL must not hold a user name or password (they would show in logs and in show); sign deliveries with the server's --notify-secret-file instead`);
  }
  return value;
}

/** The bytes of a secret file (its first line), or null when the option is not given; exits 1 naming it. */
export function secretFileOption(program: string, option: string, file: string | undefined): Buffer | null {
  if (file === undefined) return null;
  const secret = readOption(program, option, file).toString('utf8').split('\n')[0]?.trim() ?? '';
  if (secret === '') usageError(program, `${optionName(option)}: ${file} is empty`);
  return Buffer.from(secret, 'utf8');
}

/** Checks a limit given as a whole number of at least `min`, or exits 1 naming the option. */
export function limitOption(program: string, option: string, value: number, min = 1): number {
  if (!Number.isSafeInteger(value) || value < min) usageError(program, `${optionName(option)}: '${value}' must be a whole number, at least ${min}`);
  return value;
}

/** Checks a whole-number option of at least 1, or exits 1 naming the option. */
export function countOption(program: string, option: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 1_000_000) usageError(program, `${optionName(option)}: '${value}' is not a whole number from 1 to 1000000`);
  return value;
}

/** Checks a HOST:PORT option, or exits 1 naming the option. */
export function addressOption(program: string, option: string, value: string): string {
  try {
    parseAddress(value);
  } catch (error) {
    usageError(program, `${optionName(option)}: ${(error as Error).message}`);
  }
  return value;
}

/**
 * The token to present: read from --token-file (its first line), else $BUILDER_TOKEN, else none.
 * An unreadable or empty file exits 1 naming it.
 */
export function tokenOption(program: string, file: string | undefined): string | undefined {
  if (file === undefined) return process.env.BUILDER_TOKEN?.trim() || undefined;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    return usageError(program, `${optionName('token-file')}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const token = text.split('\n')[0]?.trim() ?? '';
  if (token === '') usageError(program, `${optionName('token-file')}: ${file} is empty; it should hold the token printed by builder-server token add`);
  return token;
}

function readOption(program: string, option: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    return usageError(program, `${optionName(option)}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/** Client and worker: TLS with the CAs in --tls-ca, or the system's with --tls; null: plain TCP. */
export function dialTlsOption(program: string, caFile: string | undefined, useTls: boolean): DialTls | null {
  if (caFile !== undefined) return { ca: readOption(program, 'tls-ca', caFile) };
  return useTls ? { ca: null } : null;
}

/** Server: --tls-cert and --tls-key, both or neither. */
export function serverTlsOption(program: string, certFile: string | undefined, keyFile: string | undefined): { cert: Buffer; key: Buffer } | null {
  if (certFile === undefined && keyFile === undefined) return null;
  if (certFile === undefined || keyFile === undefined) usageError(program, 'give both --tls-cert and --tls-key, or neither');
  return { cert: readOption(program, 'tls-cert', certFile), key: readOption(program, 'tls-key', keyFile) };
}

export const DEFAULT_REMOTE = '127.0.0.1:1234';

export function remoteDefault(): string {
  return process.env.BUILDER_REMOTE || DEFAULT_REMOTE;
}

/** The config file and environment in effect, once withConfig has applied them. */
let loadedConfig: LoadedConfig | null = null;

/**
 * How an error message names an option: `--name` when given as a flag or left at its default, else
 * where its value came from: `FILE: key 'name'` or `BUILDER_NAME`.
 */
export function optionName(option: string): string {
  const origin = loadedConfig?.values.get(option)?.origin;
  if (origin?.kind === 'file') return `${origin.file}: key '${option}'`;
  if (origin?.kind === 'env') return origin.variable;
  return `--${option}`;
}

/** What withConfig reads of yargs's own option table (yargs's getOptions(), which its types omit). */
interface YargsOptionTable {
  key: Record<string, unknown>;
  boolean: string[];
  number: string[];
  array: string[];
  choices: Record<string, unknown[] | undefined>;
  alias: Record<string, string[] | undefined>;
}

/** The spec with each option's yargs choices; refuses (a programming error) a key whose yargs option is missing or of another type. */
function specWithChoices(spec: ConfigSpec, table: YargsOptionTable): ConfigSpec {
  const keys: Record<string, ConfigKey> = {};
  for (const name of Object.keys(spec.keys)) {
    const key = keySpec(spec, name);
    const yargsType = !(name in table.key) ? 'missing' : table.array.includes(name) ? 'list' : table.boolean.includes(name) ? 'boolean'
      : table.number.includes(name) ? 'number' : 'string';
    const expected = key.type === 'path' || key.type === 'comma-list' ? 'string' : key.type;
    if (yargsType !== expected) {
      throw new Error(`bin/config-keys.ts: the ${spec.name}'s configurable option '${name}' is declared '${key.type}', but its yargs option is ${yargsType === 'missing' ? 'not declared' : `a ${yargsType}`}`);
    }
    const choices = table.choices[name];
    keys[name] = choices === undefined ? key : { ...key, choices: choices.map(String) };
  }
  return { ...spec, keys };
}

function configFileDescription(spec: ConfigSpec): string {
  const places = [
    ...(spec.name === 'server' ? ['the state directory'] : []),
    ...(spec.name === 'client' ? ['~/.config/builder'] : []),
    systemConfigDir(),
  ];
  return `TOML or YAML config file (env BUILDER_CONFIG; default: the first ${spec.name}.toml, .yaml or .yml found in ${places.join(', then ')})`;
}

/**
 * Adds --config FILE and --print-config to a program's yargs, and a middleware that applies the
 * config file and the BUILDER_* variables of the options in `spec` to every option not given on
 * the command line (default < file < environment < flag). A bad file or variable exits 1 with one
 * line; --print-config prints the options, their values and origins, and exits 0.
 */
export function withConfig<T>(y: Argv<T>, program: string, spec: ConfigSpec) {
  const args = hideBin(process.argv);
  const apply = (argv: Record<string, unknown>, instance?: { getOptions(): YargsOptionTable }): void => {
    if (instance === undefined) throw new Error('yargs did not pass itself to the middleware');
    const table = instance.getOptions();
    const aliases: Record<string, string[]> = {};
    for (const name of Object.keys(spec.keys)) aliases[name] = table.alias[name] ?? [];
    let loaded: LoadedConfig;
    try {
      loaded = loadConfig(specWithChoices(spec, table), {
        args, env: process.env, aliases, configFlag: flagValue(args, 'config'), stateDirFlag: flagValue(args, 'state-dir'),
      });
    } catch (error) {
      if (error instanceof ConfigError) usageError(program, error.message);
      throw error;
    }
    loadedConfig = loaded;
    for (const [name, { value }] of loaded.values) {
      for (const spelling of [name, name.replace(/-([a-z0-9])/g, (_, letter: string) => letter.toUpperCase()), ...(aliases[name] ?? [])]) argv[spelling] = value;
    }
    if (argv['print-config'] === true) {
      process.stdout.write(formatConfig(loaded, (name) => argv[name]));
      process.exit(0);
    }
  };
  return y
    .option('config', { type: 'string', describe: configFileDescription(spec), global: true })
    .option('print-config', { type: 'boolean', default: false, describe: 'print every configurable option, its value and where it came from, then exit', global: true })
    .middleware(apply as unknown as (argv: unknown) => void, true);
}

/**
 * builder-server token: the state directory from --state-dir, else BUILDER_STATE_DIR, else the
 * config file (--config, BUILDER_CONFIG or the default search), else the default.
 */
export function configuredStateDir(program: string, spec: ConfigSpec, stateDirFlag: string | undefined): string {
  if (stateDirFlag !== undefined) return stateDirFlag;
  const args = hideBin(process.argv);
  try {
    const loaded = loadConfig(spec, { args, env: process.env, configFlag: flagValue(args, 'config') });
    const value = loaded.values.get('state-dir')?.value;
    return typeof value === 'string' ? value : defaultStateDir();
  } catch (error) {
    if (error instanceof ConfigError) usageError(program, error.message);
    throw error;
  }
}
