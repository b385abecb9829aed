/**
 * Configuration files and BUILDER_* environment variables, shared by builder-server,
 * builder-worker and builder-client. One precedence, lowest to highest:
 *
 *   built-in default < config file < BUILDER_* environment variable < command-line flag
 *
 * A config file is TOML (.toml) or YAML (.yaml, .yml) holding flat `key = value` pairs whose keys
 * are the long option names exactly as on the command line (`state-dir`, `keep-runs`). The
 * environment variable of an option is BUILDER_ + its name upper-cased with - as _
 * (BUILDER_STATE_DIR). Only the options a program declares configurable are read, from either.
 * Every problem is a ConfigError whose message is one line naming the file and key, or the
 * variable. This module knows nothing of yargs; bin/args.ts applies the result to the parsed flags.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { defaultStateDir } from './platform.js';

/**
 * How a value is read. `string`: text (a number in a file is taken as its text, e.g. cpus = 2).
 * `path`: text; a relative path in a file is relative to the file's directory. `number`, `boolean`.
 * `list`: several strings (a yargs array option); in a file a list, in a variable comma-separated.
 * `comma-list`: one comma-separated string option (e.g. --labels a,b); a file may give a list.
 */
export type ConfigType = 'string' | 'path' | 'number' | 'boolean' | 'list' | 'comma-list';

export interface ConfigKey {
  type: ConfigType;
  /** Allowed values (bin/args.ts fills these in from the option's yargs `choices`). */
  choices?: readonly string[];
  /** false: settable in the file only, never from the environment. */
  env?: boolean;
}

export interface ConfigSpec {
  /** The config file's base name: `server` looks for server.toml, server.yaml, server.yml. */
  name: 'server' | 'worker' | 'client';
  /** The configurable options by long name, in the order --print-config lists them. */
  keys: Readonly<Record<string, ConfigType | ConfigKey>>;
}

export type ConfigValue = string | number | boolean | string[];

export type Origin = { kind: 'default' } | { kind: 'flag' } | { kind: 'file'; file: string } | { kind: 'env'; variable: string };

export interface LoadedConfig {
  spec: ConfigSpec;
  /** The config file read, or null. */
  file: string | null;
  /** How the file was chosen (`--config`, `BUILDER_CONFIG`, `default location`), or where none was found. */
  fileNote: string;
  /** The value of each option not given on the command line that the file or the environment sets. */
  values: Map<string, { value: ConfigValue; origin: Origin }>;
  /** The options given on the command line. */
  flags: Set<string>;
}

/** A problem with a config file or variable; the message is one line naming the file and key, or the variable. */
export class ConfigError extends Error {}

export const CONFIG_EXTENSIONS = ['.toml', '.yaml', '.yml'] as const;

/**
 * Variables that must never configure a builder program: workers set the first four in every
 * job's environment (a builder-client run inside a job must not change because of them), and the
 * others have their own meaning.
 */
export const RESERVED_VARIABLES: readonly string[] = [
  'BUILDER_UUID', 'BUILDER_JOB', 'BUILDER_PLATFORM', 'BUILDER_PROGRESS', 'BUILDER_TOKEN', 'BUILDER_CONFIG', 'BUILDER_CONFIG_DIRS',
];

/** Options every program has that are not themselves configurable. */
const NOT_CONFIGURABLE = ['config', 'print-config', 'help', 'version'];

export function envVariable(key: string): string {
  return `BUILDER_${key.toUpperCase().replace(/-/g, '_')}`;
}

export function keySpec(spec: ConfigSpec, key: string): ConfigKey {
  const entry = spec.keys[key];
  if (entry === undefined) throw new Error(`${key} is not a configurable option`);
  return typeof entry === 'string' ? { type: entry } : entry;
}

/** Refuses (as a programming error) a declaration that would read a reserved variable. */
function checkSpec(spec: ConfigSpec): void {
  for (const key of Object.keys(spec.keys)) {
    if (!/^[a-z][a-z0-9]*(-[a-z0-9]+)*$/.test(key) || NOT_CONFIGURABLE.includes(key)) throw new Error(`'${key}' cannot be a configurable option`);
    if (keySpec(spec, key).env !== false && RESERVED_VARIABLES.includes(envVariable(key))) {
      throw new Error(`option '${key}' cannot be read from ${envVariable(key)}, which has another meaning; declare it with env: false`);
    }
  }
}

/** The system-wide config directory: /etc/builder, or /usr/local/etc/builder on FreeBSD. */
export function systemConfigDir(): string {
  return os.platform() === 'freebsd' ? '/usr/local/etc/builder' : '/etc/builder';
}

