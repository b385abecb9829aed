/** Argument helpers shared by the three entry points: one-line usage errors and exit status 1. */
import fs from 'node:fs';
import { formatDuration, parseDuration } from '../lib/period.js';
import { type DialTls, parseAddress } from '../protocol/connection.js';
import { MAX_TIMEOUT_SECONDS } from '../protocol/types.js';

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
    return usageError(program, `--${option}: ${(error as Error).message}`);
  }
  if (seconds > max) usageError(program, `--${option}: ${value} is longer than the maximum of ${formatDuration(max)}`);
  return seconds;
}

/** Checks a limit given as a whole number of at least `min`, or exits 1 naming the option. */
export function limitOption(program: string, option: string, value: number, min = 1): number {
  if (!Number.isSafeInteger(value) || value < min) usageError(program, `--${option}: '${value}' must be a whole number, at least ${min}`);
  return value;
}

/** Checks a whole-number option of at least 1, or exits 1 naming the option. */
export function countOption(program: string, option: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 1_000_000) usageError(program, `--${option}: '${value}' is not a whole number from 1 to 1000000`);
  return value;
}

/** Checks a HOST:PORT option, or exits 1 naming the option. */
export function addressOption(program: string, option: string, value: string): string {
  try {
    parseAddress(value);
  } catch (error) {
    usageError(program, `--${option}: ${(error as Error).message}`);
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
    return usageError(program, `--token-file: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const token = text.split('\n')[0]?.trim() ?? '';
  if (token === '') usageError(program, `--token-file: ${file} is empty; it should hold the token printed by builder-server token add`);
  return token;
}

function readOption(program: string, option: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    return usageError(program, `--${option}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
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
  return process.env.BUILDER_REMOTE ?? DEFAULT_REMOTE;
}
