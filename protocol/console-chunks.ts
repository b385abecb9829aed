/**
 * Console chunks (see ConsoleChunk in types.ts): consecutive console lines that share their time and
 * stream, as one string joined by `\n`. These helpers are what every program does with a chunk
 * without cutting it into one object per line: count its lines, prefix each line, and — where a
 * line really is handled on its own (the web view, a line too long to keep) — split it.
 */
import type { ConsoleChunk, ConsoleLine } from './types.js';

/** How many lines a chunk's text holds, and the length of its longest line (in UTF-16 units). */
export function lineStats(text: string): { lines: number; longest: number } {
  let lines = 1;
  let longest = 0;
  let from = 0;
  // indexOf is a native scan: much cheaper than split(), which makes a string per line.
  for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', from)) {
    if (nl - from > longest) longest = nl - from;
    lines++;
    from = nl + 1;
  }
  if (text.length - from > longest) longest = text.length - from;
  return { lines, longest };
}

/** The number of lines in chunks. */
export function countLines(chunks: readonly ConsoleChunk[]): number {
  let lines = 0;
  for (const chunk of chunks) lines += lineStats(chunk.text).lines;
  return lines;
}

/** Each line of `text` with `prefix` before it and a newline after it: one string operation per chunk. */
export function prefixLines(text: string, prefix: string): string {
  return `${prefix}${text.includes('\n') ? text.replaceAll('\n', `\n${prefix}`) : text}\n`;
}

/** The lines of a chunk, for code that handles lines one at a time. */
export function chunkLines(chunk: ConsoleChunk): ConsoleLine[] {
  return chunk.text.split('\n').map((text) => ({ at: chunk.at, stream: chunk.stream, text }));
}

/**
 * Appends a chunk to a list, joined to the last one when that has the same time and stream (the
 * reads of one stream within a millisecond) and the two together stay within `maxChars`: fewer
 * chunks, but none so long that the JavaScript heap must hold it as a large object (those are only
 * freed by a full collection, so a fast console would grow the server's memory).
 */
export function pushChunk(chunks: ConsoleChunk[], chunk: ConsoleChunk, maxChars = MERGE_MAX_CHARS): void {
  const last = chunks[chunks.length - 1];
  if (last !== undefined && last.at === chunk.at && last.stream === chunk.stream && last.text.length + chunk.text.length < maxChars) {
    chunks[chunks.length - 1] = { at: last.at, stream: last.stream, text: `${last.text}\n${chunk.text}` };
  } else {
    chunks.push(chunk);
  }
}

/** Chunks are not merged beyond this many characters: 64 Ki, a pipe's read (see pushChunk). */
export const MERGE_MAX_CHARS = 64 * 1024;