/**
 * The directories searched for the default config file, in order. The server looks in its state
 * directory first. BUILDER_CONFIG_DIRS (colon-separated; empty: none) replaces the rest:
 * ~/.config/builder (or $XDG_CONFIG_HOME/builder) for the client, then the system directory.
 */
export function configSearchDirs(spec: ConfigSpec, env: NodeJS.ProcessEnv, stateDirFlag: string | undefined): string[] {
  const dirs: string[] = [];
  if (spec.name === 'server') dirs.push(path.resolve(stateDirFlag ?? (env.BUILDER_STATE_DIR || defaultStateDir())));
  if (env.BUILDER_CONFIG_DIRS !== undefined) {
    dirs.push(...env.BUILDER_CONFIG_DIRS.split(':').filter((dir) => dir !== '').map((dir) => path.resolve(dir)));
  } else {
    if (spec.name === 'client') {
      const xdg = env.XDG_CONFIG_HOME;
      dirs.push(path.join(xdg !== undefined && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.config'), 'builder'));
    }
    dirs.push(systemConfigDir());
  }
  return dirs;
}

function checkExtension(file: string): void {
  if (!(CONFIG_EXTENSIONS as readonly string[]).includes(path.extname(file).toLowerCase())) {
    throw new ConfigError(`${file}: cannot tell whether it is TOML or YAML: name it *.toml, *.yaml or *.yml`);
  }
}

/** The config file to read: --config, else $BUILDER_CONFIG (either must exist), else the first found in the search directories. */
export function chooseConfigFile(spec: ConfigSpec, env: NodeJS.ProcessEnv, configFlag: string | undefined, stateDirFlag: string | undefined): { file: string | null; note: string } {
  const explicit = configFlag !== undefined ? { file: configFlag, source: '--config' }
    : env.BUILDER_CONFIG ? { file: env.BUILDER_CONFIG, source: 'BUILDER_CONFIG' } : null;
  if (explicit !== null) {
    if (explicit.file === '') throw new ConfigError(`${explicit.source}: give the config file, e.g. ${explicit.source === '--config' ? '--config ' : 'BUILDER_CONFIG='}${path.join(systemConfigDir(), `${spec.name}.toml`)}`);
    const file = path.resolve(explicit.file);
    checkExtension(file);
    if (!fs.existsSync(file)) throw new ConfigError(`${explicit.source}: ${file} does not exist`);
    return { file, note: explicit.source };
  }
  const dirs = configSearchDirs(spec, env, stateDirFlag);
  for (const dir of dirs) {
    for (const extension of CONFIG_EXTENSIONS) {
      const file = path.join(dir, `${spec.name}${extension}`);
      if (fs.existsSync(file)) return { file, note: 'default location' };
    }
  }
  const names = CONFIG_EXTENSIONS.map((extension) => `${spec.name}${extension}`).join(', ');
  return { file: null, note: dirs.length === 0 ? 'BUILDER_CONFIG_DIRS is empty: nowhere to look' : `none of ${names} in ${dirs.join(', ')}` };
}

// The parsers are loaded only when a config file is read: most runs have none, and loading both
// took a third of the client's start-up. (Both ship CommonJS builds, so they load synchronously.)
const load = createRequire(import.meta.url);

/** Parses a TOML or YAML file into its top-level pairs; syntax errors name the file and line. */
export function parseConfigText(file: string, text: string): Record<string, unknown> {
  const source = text.replace(/^\uFEFF/, '');
  if (path.extname(file).toLowerCase() === '.toml') {
    const { TomlError, parse: parseToml } = load('smol-toml') as typeof import('smol-toml');
    try {
      return parseToml(source) as Record<string, unknown>;
    } catch (error) {
      if (!(error instanceof TomlError)) throw error;
      const problem = (error.message.split('\n')[0] ?? '').replace(/^Invalid TOML document: /, '');
      throw new ConfigError(`${file}: line ${error.line}: invalid TOML: ${problem}`);
    }
  }
  const { parseDocument } = load('yaml') as typeof import('yaml');
  const document = parseDocument(source);
  const error = document.errors[0];
  if (error !== undefined) {
    const problem = (error.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
    const line = error.linePos?.[0].line;
    throw new ConfigError(`${file}: ${line === undefined ? '' : `line ${line}: `}invalid YAML: ${problem}`);
  }
  const data: unknown = document.toJS();
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError(`${file}: expected key: value pairs at the top level, not ${Array.isArray(data) ? 'a list' : describe(data)}`);
  }
  return data as Record<string, unknown>;
}

/** A value as an error message shows it: strings quoted, lists and tables in brief. */
function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (value === null) return 'null';
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'a date' : value.toISOString();
  if (value instanceof Uint8Array) return 'binary data';
  if (Array.isArray(value)) return `[${value.map(describe).join(', ')}]`;
  if (typeof value === 'object' && typeof (value as { toISOString?: unknown }).toISOString === 'function') {
    return (value as { toISOString: () => string }).toISOString();
  }
  return 'a table';
}

function isTable(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date) && !(value instanceof Uint8Array)
    && typeof (value as { toISOString?: unknown }).toISOString !== 'function';
}

