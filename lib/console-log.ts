/**
 * Console logs: one append-only text file per run under STATE/console, one line per console line:
 * `MILLISECONDS STREAM TEXT`, where STREAM is o (stdout), e (stderr) or b (builder's own notes).
 * Files keep the database small and let a 2-million-line console stream to disk and back out to an
 * observer without ever being held in memory. The database records the line count when a run ends.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ConsoleLine } from '../protocol/types.js';
import { syncDirectory } from './artifact-files.js';

const STREAM_CODE = { out: 'o', err: 'e', builder: 'b' } as const;
const CODE_STREAM: Record<string, ConsoleLine['stream']> = { o: 'out', e: 'err', b: 'builder' };

/** A line never contains a newline; one that arrives with one (from a broken worker) is split. */
export function normalizeLines(lines: ConsoleLine[]): ConsoleLine[] {
  if (!lines.some((line) => line.text.includes('\n'))) return lines;
  return lines.flatMap((line) => line.text.split('\n').map((text) => ({ ...line, text })));
}

export function formatLines(lines: ConsoleLine[]): string {
  // Lines cut from one read of a pipe share their time and stream: their prefix is made once.
  let out = '';
  let at = -1;
  let stream = '';
  let prefix = '';
  for (const line of lines) {
    if (line.at !== at || line.stream !== stream) {
      at = line.at;
      stream = line.stream;
      prefix = `${at} ${STREAM_CODE[line.stream]} `;
    }
    out += prefix + line.text + '\n';
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

/**
 * The console file of one running run, created by its first line: a run that prints nothing costs
 * no file (and, with --strict, no fsync).
 */
export class ConsoleWriter {
  private fd = -1;
  private closed = false;
  bytes = 0;
  lines = 0;

  constructor(readonly file: string, private readonly syncDir = false) {}

  /**
   * Appends lines (already normalised: no newline inside) synchronously, so a replay that starts
   * after this call sees them in the file.
   */
  append(lines: ConsoleLine[]): void {
    if (this.closed) throw new Error(`console ${this.file} is closed`);
    if (this.fd < 0) {
      fs.mkdirSync(path.dirname(this.file), { recursive: true });
      // A run dispatched again after a crash (before its start was committed) starts afresh: truncate.
      this.fd = fs.openSync(this.file, 'w');
    }
    // Written as a string: Node encodes it straight into the write, with no Buffer of ours to fill
    // first (that copy was a tenth of the server's work for a fast console).
    const text = formatLines(lines);
    const bytes = Buffer.byteLength(text);
    let written = fs.writeSync(this.fd, text);
    if (written < bytes) {
      // A short write (a nearly full disk): the rest, from where it stopped.
      const rest = Buffer.from(text);
      while (written < bytes) written += fs.writeSync(this.fd, rest, written);
    }
    this.bytes += bytes;
    this.lines += lines.length;
  }

  /**
   * Closes the file; with `sync` (--strict) flushes it, and its directory entry, to disk first.
   * Called before the run's outcome is committed.
   */
  close(sync: boolean): void {
    this.closed = true;
    if (this.fd < 0) return;
    if (sync) fs.fdatasyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = -1;
    // The file was created by this run: its directory entry must be durable too (--strict).
    if (sync && this.syncDir) syncDirectory(path.dirname(this.file));
  }
}

export class ConsoleStore {
  constructor(readonly dir: string, private readonly syncDirs = false) {
    fs.mkdirSync(dir, { recursive: true });
  }

  fileOf(uuid: string): string {
    return path.join(this.dir, uuid.slice(0, 2), `${uuid}.log`);
  }

  open(uuid: string): ConsoleWriter {
    return new ConsoleWriter(this.fileOf(uuid), this.syncDirs);
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
    // Split on \n only (readline would also split on a bare \r, which progress bars print), on
    // bytes: 0x0a never occurs inside a UTF-8 sequence, so each line decodes on its own.
    let rest: Buffer = Buffer.alloc(0);
    let batch: ConsoleLine[] = [];
    let bytes = 0;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        const data = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
        let from = 0;
        for (let nl = data.indexOf(10, from); nl >= 0; nl = data.indexOf(10, from)) {
          const line = parseLine(data.toString('utf8', from, nl));
          bytes += nl - from;
          from = nl + 1;
          if (line === null) continue;
          batch.push(line);
          if (batch.length >= batchLines || bytes >= batchBytes) {
            yield batch;
            batch = [];
            bytes = 0;
          }
        }
        rest = data.subarray(from);
      }
      if (batch.length > 0) yield batch;
    } finally {
      stream.destroy();
    }
  }
}
