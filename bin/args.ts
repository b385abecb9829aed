/** Argument helpers shared by the three entry points: one-line usage errors and exit status 1. */
import { parseDuration } from '../lib/period.js';

export function usageError(program: string, message: string): never {
  process.stderr.write(`${program}: ${message}\n`);
  process.exit(1);
}

/** Parses a duration option into seconds, or exits 1 naming the option. */
export function durationOption(program: string, option: string, value: string): number {
  try {
    return parseDuration(value);
  } catch (error) {
    return usageError(program, `--${option}: ${(error as Error).message}`);
  }
}

export const DEFAULT_REMOTE = '127.0.0.1:1234';

export function remoteDefault(): string {
  return process.env.BUILDER_REMOTE ?? DEFAULT_REMOTE;
}