function checkChoice(key: ConfigKey, value: string, problem: (what: string) => ConfigError): string {
  if (key.choices !== undefined && !key.choices.includes(value)) throw problem(`must be one of ${key.choices.join(', ')}`);
  return value;
}

/** A value from a file, checked against its option's type; null means "not set". */
function fileValue(file: string, name: string, key: ConfigKey, value: unknown): ConfigValue | null {
  const problem = (what: string): ConfigError => new ConfigError(`${file}: key '${name}' ${what}, not ${describe(value)}`);
  const isStrings = (list: unknown): list is string[] => Array.isArray(list) && list.every((item) => typeof item === 'string');
  if (value === null || value === undefined) return null;
  switch (key.type) {
    case 'string':
      if (typeof value === 'number' && Number.isFinite(value)) return checkChoice(key, String(value), problem);
      if (typeof value !== 'string') throw problem('must be a string');
      return checkChoice(key, value, problem);
    case 'path':
      if (typeof value !== 'string') throw problem('must be a string (a path)');
      if (value === '') throw problem('must be a path');
      return path.resolve(path.dirname(file), value);
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) throw problem('must be a number');
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw problem('must be true or false');
      return value;
    case 'list':
      if (!isStrings(value)) throw problem('must be a list of strings');
      for (const item of value) checkChoice(key, item, problem);
      return value;
    case 'comma-list':
      if (typeof value === 'string') return value;
      if (!isStrings(value)) throw problem('must be a list of strings or one comma-separated string');
      if (value.some((item) => item.includes(','))) throw problem('must not have commas inside its items');
      return value.join(',');
  }
}

