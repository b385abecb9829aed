/**
 * Progress from inside a job: the job appends `PERCENT MESSAGE` lines (or just `MESSAGE`) to the
 * file named by $BUILDER_PROGRESS, by hand or with `builder-progress`. The worker looks at the file
 * a few times a second and sends the newest complete line when it changed. Polling, not inotify:
 * the file may be written from inside a container through a bind mount, where change events are
 * not reliable.
 */
import fs from 'node:fs';

/** The longest progress message kept; longer ones are cut. */
export const MAX_PROGRESS_CHARS = 200;
/** Only the tail of a file that grew by more than this is read: the newest line is what counts. */
const MAX_READ_BYTES = 64 * 1024;

export interface ProgressValue {
  percent: number | null;
  message: string;
}

/** `40 compiling`, `40% compiling`, `12.5`, or `compiling` (no percent). Null for a blank line. */
export function parseProgress(line: string): ProgressValue | null {
  const text = line.trim();
  if (text === '') return null;
  const match = /^(\d+(?:\.\d+)?)%?(?:\s+(.*))?$/s.exec(text);
  const cut = (message: string): string => (message.length > MAX_PROGRESS_CHARS ? `${message.slice(0, MAX_PROGRESS_CHARS - 1)}…` : message);
  if (match === null) return { percent: null, message: cut(text) };
  return { percent: Math.min(100, Number(match[1])), message: cut((match[2] ?? '').trim()) };
}

export class ProgressWatcher {
  private offset = 0;
  private partial = '';
  private last: string | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly file: string, private readonly report: (value: ProgressValue) => void, private readonly intervalMs = 250) {}

  start(): void {
    this.timer = setInterval(() => this.poll(), this.intervalMs);
  }

  /** Stops watching, after a last look (the job may have written its final line just now). */
  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.poll();
  }

  private poll(): void {
    let text: string;
    try {
      const fd = fs.openSync(this.file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      try {
        const stat = fs.fstatSync(fd);
        if (!stat.isFile()) return;
        // Truncated or replaced by a shorter file: start again from its beginning.
        if (stat.size < this.offset) {
          this.offset = 0;
          this.partial = '';
        }
        if (stat.size === this.offset) return;
        let from = this.offset;
        if (stat.size - from > MAX_READ_BYTES) {
          from = stat.size - MAX_READ_BYTES;
          this.partial = '';
        }
        const buffer = Buffer.alloc(stat.size - from);
        const read = fs.readSync(fd, buffer, 0, buffer.length, from);
        this.offset = from + read;
        text = this.partial + buffer.subarray(0, read).toString('utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      // Removed by the job, or not a file we may read: no progress until it is back.
      return;
    }
    const lines = text.split('\n');
    this.partial = (lines.pop() ?? '').slice(-MAX_READ_BYTES);
    for (let i = lines.length - 1; i >= 0; i--) {
      const value = parseProgress(lines[i] as string);
      if (value === null) continue;
      const key = `${value.percent ?? ''} ${value.message}`;
      if (key !== this.last) {
        this.last = key;
        this.report(value);
      }
      return;
    }
  }
}
