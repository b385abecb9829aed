/** The worker's line splitter: newlines, partial lines, long lines, UTF-8 cut between chunks. */
import { describe, expect, it } from 'vitest';
import { LineSplitter, MAX_LINE_CHARS, hasLineLongerThan } from '../lib/line-splitter.js';
import { chunkLines } from '../protocol/console-chunks.js';
import type { ConsoleChunk } from '../protocol/types.js';

function collector(partialMs = 50): { splitter: LineSplitter; texts: () => string[]; chunks: ConsoleChunk[] } {
  const chunks: ConsoleChunk[] = [];
  const splitter = new LineSplitter('out', Date.now(), (batch) => chunks.push(...batch), partialMs);
  return { splitter, chunks, texts: () => chunks.flatMap(chunkLines).map((line) => line.text) };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('LineSplitter', () => {
  it('emits one line per newline, whatever the chunking, and strips a CR before the newline', () => {
    const { splitter, texts, chunks } = collector();
    for (const piece of ['one\ntw', 'o\r\n', '', 'thr', 'ee\n\nfour']) splitter.push(Buffer.from(piece));
    expect(texts()).toEqual(['one', 'two', 'three', '']);
    splitter.end();
    expect(texts()).toEqual(['one', 'two', 'three', '', 'four']);
    expect(chunks.every((chunk) => chunk.stream === 'out' && chunk.at >= 0)).toBe(true);
  });

  it('sends the lines of one read as one chunk, a CR before each newline removed and others kept', () => {
    const { splitter, chunks } = collector();
    splitter.push(Buffer.from('a\r\n\r\nb\r\r\nc\rd\n\npartial'));
    expect(chunks.map((chunk) => chunk.text)).toEqual(['a\n\nb\r\nc\rd\n']);
    splitter.end();
    expect(chunks.map((chunk) => chunk.text)).toEqual(['a\n\nb\r\nc\rd\n', 'partial']);
  });

  it('keeps a bare carriage return inside a line', () => {
    const { splitter, texts } = collector();
    splitter.push(Buffer.from('10%\r50%\r100%\n'));
    expect(texts()).toEqual(['10%\r50%\r100%']);
  });

  it('reassembles a UTF-8 character cut between two chunks', () => {
    const { splitter, texts } = collector();
    const bytes = Buffer.from('grüße → 日本\n');
    for (let i = 0; i < bytes.length; i++) splitter.push(bytes.subarray(i, i + 1));
    expect(texts()).toEqual(['grüße → 日本']);
  });

  it('splits a line longer than the maximum', () => {
    const { splitter, texts } = collector();
    splitter.push(Buffer.from(`${'x'.repeat(MAX_LINE_CHARS * 2 + 5)}\n`));
    expect(texts().map((text) => text.length)).toEqual([MAX_LINE_CHARS, MAX_LINE_CHARS, 5]);
  });

  it('splits long lines among short ones in one read, and a long partial line', () => {
    const { splitter, texts } = collector();
    splitter.push(Buffer.from(`a\n${'x'.repeat(MAX_LINE_CHARS * 2)}\nb\n${'y'.repeat(MAX_LINE_CHARS + 3)}`));
    expect(texts().map((text) => text.length)).toEqual([1, MAX_LINE_CHARS, MAX_LINE_CHARS, 1, MAX_LINE_CHARS]);
    splitter.end();
    expect(texts().map((text) => text.length)).toEqual([1, MAX_LINE_CHARS, MAX_LINE_CHARS, 1, MAX_LINE_CHARS, 3]);
  });

  it('finds a line longer than the maximum wherever it lies among short ones, and none where there is none', () => {
    const max = 10;
    const short = 'abcd\n'.repeat(20);
    expect(hasLineLongerThan(short, max)).toBe(false);
    expect(hasLineLongerThan('x'.repeat(max), max)).toBe(false);
    expect(hasLineLongerThan('x'.repeat(max + 1), max)).toBe(true);
    // Exactly max long is kept; max + 1 is found at every offset, across the stretches' edges.
    for (let at = 0; at <= short.length; at++) {
      expect(hasLineLongerThan(`${short.slice(0, at)}\n${'y'.repeat(max)}\n${short.slice(at)}`, max)).toBe(false);
      expect(hasLineLongerThan(`${short.slice(0, at)}\n${'y'.repeat(max + 1)}\n${short.slice(at)}`, max)).toBe(true);
    }
    expect(hasLineLongerThan(`${short}${'z'.repeat(max + 1)}`, max)).toBe(true);
  });

  it('sends a read of many short lines longer than the maximum in all as it came', () => {
    const { splitter, chunks } = collector();
    const lines = `${'0123456789abcdef'.repeat(3)}\n`.repeat(Math.ceil((MAX_LINE_CHARS * 2) / 49));
    splitter.push(Buffer.from(lines));
    expect(chunks.map((chunk) => chunk.text)).toEqual([lines.slice(0, -1)]);
  });

  it('sends a partial line once the stream has been quiet, and the rest as its own line', async () => {
    const { splitter, texts } = collector(50);
    splitter.push(Buffer.from('working...'));
    expect(texts()).toEqual([]);
    for (let i = 0; i < 250 && texts().length === 0; i++) await sleep(20);
    expect(texts()).toEqual(['working...']);
    splitter.push(Buffer.from(' done\n'));
    expect(texts()).toEqual(['working...', ' done']);
  });

  it('never sends a partial line while paused (backpressure), however long', async () => {
    const { splitter, texts } = collector(30);
    splitter.push(Buffer.from('half a li'));
    splitter.paused = true;
    await sleep(200);
    expect(texts()).toEqual([]);
    splitter.paused = false;
    splitter.touch();
    splitter.push(Buffer.from('ne\n'));
    expect(texts()).toEqual(['half a line']);
  });
});
