/**
 * Cuts one output stream of a job into console lines as bytes arrive. A line is sent when its newline
 * arrives; a partial line that sits for `partialMs` is sent anyway (so `printf 'working...'` shows up);
 * a line longer than MAX_LINE_CHARS is split. UTF-8 sequences cut between chunks are reassembled.
 */
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { ConsoleLine } from '../protocol/types.js';

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
    private readonly emit: (lines: ConsoleLine[]) => void,
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

  private take(text: string): void {
    if (text.length === 0) return;
    const at = Date.now() - this.started;
    const pieces = (this.partial + text).split('\n');
    this.partial = pieces.pop() as string;
    const lines: ConsoleLine[] = [];
    for (const piece of pieces) this.cut(piece.endsWith('\r') ? piece.slice(0, -1) : piece, at, lines);
    while (this.partial.length > MAX_LINE_CHARS) {
      lines.push({ at, stream: this.stream, text: this.partial.slice(0, MAX_LINE_CHARS) });
      this.partial = this.partial.slice(MAX_LINE_CHARS);
    }
    if (lines.length > 0) this.emit(lines);
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

  private cut(text: string, at: number, into: ConsoleLine[]): void {
    for (let offset = 0; offset < text.length || offset === 0; offset += MAX_LINE_CHARS) {
      into.push({ at, stream: this.stream, text: text.slice(offset, offset + MAX_LINE_CHARS) });
      if (text.length === 0) break;
    }
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
