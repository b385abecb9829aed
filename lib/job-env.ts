/**
 * The client's reading of a job's environment: `--env KEY=VALUE`, `--env-file FILE` and
 * `--secret-env KEY=@FILE`. Each problem is one line naming the option (and file and line).
 */
import fs from 'node:fs';
import { ENV_KEY_PATTERN } from '../protocol/types.js';

function checkKey(key: string, where: string): string {
  if (key.startsWith('BUILDER_')) throw new Error(`${where}: ${key} is reserved (BUILDER_* variables are set by builder itself)`);
  if (!ENV_KEY_PATTERN.test(key)) throw new Error(`${where}: '${key}' is not a variable name (letters, digits and _, not starting with a digit)`);
  return key;
}

/** `KEY=VALUE` items of --env. The value may be empty and may contain '='. */
export function parseEnvAssignments(items: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new Error(`--env '${item}': expected KEY=VALUE`);
    env[checkKey(item.slice(0, eq), `--env '${item}'`)] = item.slice(eq + 1);
  }
  return env;
}

/**
 * An env file as docker reads one: `KEY=VALUE` per line, taken literally (no quotes, no $
 * expansion); blank lines and lines starting with # are skipped; a leading `export ` is allowed.
 */
export function parseEnvFile(text: string, file: string): Record<string, string> {
  const env: Record<string, string> = {};
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const where = `--env-file ${file}:${index + 1}`;
    const body = line.replace(/^\s*export\s+/, '');
    const eq = body.indexOf('=');
    if (eq <= 0) throw new Error(`${where}: expected KEY=VALUE, found '${line.length > 60 ? `${line.slice(0, 60)}…` : line}'`);
    env[checkKey(body.slice(0, eq).trim(), where)] = body.slice(eq + 1);
  });
  return env;
}

function readText(file: string, option: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (error) {
    throw new Error(`${option}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/** Reads every --env-file in order; later files win. */
export function readEnvFiles(files: string[]): Record<string, string> {
  return Object.assign({}, ...files.map((file) => parseEnvFile(readText(file, `--env-file ${file}`), file))) as Record<string, string>;
}

/**
 * `KEY=@FILE` items of --secret-env: the value is the file's content, without one trailing newline
 * (so `echo token > file` gives `token`). Values never come from the command line itself, where
 * they would show in the process list and the shell's history.
 */
export function readSecretEnv(items: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0 || item[eq + 1] !== '@' || item.length === eq + 2) {
      throw new Error(`--secret-env '${item.slice(0, Math.max(eq, 0)) || item}…': expected KEY=@FILE (the value is read from FILE, never given on the command line)`);
    }
    const key = checkKey(item.slice(0, eq), `--secret-env ${item.slice(0, eq)}`);
    const file = item.slice(eq + 2);
    env[key] = readText(file, `--secret-env ${key}`).replace(/\r?\n$/, '');
  }
  return env;
}
