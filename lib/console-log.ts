/**
 * Console logs: one append-only text file per run under STATE/console, one line per console line:
 * `MILLISECONDS STREAM TEXT`, where STREAM is o (stdout), e (stderr) or b (builder's own notes).
 * Files keep the database small and let a 2-million-line console stream to disk and back out to an
 * observer without ever being held in memory. The database records the line count when a run ends.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import type { ConsoleLine } from '../protocol/types.js';

const STREAM_CODE = { out: 'o', err: 'e', builder: 'b' } as const;
const CODE_STREAM: Record<string, ConsoleLine['stream']> = { o: 'out', e: 'err', b: 'builder' };

export function formatLines(lines: ConsoleLine[]): string {
  let out = '';
  for (const line of lines) {
    // A line never contains a newline in the file; one that arrives with one is split.
    for (const piece of line.text.split('\n')) out += `${line.at} ${STREAM_CODE[line.stream]} ${piece}\n`;
  }
  return out;
}

export function parseLine(text: string): ConsoleLine | null {
  const first = text.indexOf(' ');
  const second = text.indexOf(' ', first + 1);
  if (first < 0 || second < 0) return null;
  const stream = CODE_STREAM[text.slice(first + 1, second)];
  const at = Number(text.slice(0, first));
  if (stream === undefined || !Number.isInteger(at)) return null;
  return { at, stream, text: text.slice(second + 1) };
}

/** The console file of one running run, open for appending. */
export class ConsoleWriter {
  private fd: number;
  bytes = 0;
  lines = 0;

  constructor(readonly file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // A run that is dispatched again after a crash starts a fresh console: truncate.
    this.fd = fs.openSync(file, 'w');
  }

  /** Appends lines synchronously, so a replay that starts after this call sees them in the file. */
  append(lines: ConsoleLine[]): number {
    const text = formatLines(lines);
    const buffer = Buffer.from(text);
    fs.writeSync(this.fd, buffer);
    this.bytes += buffer.length;
    const count = lines.reduce((sum, line) => sum + 1 + (line.text.match(/\n/g)?.length ?? 0), 0);
    this.lines += count;
    return count;
  }

  /** Flushes to disk and closes: called before the run's outcome is committed. */
  close(sync: boolean): void {
    if (this.fd < 0) return;
    if (sync) fs.fdatasyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}

export class ConsoleStore {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
  }

  fileOf(uuid: string): string {
    return path.join(this.dir, uuid.slice(0, 2), `${uuid}.log`);
  }

  open(uuid: string): ConsoleWriter {
    return new ConsoleWriter(this.fileOf(uuid));
  }

  /**
   * Reads a console back in batches of up to `batchLines`, from byte `start` up to byte `end`
   * (exclusive; null reads to the end of the file). Writers append whole lines only, so any size the
   * file had is a line boundary and consecutive ranges never split or repeat a line.
   */
  async *replay(uuid: string, start: number, end: number | null, batchLines = 1000, batchBytes = 1024 * 1024): AsyncGenerator<ConsoleLine[]> {
    const file = this.fileOf(uuid);
    if ((end !== null && end <= start) || !fs.existsSync(file)) return;
    const stream = fs.createReadStream(file, end === null ? { start } : { start, end: end - 1 });
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    let batch: ConsoleLine[] = [];
    let bytes = 0;
    try {
      for await (const text of lines) {
        const line = parseLine(text);
        if (line === null) continue;
        batch.push(line);
        // Characters, not bytes, but a line is at most 64 Ki characters: a batch stays far below a frame.
        bytes += text.length;
        if (batch.length >= batchLines || bytes >= batchBytes) {
          yield batch;
          batch = [];
          bytes = 0;
        }
      }
      if (batch.length > 0) yield batch;
    } finally {
      lines.close();
      stream.destroy();
    }
  }
}