/** Reads and checks a config file: every key known, every value of its option's type. */
export function readConfigFile(spec: ConfigSpec, file: string): Map<string, ConfigValue> {
  checkExtension(file);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`${file}: cannot read it: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const data = parseConfigText(file, text);
  const known = Object.keys(spec.keys);
  const values = new Map<string, ConfigValue>();
  for (const [name, value] of Object.entries(data)) {
    if (isTable(value)) {
      throw new ConfigError(`${file}: key '${name}' is a table; nested tables are not allowed: give each option as a top-level key, named as on the command line`);
    }
    if (!known.includes(name)) {
      const spelled = name.replace(/_/g, '-').replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
      const hint = known.includes(spelled) ? `did you mean '${spelled}'?` : `known keys: ${known.join(', ')}`;
      throw new ConfigError(`${file}: unknown key '${name}' (${hint})`);
    }
    const checked = fileValue(file, name, keySpec(spec, name), value);
    if (checked !== null) values.set(name, checked);
  }
  return values;
}

const TRUE_WORDS = ['true', '1', 'yes'];
const FALSE_WORDS = ['false', '0', 'no'];

/** A value from an environment variable, parsed by its option's type. */
export function envValue(variable: string, key: ConfigKey, text: string): ConfigValue {
  const problem = (what: string): ConfigError => new ConfigError(`${variable}: '${text}' ${what}`);
  const splitList = (): string[] => text.split(',').map((item) => item.trim()).filter((item) => item !== '');
  switch (key.type) {
    case 'string':
      return checkChoice(key, text, problem);
    case 'path':
      return text;
    case 'number': {
      if (!/^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$/.test(text)) throw problem('is not a number');
      return Number(text);
    }
    case 'boolean': {
      const word = text.trim().toLowerCase();
      if (TRUE_WORDS.includes(word)) return true;
      if (FALSE_WORDS.includes(word)) return false;
      throw problem('is not true or false (use true, false, 1, 0, yes or no)');
    }
    case 'list': {
      const items = splitList();
      for (const item of items) checkChoice(key, item, problem);
      return items;
    }
    case 'comma-list':
      return text;
  }
}

function camelCase(key: string): string {
  return key.replace(/-([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());
}

/**
 * The configurable options given on the command line: --name, --name=…, --no-name, yargs's
 * camel-case spellings and the options' aliases (-o, -ovalue), before a bare `--`.
 */
export function flagsGiven(spec: ConfigSpec, args: readonly string[], aliases: Readonly<Record<string, readonly string[]>> = {}): Set<string> {
  const given = new Set<string>();
  for (const arg of args) {
    if (arg === '--') break;
    if (!arg.startsWith('-') || arg.length < 2) continue;
    const long = arg.startsWith('--');
    const name = long ? (arg.slice(2).split('=')[0] ?? '') : arg.slice(1, 2);
    for (const key of Object.keys(spec.keys)) {
      const spellings = [key, camelCase(key), ...(aliases[key] ?? [])];
      const matches = long
        ? spellings.some((spelling) => name === spelling || name === `no-${spelling}`)
        : spellings.some((spelling) => spelling === name);
      if (matches) given.add(key);
    }
  }
  return given;
}

/** The value of the last `--name VALUE` or `--name=VALUE` before a bare `--` ('' when none follows), or undefined. */
export function flagValue(args: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < args.length; i += 1) {
    const arg = args[i] as string;
    if (arg === '--') break;
    if (arg.startsWith(`--${name}=`)) value = arg.slice(name.length + 3);
    else if (arg === `--${name}`) {
      const next = args[i + 1];
      value = next === undefined || (next.startsWith('-') && next !== '-') ? '' : next;
    }
  }
  return value;
}

/**
 * Reads the config file and the environment. `configFlag` and `stateDirFlag` are the values of
 * --config and --state-dir on the command line, if given. Throws a ConfigError for the first problem.
 */
export function loadConfig(spec: ConfigSpec, options: {
  args: readonly string[]; env: NodeJS.ProcessEnv; configFlag?: string; stateDirFlag?: string;
  /** Other spellings of options on the command line (yargs aliases), by option. */
  aliases?: Readonly<Record<string, readonly string[]>>;
}): LoadedConfig {
  checkSpec(spec);
  const { env } = options;
  const { file, note } = chooseConfigFile(spec, env, options.configFlag, options.stateDirFlag);
  const flags = flagsGiven(spec, options.args, options.aliases);
  const values = new Map<string, { value: ConfigValue; origin: Origin }>();
  const fromFile = file === null ? new Map<string, ConfigValue>() : readConfigFile(spec, file);
  for (const key of Object.keys(spec.keys)) {
    const declared = keySpec(spec, key);
    const variable = envVariable(key);
    const text = declared.env === false ? undefined : env[variable];
    // Checked even when a flag overrides it: a bad value is a mistake worth hearing about.
    const fromEnv = text === undefined || text === '' ? undefined : envValue(variable, declared, text);
    if (flags.has(key)) continue;
    if (fromEnv !== undefined) values.set(key, { value: fromEnv, origin: { kind: 'env', variable } });
    else if (fromFile.has(key) && file !== null) values.set(key, { value: fromFile.get(key) as ConfigValue, origin: { kind: 'file', file } });
  }
  return { spec, file, fileNote: note, values, flags };
}

export function originOf(loaded: LoadedConfig, key: string): Origin {
  if (loaded.flags.has(key)) return { kind: 'flag' };
  return loaded.values.get(key)?.origin ?? { kind: 'default' };
}

function formatOrigin(origin: Origin): string {
  switch (origin.kind) {
    case 'default': return 'default';
    case 'flag': return 'flag';
    case 'file': return `file ${origin.file}`;
    case 'env': return `env ${origin.variable}`;
  }
}

function formatValue(key: string, value: unknown): string {
  if (value === undefined || value === null) return '-';
  if (key.endsWith('-secret')) return '***';
  if (Array.isArray(value)) return value.length === 0 ? '[]' : value.map(String).join(',');
  if (value === '') return '""';
  return String(value);
}

/**
 * --print-config: the file used (or where none was found), then `key = value   (origin)` for every
 * configurable option, aligned, with `value(key)` the value in effect after the flags.
 */
export function formatConfig(loaded: LoadedConfig, value: (key: string) => unknown): string {
  const keys = Object.keys(loaded.spec.keys);
  const rows = keys.map((key) => [key, formatValue(key, value(key)), formatOrigin(originOf(loaded, key))] as const);
  const keyWidth = Math.max(...rows.map(([key]) => key.length));
  const valueWidth = Math.max(...rows.map(([, shown]) => shown.length));
  const head = loaded.file === null ? `no config file (${loaded.fileNote})` : `config file: ${loaded.file} (${loaded.fileNote})`;
  return [head, ...rows.map(([key, shown, origin]) => `${key.padEnd(keyWidth)} = ${shown.padEnd(valueWidth)}  (${origin})`)].join('\n') + '\n';
}
