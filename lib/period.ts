/**
 * Durations ("30m", "1d12h"), schedule periods (every / cron / never) and the next due time of each.
 * Used by the client to check what a user typed and by the server to decide when a job is due.
 */
import { createRequire } from 'node:module';
import type { Period } from '../protocol/types.js';

type CronParser = typeof import('cron-parser').CronExpressionParser;
let cronParser: CronParser | null = null;

/**
 * cron-parser (CommonJS), loaded on first use: most command lines never need it, and loading it
 * costs a tenth of the client's start-up.
 */
function cron(): CronParser {
  cronParser ??= (createRequire(import.meta.url)('cron-parser') as typeof import('cron-parser')).CronExpressionParser;
  return cronParser;
}

/**
 * Loads cron-parser (and luxon, which it initialises on first use) now. The server calls it at start:
 * loaded on first use, it would hold up the first cron schedule that falls due (and every schedule
 * due with it) by tens of milliseconds.
 */
export function loadCronParser(): void {
  cron().parse('0 3 * * *', { currentDate: new Date(0), tz: 'UTC' }).next();
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 };

/** Parses a duration such as 90s, 30m, 6h, 1d, 1w or 1d12h into seconds. Throws with a one-line reason. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (!/^(\d+[smhdw])+$/.test(trimmed)) {
    throw new Error(`invalid duration '${text}': use a number and a unit s, m, h, d or w, e.g. 30m, 6h, 1d or 1d12h`);
  }
  let seconds = 0;
  for (const [, count, unit] of trimmed.matchAll(/(\d+)([smhdw])/g)) {
    seconds += Number(count) * (UNIT_SECONDS[unit as string] ?? 0);
  }
  if (seconds <= 0) throw new Error(`invalid duration '${text}': it must be longer than zero`);
  return seconds;
}

/** Formats seconds the way parseDuration reads them: 1d12h, 30m, 45s. */
export function formatDuration(seconds: number): string {
  if (seconds === 0) return '0s';
  let rest = Math.round(seconds);
  let out = '';
  for (const unit of ['w', 'd', 'h', 'm', 's']) {
    const size = UNIT_SECONDS[unit] as number;
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out;
}

const NAMED_PERIODS: Record<string, number> = { hourly: 3600, daily: 86400, weekly: 7 * 86400 };

export interface PeriodOptions {
  every?: string | undefined;
  cron?: string | undefined;
  period?: string | undefined;
}

/** Builds a period from the CLI options (at most one may be given). Default: daily. */
export function periodFromOptions(options: PeriodOptions, fallback: Period | null = { kind: 'every', seconds: 86400 }): Period | null {
  const given = [options.every, options.cron, options.period].filter((value) => value !== undefined);
  if (given.length > 1) throw new Error('give at most one of --every, --cron and --period');
  if (options.every !== undefined) return { kind: 'every', seconds: parseDuration(options.every) };
  if (options.cron !== undefined) {
    checkCron(options.cron);
    return { kind: 'cron', expression: options.cron };
  }
  if (options.period !== undefined) {
    if (options.period === 'never') return { kind: 'never' };
    const seconds = NAMED_PERIODS[options.period];
    if (seconds === undefined) throw new Error(`invalid period '${options.period}': use hourly, daily, weekly or never`);
    return { kind: 'every', seconds };
  }
  return fallback;
}

/** Throws a one-line error if `expression` is not a cron expression cron-parser understands. */
export function checkCron(expression: string): void {
  try {
    cron().parse(expression, { currentDate: new Date(0), tz: 'UTC' });
  } catch (error) {
    throw new Error(`invalid cron expression '${expression}': ${(error as Error).message}`);
  }
  const fields = expression.trim().split(/\s+/).length;
  if (expression.trim().startsWith('@') ? fields !== 1 : fields < 5 || fields > 6) {
    throw new Error(`invalid cron expression '${expression}': expected 5 fields (minute hour day month weekday), e.g. "0 3 * * *"`);
  }
}

/**
 * The first due time strictly after `after` (ms since the epoch), or null for `never`.
 * `every` periods are anchored at `anchor` (the previous due time), so a daily job stays at its hour
 * of day; if the server was down for several periods, the missed ones are skipped, not queued in a burst.
 * Cron expressions are evaluated in UTC so that a deployment behaves the same wherever it runs.
 */
export function nextDue(period: Period, after: number, anchor: number = after): number | null {
  switch (period.kind) {
    case 'never':
      return null;
    case 'every': {
      const step = period.seconds * 1000;
      if (anchor > after) return anchor;
      const periods = Math.floor((after - anchor) / step) + 1;
      return anchor + periods * step;
    }
    case 'cron':
      return nextCron(period.expression, after);
  }
}

/**
 * Per cron expression: the parsed expression, and its last answer with the time it was asked for.
 * Parsing and stepping a cron expression costs a good fraction of a millisecond (cron-parser works on
 * luxon dates), and a farm's jobs share a few cron lines: when thousands of "0 3 * * *" jobs fall due
 * at 03:00, each would pay that again while all of them wait for the same transaction. The next time
 * after `after` is the same for every `after` from the one asked last up to (not including) the
 * answer, so the answer is reused there. Bounded: cleared when it holds too many expressions.
 */
const cronCache = new Map<string, { expression: ReturnType<CronParser['parse']>; after: number; due: number }>();
const CRON_CACHE_SIZE = 10_000;

function nextCron(text: string, after: number): number {
  const cached = cronCache.get(text);
  if (cached !== undefined && cached.after <= after && after < cached.due) return cached.due;
  const expression = cached?.expression ?? cron().parse(text, { tz: 'UTC' });
  expression.reset(new Date(after));
  const due = expression.next().getTime();
  if (cached !== undefined) {
    cached.after = after;
    cached.due = due;
  } else {
    if (cronCache.size >= CRON_CACHE_SIZE) cronCache.clear();
    cronCache.set(text, { expression, after, due });
  }
  return due;
}

export function describePeriod(period: Period): string {
  switch (period.kind) {
    case 'never': return 'never';
    case 'every': return `every ${formatDuration(period.seconds)}`;
    case 'cron': return `cron "${period.expression}"`;
  }
}

/** Parses a point in time for `reschedule`: an ISO 8601 date-time, "now", or "+DURATION" from now. */
export function parseTime(text: string, now: number = Date.now()): number {
  if (text === 'now') return now;
  if (text.startsWith('+')) return now + parseDuration(text.slice(1)) * 1000;
  const ms = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(text) ? Date.parse(text) : NaN;
  // Date.parse rolls 2026-02-30 over to March 2nd; a day that does not exist is an error instead.
  const [year, month, day] = text.slice(0, 10).split('-').map(Number) as [number, number, number];
  const real = new Date(Date.UTC(year, month - 1, day));
  if (Number.isNaN(ms) || real.getUTCMonth() !== month - 1 || real.getUTCDate() !== day) {
    throw new Error(`invalid time '${text}': use an ISO 8601 time such as 2026-12-01T03:00:00Z, "now", or "+2h"`);
  }
  return ms;
}
