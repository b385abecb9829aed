/**
 * One line per event on stderr: `TIME EVENT key=value ...`. Values with spaces are quoted, so the
 * log stays greppable and one event never spans lines.
 */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

export type Logger = (event: string, fields?: LogFields) => void;

function formatValue(value: string | number | boolean): string {
  const text = String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export function formatLogLine(event: string, fields: LogFields = {}, now = new Date()): string {
  let line = `${now.toISOString()} ${event}`;
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined || value === null) continue;
    line += ` ${key}=${formatValue(value)}`;
  }
  return line;
}

/**
 * Lines are gathered for up to LOG_FLUSH_MS and written together: a busy server logs thousands of
 * events a second, and one write each was a tenth of its CPU time (one per event-loop turn was
 * still 5 % with one worker taking job after job). They are flushed before the process exits; only
 * a SIGKILL can lose the lines of the last few milliseconds. The log is a record for people: what
 * must survive is in SQLite.
 */
const LOG_FLUSH_MS = 10;
let pending = '';

function flushLog(): void {
  if (pending === '') return;
  const text = pending;
  pending = '';
  process.stderr.write(text);
}

export const stderrLogger: Logger = (event, fields) => {
  if (pending === '') setTimeout(flushLog, LOG_FLUSH_MS).unref();
  pending += `${formatLogLine(event, fields)}\n`;
  if (pending.length > 64 * 1024) flushLog();
};

process.on('exit', flushLog);

/**
 * Runs `action` from an event handler or timer, where an exception would end the process: a failure
 * (a full disk under SQLite, say) is logged as one line instead, and the server keeps serving.
 */
export function guard(log: Logger, during: string, action: () => void): void {
  try {
    action();
  } catch (error) {
    log('error', { during, problem: (error as Error).message });
  }
}
