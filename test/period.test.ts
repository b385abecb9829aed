import { describe, expect, it } from 'vitest';
import {
  checkCron, describePeriod, formatDuration, nextDue, parseDuration, parseTime, periodFromOptions,
} from '../lib/period.js';

const HOUR = 3600;
const DAY = 86400;
const iso = (text: string): number => {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new Error(`bad test date ${text}`);
  return ms;
};

describe('parseDuration', () => {
  it.each([
    ['90s', 90],
    ['30m', 1800],
    ['6h', 6 * HOUR],
    ['1d', DAY],
    ['1w', 7 * DAY],
    ['1d12h', 129600],
    ['2w3d4h5m6s', 2 * 7 * DAY + 3 * DAY + 4 * HOUR + 5 * 60 + 6],
    ['0m30s', 30],
    ['1h1h', 2 * HOUR],
    ['00001s', 1],
    [' 30m ', 1800],
  ])('%j is %i seconds', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each(['', '5', 'd', '1x', '-1h', '1.5h', '30M', '1 h', '1h 30m', 'h1', '1hh', 'forever', '+1h'])('refuses %j naming the input and the formats', (text) => {
    expect(() => parseDuration(text)).toThrow(
      `invalid duration '${text}': use a number and a unit s, m, h, d or w, e.g. 30m, 6h, 1d or 1d12h`,
    );
  });

  it.each(['0s', '0m', '0d0h', '000w'])('refuses the zero duration %j', (text) => {
    expect(() => parseDuration(text)).toThrow(`invalid duration '${text}': it must be longer than zero`);
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0s'],
    [1, '1s'],
    [59, '59s'],
    [60, '1m'],
    [90, '1m30s'],
    [1800, '30m'],
    [HOUR, '1h'],
    [DAY, '1d'],
    [129600, '1d12h'],
    [7 * DAY, '1w'],
    [7 * DAY + DAY + HOUR + 60 + 1, '1w1d1h1m1s'],
    [90.4, '1m30s'],
  ])('formats %d as %j', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it('round-trips through parseDuration', () => {
    for (const seconds of [1, 2, 59, 60, 61, 3599, 3600, 3601, 86399, 86400, 129600, 604799, 604800, 694861, 10 * 365 * DAY]) {
      expect(parseDuration(formatDuration(seconds))).toBe(seconds);
    }
    for (const text of ['90s', '30m', '6h', '1d', '1w', '1d12h', '2w3d']) {
      expect(formatDuration(parseDuration(text))).toBe(text === '90s' ? '1m30s' : text);
    }
  });
});

describe('periodFromOptions', () => {
  it('defaults to daily (every 86400 s)', () => {
    expect(periodFromOptions({})).toEqual({ kind: 'every', seconds: 86400 });
    expect(periodFromOptions({ every: undefined, cron: undefined, period: undefined })).toEqual({ kind: 'every', seconds: 86400 });
  });

  it('returns the given fallback when nothing is given', () => {
    expect(periodFromOptions({}, null)).toBeNull();
    expect(periodFromOptions({}, { kind: 'never' })).toEqual({ kind: 'never' });
  });

  it.each([
    ['hourly', { kind: 'every', seconds: 3600 }],
    ['daily', { kind: 'every', seconds: 86400 }],
    ['weekly', { kind: 'every', seconds: 604800 }],
    ['never', { kind: 'never' }],
  ])('--period %s', (period, expected) => {
    expect(periodFromOptions({ period })).toEqual(expected);
    expect(periodFromOptions({ period }, null)).toEqual(expected);
  });

  it('--every and --cron', () => {
    expect(periodFromOptions({ every: '1d12h' })).toEqual({ kind: 'every', seconds: 129600 });
    expect(periodFromOptions({ cron: '0 3 * * *' })).toEqual({ kind: 'cron', expression: '0 3 * * *' });
  });

  it('refuses more than one option', () => {
    const message = 'give at most one of --every, --cron and --period';
    expect(() => periodFromOptions({ every: '1h', cron: '0 3 * * *' })).toThrow(message);
    expect(() => periodFromOptions({ every: '1h', period: 'daily' })).toThrow(message);
    expect(() => periodFromOptions({ cron: '0 3 * * *', period: 'never' })).toThrow(message);
    expect(() => periodFromOptions({ every: '1h', cron: '0 3 * * *', period: 'never' })).toThrow(message);
  });

  it('refuses an unknown period name, a bad duration and an invalid cron expression', () => {
    expect(() => periodFromOptions({ period: 'monthly' })).toThrow("invalid period 'monthly': use hourly, daily, weekly or never");
    expect(() => periodFromOptions({ every: '1x' })).toThrow("invalid duration '1x'");
    expect(() => periodFromOptions({ cron: 'nonsense' })).toThrow("invalid cron expression 'nonsense'");
    expect(() => periodFromOptions({ cron: '* * *' })).toThrow("invalid cron expression '* * *'");
  });
});

describe('checkCron', () => {
  it.each(['0 3 * * *', '*/15 * * * *', '0 3 * * MON', '0 0 1 1 *', '30 2 * * 1-5', '0 0 3 * * *', '@daily', '@hourly', '  0 3 * * *  '])('accepts %j', (expression) => {
    expect(() => checkCron(expression)).not.toThrow();
  });

  it.each(['nonsense', '61 * * * *', '0 25 * * *', '0 0 32 * *', '0 0 0 3 * * *', 'x', '   '])('refuses %j naming the expression', (expression) => {
    expect(() => checkCron(expression)).toThrow(`invalid cron expression '${expression}': `);
  });

  it.each(['* * *', '* * * *', ''])('refuses %j for its number of fields, with an example', (expression) => {
    expect(() => checkCron(expression)).toThrow(
      `invalid cron expression '${expression}': expected 5 fields (minute hour day month weekday), e.g. "0 3 * * *"`,
    );
  });
});

describe('nextDue', () => {
  const hourly = { kind: 'every', seconds: 3600 } as const;
  const daily = { kind: 'every', seconds: 86400 } as const;

  it('never → null', () => {
    expect(nextDue({ kind: 'never' }, 0)).toBeNull();
    expect(nextDue({ kind: 'never' }, iso('2026-01-01T00:00:00Z'), 0)).toBeNull();
  });

  it('every: without an anchor, one period after `after`', () => {
    const now = iso('2026-01-01T05:17:00Z');
    expect(nextDue(hourly, now)).toBe(now + 3600_000);
    expect(nextDue(daily, now)).toBe(now + 86_400_000);
  });

  it('every: anchored at the previous due time keeps the time of day', () => {
    const anchor = iso('2026-01-01T03:00:00Z');
    expect(nextDue(daily, iso('2026-01-01T03:00:05Z'), anchor)).toBe(iso('2026-01-02T03:00:00Z'));
    expect(nextDue(daily, iso('2026-01-01T23:59:59Z'), anchor)).toBe(iso('2026-01-02T03:00:00Z'));
  });

  it('every: the result is strictly after `after`, even when `after` is exactly on a due time', () => {
    const anchor = iso('2026-01-01T03:00:00Z');
    expect(nextDue(daily, anchor, anchor)).toBe(iso('2026-01-02T03:00:00Z'));
    expect(nextDue(daily, iso('2026-01-03T03:00:00Z'), anchor)).toBe(iso('2026-01-04T03:00:00Z'));
    expect(nextDue(daily, iso('2026-01-03T02:59:59.999Z'), anchor)).toBe(iso('2026-01-03T03:00:00Z'));
  });

  it('every: skips missed periods instead of queuing them in a burst', () => {
    const anchor = iso('2020-01-01T03:00:00Z');
    const after = iso('2026-01-01T05:00:00Z');
    const due = nextDue(daily, after, anchor) as number;
    expect(due).toBe(iso('2026-01-02T03:00:00Z'));
    expect(due).toBeGreaterThan(after);
    expect(due - 86_400_000).toBeLessThanOrEqual(after);
    expect((due - anchor) % 86_400_000).toBe(0);
  });

  it('every: with an anchor far in the past, the first anchor + k*step strictly after `after`', () => {
    const step = 7 * 1000; // 7-second period
    const period = { kind: 'every', seconds: 7 } as const;
    const anchor = 1_000;
    for (const after of [1_000, 1_001, 7_999, 8_000, 8_001, 1_000_000, 123_456_789]) {
      const expected = anchor + (Math.floor((after - anchor) / step) + 1) * step;
      const due = nextDue(period, after, anchor) as number;
      expect(due).toBe(expected);
      expect(due).toBeGreaterThan(after);
      expect(due - step).toBeLessThanOrEqual(after);
    }
  });

  it('every: an anchor in the future is returned as is', () => {
    const after = iso('2026-01-01T00:00:00Z');
    const anchor = iso('2026-01-05T00:00:00Z');
    expect(nextDue(daily, after, anchor)).toBe(anchor);
  });

  it('cron is evaluated in UTC', () => {
    const period = { kind: 'cron', expression: '0 3 * * *' } as const;
    expect(nextDue(period, iso('2026-01-01T05:00:00Z'))).toBe(iso('2026-01-02T03:00:00Z'));
    expect(nextDue(period, iso('2026-01-01T02:59:59.999Z'))).toBe(iso('2026-01-01T03:00:00Z'));
    expect(nextDue(period, iso('2026-01-01T00:00:00Z'))).toBe(iso('2026-01-01T03:00:00Z'));
  });

  it('cron: strictly after `after`', () => {
    const period = { kind: 'cron', expression: '0 3 * * *' } as const;
    expect(nextDue(period, iso('2026-01-01T03:00:00Z'))).toBe(iso('2026-01-02T03:00:00Z'));
    expect(nextDue(period, iso('2026-01-01T03:00:00.500Z'))).toBe(iso('2026-01-02T03:00:00Z'));
  });

  it('cron: */15 minutes', () => {
    const period = { kind: 'cron', expression: '*/15 * * * *' } as const;
    expect(nextDue(period, iso('2026-01-01T05:07:00Z'))).toBe(iso('2026-01-01T05:15:00Z'));
    expect(nextDue(period, iso('2026-01-01T05:15:00Z'))).toBe(iso('2026-01-01T05:30:00Z'));
    expect(nextDue(period, iso('2026-01-01T23:50:00Z'))).toBe(iso('2026-01-02T00:00:00Z'));
  });

  it('cron: ignores the anchor', () => {
    const period = { kind: 'cron', expression: '0 3 * * *' } as const;
    expect(nextDue(period, iso('2026-01-01T05:00:00Z'), 0)).toBe(iso('2026-01-02T03:00:00Z'));
  });

  it('cron: weekdays and month boundaries', () => {
    // 2026-01-01 is a Thursday; the next Monday is 2026-01-05
    expect(nextDue({ kind: 'cron', expression: '0 3 * * MON' }, iso('2026-01-01T05:00:00Z'))).toBe(iso('2026-01-05T03:00:00Z'));
    expect(nextDue({ kind: 'cron', expression: '0 0 1 * *' }, iso('2026-01-31T12:00:00Z'))).toBe(iso('2026-02-01T00:00:00Z'));
    expect(nextDue({ kind: 'cron', expression: '@daily' }, iso('2026-01-01T05:15:00Z'))).toBe(iso('2026-01-02T00:00:00Z'));
  });
});

describe('describePeriod', () => {
  it('says what each period means', () => {
    expect(describePeriod({ kind: 'never' })).toBe('never');
    expect(describePeriod({ kind: 'every', seconds: 129600 })).toBe('every 1d12h');
    expect(describePeriod({ kind: 'cron', expression: '0 3 * * *' })).toBe('cron "0 3 * * *"');
  });
});

describe('parseTime', () => {
  const now = iso('2026-06-15T12:00:00Z');

  it('"now" is now', () => {
    expect(parseTime('now', now)).toBe(now);
  });

  it('"+DURATION" is relative to now', () => {
    expect(parseTime('+2h', now)).toBe(now + 2 * 3600_000);
    expect(parseTime('+1d12h', now)).toBe(now + 129600_000);
    expect(parseTime('+90s', now)).toBe(now + 90_000);
  });

  it('defaults now to the current time', () => {
    const before = Date.now();
    const value = parseTime('now');
    const after = Date.now();
    expect(value).toBeGreaterThanOrEqual(before);
    expect(value).toBeLessThanOrEqual(after);
  });

  it('reads ISO 8601 times with Z or an offset', () => {
    expect(parseTime('2026-12-01T03:00:00Z', now)).toBe(Date.UTC(2026, 11, 1, 3, 0, 0));
    expect(parseTime('2026-12-01T03:00:00.123Z', now)).toBe(Date.UTC(2026, 11, 1, 3, 0, 0, 123));
    expect(parseTime('2026-12-01T03:00Z', now)).toBe(Date.UTC(2026, 11, 1, 3, 0, 0));
    expect(parseTime('2026-12-01T03:00:00+02:00', now)).toBe(Date.UTC(2026, 11, 1, 1, 0, 0));
    expect(parseTime('2026-12-01T03:00:00-05:30', now)).toBe(Date.UTC(2026, 11, 1, 8, 30, 0));
  });

  it('reads a date alone as midnight UTC', () => {
    expect(parseTime('2026-12-01', now)).toBe(Date.UTC(2026, 11, 1));
  });

  it.each(['', 'tomorrow', 'NOW', ' now', 'now ', '2026-13-01', '2026-12-01T25:00Z', '12/01/2026', '2026-12-1', '1767225600000', '2026-12-01T03:00:00 Z'])('refuses %j with the accepted formats', (text) => {
    expect(() => parseTime(text, now)).toThrow(
      `invalid time '${text}': use an ISO 8601 time such as 2026-12-01T03:00:00Z, "now", or "+2h"`,
    );
  });

  it('refuses a bad relative time with the duration error', () => {
    expect(() => parseTime('+', now)).toThrow("invalid duration ''");
    expect(() => parseTime('+2x', now)).toThrow("invalid duration '2x'");
    expect(() => parseTime('+0s', now)).toThrow("invalid duration '0s': it must be longer than zero");
  });

  // BUG (lib/period.ts parseTime): a day that does not exist in its month passes the regex and Date.parse
  // (V8) rolls it over: '2026-02-30' becomes 2026-03-02. Fix: after parsing, check that the UTC
  // year/month/day of the result (for date-only or Z times) match the text, or validate day <= days in month.
  it('refuses a day that does not exist (2026-02-30)', () => {
    expect(() => parseTime('2026-02-30', now)).toThrow("invalid time '2026-02-30'");
  });
});
