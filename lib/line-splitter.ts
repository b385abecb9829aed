/**
 * Cuts one output stream of a job into console lines as bytes arrive. A line is sent when its newline
 * arrives; a partial line that sits for `partialMs` is sent anyway (so `printf 'working...'` shows up);
 * a line longer than MAX_LINE_CHARS is split. UTF-8 sequences cut between reads are reassembled.
 * The lines of one read go out as one ConsoleChunk: they share the read's time and stream.
 */
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { lineStats } from '../protocol/console-chunks.js';
import type { ConsoleChunk } from '../protocol/types.js';

export const MAX_LINE_CHARS = 64 * 1024;

export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';
  private timer: NodeJS.Timeout | null = null;
  private lastData = 0;
  /** While the reader is paused (backpressure), silence means nothing: no partial line goes out. */
  paused = false;

  constructor(
    private readonly stream: 'out' | 'err',
    private readonly started: number,
    private readonly emit: (chunks: ConsoleChunk[]) => void,
    private readonly partialMs: number,
  ) {}

  push(chunk: Buffer): void {
    this.lastData = Date.now();
    this.take(this.decoder.write(chunk));
  }

  /** Counts as fresh activity (reading resumed): the quiet period starts again. */
  touch(): void {
    this.lastData = Date.now();
  }

  /** The stream ended: whatever is left is the last line. */
  end(): void {
    this.take(this.decoder.end());
    this.flushPartial();
  }

  /**
   * Everything up to the last newline goes out as one chunk (one read: one time, one stream), its
   * lines' trailing CRs removed and over-long lines cut, without making a string per line.
   */
  private take(text: string): void {
    if (text.length === 0) return;
    const at = Date.now() - this.started;
    const all = this.partial + text;
    const last = all.lastIndexOf('\n');
    const pieces: string[] = [];
    if (last >= 0) {
      let complete = all.slice(0, last + 1);
      // A CR right before a newline ends a line from a CRLF program; a CR elsewhere stays.
      if (complete.includes('\r\n')) complete = complete.replaceAll('\r\n', '\n');
      complete = complete.slice(0, -1);
      pieces.push(hasLineLongerThan(complete, MAX_LINE_CHARS) ? cutLongLines(complete) : complete);
      this.partial = all.slice(last + 1);
    } else {
      this.partial = all;
    }
    while (this.partial.length > MAX_LINE_CHARS) {
      pieces.push(this.partial.slice(0, MAX_LINE_CHARS));
      this.partial = this.partial.slice(MAX_LINE_CHARS);
    }
    if (pieces.length > 0) this.emit([{ at, stream: this.stream, text: pieces.join('\n') }]);
    if (this.partial.length > 0 && this.timer === null) this.armPartialTimer(this.partialMs);
  }

  /**
   * A partial line goes out only once the stream has been quiet for partialMs. The check runs in
   * setImmediate, after the poll phase: when the event loop was busy, output already waiting in the
   * pipe is read first, so a line is never cut in two just because the worker was slow to read it.
   */
  private armPartialTimer(delay: number): void {
    this.timer = setTimeout(() => {
      setImmediate(() => {
        this.timer = null;
        if (this.partial.length === 0) return;
        const quiet = Date.now() - this.lastData;
        if (this.paused) this.armPartialTimer(this.partialMs);
        else if (quiet >= this.partialMs) this.flushPartial();
        else this.armPartialTimer(this.partialMs - quiet);
      });
    }, delay);
  }

  private flushPartial(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.partial.length === 0) return;
    const text = this.partial;
    this.partial = '';
    this.emit([{ at: Date.now() - this.started, stream: this.stream, text }]);
  }
}

/**
 * Whether a line of `text` (lines joined by \n) is longer than `max`, in a few native scans: a line
 * that long covers a whole stretch [k·step, (k+1)·step) with step = ⌊max/2⌋, so when each such
 * stretch holds a newline, none is. A fast console's read of 64 KiB holds two or three stretches;
 * cutting it into its thousands of lines to look at each took 20 ms per 2 million lines.
 */
export function hasLineLongerThan(text: string, max: number): boolean {
  if (text.length <= max) return false;
  const step = Math.max(1, Math.floor(max / 2));
  for (let from = 0; from + step <= text.length; from += step) {
    const newline = text.indexOf('\n', from);
    // A stretch without a newline: a long line is possible here; look at the lines exactly.
    if (newline < 0 || newline >= from + step) return lineStats(text).longest > max;
  }
  return false;
}

/** Cuts every line of `text` (lines joined by \n) that is longer than MAX_LINE_CHARS into several. */
function cutLongLines(text: string): string {
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.length <= MAX_LINE_CHARS) continue;
    const parts: string[] = [];
    for (let offset = 0; offset < line.length; offset += MAX_LINE_CHARS) parts.push(line.slice(offset, offset + MAX_LINE_CHARS));
    lines[i] = parts.join('\n');
  }
  return lines.join('\n');
}

/**
 * Pauses or resumes a job's output: the splitters hold back partial lines while paused (a line cut
 * by the pause is not a line) and the pipes stop being read, so the job blocks on its writes.
 */
export function pauseOutput(paused: boolean, splitters: LineSplitter[], streams: (Readable | null | undefined)[]): void {
  for (const splitter of splitters) {
    splitter.paused = paused;
    if (!paused) splitter.touch();
  }
  for (const stream of streams) {
    if (paused) stream?.pause();
    else stream?.resume();
  }
}
