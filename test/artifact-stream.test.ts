/**
 * The artifact stream's buffer reuse: fileChunks reads a big file into two buffers in turn, and
 * tarStream passes file bytes on uncopied, so each chunk is valid only until the next is asked for.
 * These check that a consumer keeping that rule gets every byte right, whatever the read sizes.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type TarSource, artifactParser, fileChunks, tarStream } from '../protocol/artifacts.js';
import { tempDir } from './harness.js';
import { prng } from './unit-helpers.js';

const dir = tempDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Parses a tar stream made of `pieces` (each copied as it came) into path → bytes. */
async function untar(pieces: Buffer[]): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const refused: string[] = [];
  const parser = artifactParser({
    file: (name, _size, entry) => {
      const parts: Buffer[] = [];
      entry.on('data', (data: Buffer) => parts.push(Buffer.from(data)));
      entry.on('end', () => files.set(name, Buffer.concat(parts)));
    },
    refuse: (reason) => refused.push(reason),
  });
  const ended = new Promise((resolve) => parser.on('end', resolve));
  for (const piece of pieces) parser.write(piece);
  parser.end();
  await ended;
  expect(refused).toEqual([]);
  return files;
}

/** Consumes a stream as a sender must: each piece is used (here: copied) before the next is asked for. */
async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const pieces: Buffer[] = [];
  for await (const piece of stream) pieces.push(Buffer.from(piece));
  return pieces;
}

describe('artifact streams with reused buffers', () => {
  it('fileChunks gives every byte of files around its read sizes, each read into a reused buffer', async () => {
    const random = prng(7);
    for (const size of [0, 1, 65536, 65537, 1024 * 1024 - 1, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 77]) {
      const bytes = Buffer.from(Array.from({ length: size }, () => Math.floor(random() * 256)));
      const file = path.join(dir, `f-${size}`);
      fs.writeFileSync(file, bytes);
      const chunks = await collect(fileChunks(file, size));
      expect(crypto.createHash('sha256').update(Buffer.concat(chunks)).digest('hex'))
        .toBe(crypto.createHash('sha256').update(bytes).digest('hex'));
      // Big ones really are read into two buffers in turn: the third chunk is in the first's memory.
      if (size > 2 * 1024 * 1024) {
        const views: Buffer[] = [];
        for await (const chunk of fileChunks(file, size)) views.push(chunk);
        expect(views[2]!.buffer).toBe(views[0]!.buffer);
      }
    }
  });

  it('tarStream keeps the bytes it coalesces even when the source overwrites its buffer at once', async () => {
    // A source that yields odd-sized chunks, all in one buffer it refills for each: what tarStream
    // keeps to coalesce (the pieces under 256 KiB) must be its own copy.
    const random = prng(11);
    const contents = new Map<string, Buffer>();
    const sources: TarSource[] = [];
    for (const [name, size] of [['a.bin', 100_000], ['b.bin', 700_001], ['c.txt', 12], ['d.bin', 262_144 * 2 + 5]] as const) {
      const bytes = Buffer.from(Array.from({ length: size }, () => Math.floor(random() * 256)));
      contents.set(name, bytes);
      sources.push({
        path: name, size,
        async *chunks() {
          const shared = Buffer.alloc(99_999);
          for (let offset = 0; offset < size; offset += shared.length) {
            const n = bytes.copy(shared, 0, offset, Math.min(size, offset + shared.length));
            yield shared.subarray(0, n);
            shared.fill(0xee);
          }
        },
      });
    }
    const sha = (files: Map<string, Buffer>): Record<string, string> =>
      Object.fromEntries([...files].map(([name, bytes]) => [name, crypto.createHash('sha256').update(bytes).digest('hex')]));
    expect(sha(await untar(await collect(tarStream(sources))))).toEqual(sha(contents));
  });
});
