/**
 * Console logs: one append-only text file per run under STATE/console, one line per console line:
 * `MILLISECONDS STREAM TEXT`, where STREAM is o (stdout), e (stderr) or b (builder's own notes).
 * Files keep the database small and let a 2-million-line console stream to disk and back out to an
 * observer without ever being held in memory. The database records the line count when a run ends.
 */
import fs from 'node:fs';
import path from 'node:path';
import { lineStats, prefixLines } from '../protocol/console-chunks.js';
import type { ConsoleChunk, ConsoleLine } from '../protocol/types.js';
import { syncDirectory } from './artifact-files.js';

const STREAM_CODE = { out: 'o', err: 'e', builder: 'b' } as const;
const CODE_STREAM: Record<string, ConsoleLine['stream']> = { o: 'out', e: 'err', b: 'builder' };

/**
 * A chunk as console file lines: each line is `MILLISECONDS STREAM TEXT\n`, and the lines of a
 * chunk share their prefix, so a chunk costs one string operation however many lines it holds.
 */
export function formatChunk(chunk: ConsoleChunk): string {
  return prefixLines(chunk.text, `${chunk.at} ${STREAM_CODE[chunk.stream]} `);
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
 * Every console write is encoded into this one buffer, which gives its length in bytes with the
 * encoding: a string handed to fs.writeSync is encoded just the same, but its length (for the
 * file's size, which observers' offsets count in) took a second pass over every byte.
 */
let scratch = Buffer.allocUnsafeSlow(256 * 1024);
/** The scratch buffer grows up to this size (a chunk of 64 Ki characters with many short lines fits). */
const MAX_SCRATCH_BYTES = 2 * 1024 * 1024;

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
   * Appends chunks synchronously, so a replay that starts after this call sees them in the file.
   * `lines` is how many lines they hold, when the caller has counted them already.
   */
  append(chunks: readonly ConsoleChunk[], lines?: number): void {
    if (this.closed) throw new Error(`console ${this.file} is closed`);
    if (this.fd < 0) {
      fs.mkdirSync(path.dirname(this.file), { recursive: true });
      // A run dispatched again after a crash (before its start was committed) starts afresh: truncate.
      this.fd = fs.openSync(this.file, 'w');
    }
    // Written a chunk at a time, each encoded into the one scratch buffer: no Buffer per write
    // (allocating and filling those was a tenth of the server's work for a fast console), and no
    // string is so long that the heap keeps it until a full collection (see pushChunk).
    let written = 0;
    try {
      for (const chunk of chunks) {
        this.bytes += this.write(formatChunk(chunk));
        written++;
      }
    } finally {
      // After a failed write (a full disk) the count matches what is in the file.
      if (written === chunks.length && lines !== undefined) this.lines += lines;
      else for (const chunk of chunks.slice(0, written)) this.lines += lineStats(chunk.text).lines;
    }
  }

  /** Writes one string in full; returns its length in bytes. */
  private write(text: string): number {
    // UTF-8 takes at most 3 bytes per UTF-16 unit: the whole string fits. A rare bigger string
    // gets a buffer of its own, so that the scratch buffer stays small.
    const needed = text.length * 3;
    let buffer: Buffer;
    let bytes: number;
    if (needed <= MAX_SCRATCH_BYTES) {
      if (needed > scratch.length) scratch = Buffer.allocUnsafeSlow(needed);
      buffer = scratch;
      bytes = scratch.write(text);
    } else {
      buffer = Buffer.from(text);
      bytes = buffer.length;
    }
    // A short write (a nearly full disk) goes on from where it stopped.
    for (let written = 0; written < bytes;) written += fs.writeSync(this.fd, buffer, written, bytes - written);
    return bytes;
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
   * Reads a console back in batches of up to `batchLines` lines, from byte `start` up to byte `end`
   * (exclusive; null reads to the end of the file), as chunks: consecutive lines of the same time
   * and stream are joined again. Writers append whole lines only, so any size the file had is a line
   * boundary and consecutive ranges never split or repeat a line.
   */
  async *replay(uuid: string, start: number, end: number | null, batchLines = 1000, batchBytes = 1024 * 1024): AsyncGenerator<ConsoleChunk[]> {
    const file = this.fileOf(uuid);
    if ((end !== null && end <= start) || !fs.existsSync(file)) return;
    const stream = fs.createReadStream(file, end === null ? { start } : { start, end: end - 1 });
    // Split on \n only (readline would also split on a bare \r, which progress bars print), on
    // bytes: 0x0a never occurs inside a UTF-8 sequence, so each line decodes on its own.
    let rest: Buffer = Buffer.alloc(0);
    let batch: ConsoleChunk[] = [];
    let lines = 0;
    let bytes = 0;
    // The lines of the chunk being gathered: joined once it is complete.
    let current: { at: number; stream: ConsoleLine['stream']; texts: string[] } | null = null;
    const close = (): void => {
      if (current !== null) batch.push({ at: current.at, stream: current.stream, text: current.texts.join('\n') });
      current = null;
    };
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        const data = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
        let from = 0;
        for (let nl = data.indexOf(10, from); nl >= 0; nl = data.indexOf(10, from)) {
          const line = parseLine(data.toString('utf8', from, nl));
          bytes += nl - from;
          from = nl + 1;
          if (line === null) continue;
          if (current !== null && current.at === line.at && current.stream === line.stream) current.texts.push(line.text);
          else {
            close();
            current = { at: line.at, stream: line.stream, texts: [line.text] };
          }
          lines++;
          if (lines >= batchLines || bytes >= batchBytes) {
            close();
            yield batch;
            batch = [];
            lines = 0;
            bytes = 0;
          }
        }
        rest = data.subarray(from);
      }
      close();
      if (batch.length > 0) yield batch;
    } finally {
      stream.destroy();
    }
  }
}
