/**
 * Content-addressed artifact files under STATE/artifacts: each file is stored once, as
 * artifacts/ab/abcdef… (its SHA-256), however many runs produced it. Incoming files are written to
 * artifacts/tmp while being hashed, then fsynced and renamed into place, so a crash never leaves a
 * half-written file under a hash name.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Artifact } from '../protocol/types.js';

export class ArtifactFiles {
  private readonly tmpDir: string;
  private counter = 0;

  /**
   * `durable` (--strict): fsync each file and its directory before the run is committed, so that
   * artifacts survive a power loss. Without it they survive the server being killed (the page cache
   * outlives the process), the same promise SQLite's synchronous=NORMAL gives the database.
   */
  constructor(readonly dir: string, private readonly durable = false) {
    this.tmpDir = path.join(dir, 'tmp');
    fs.mkdirSync(this.tmpDir, { recursive: true });
    // Left over from a crash in the middle of an upload: never referenced by the database.
    for (const name of fs.readdirSync(this.tmpDir)) fs.rmSync(path.join(this.tmpDir, name), { force: true });
  }

  fileOf(sha256: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`not a SHA-256: ${sha256}`);
    return path.join(this.dir, sha256.slice(0, 2), sha256);
  }

  /**
   * Stores the bytes of one incoming file. Resolves with its size and hash once it is durable.
   * `expectedSize` is what the tar header said; a stream that ends short is an error.
   */
  async store(relativePath: string, expectedSize: number, data: AsyncIterable<Buffer>, maxBytes: number): Promise<Artifact> {
    const tmp = path.join(this.tmpDir, `${process.pid}-${++this.counter}`);
    const handle = await fs.promises.open(tmp, 'w', 0o644);
    let written: { size: number; sha256: string };
    try {
      written = await writeHashed(handle, data, (size) => {
        if (size > maxBytes) throw new Error(`artifact ${relativePath} is larger than the limit of ${maxBytes} bytes`);
      });
      if (written.size !== expectedSize) throw new Error(`artifact ${relativePath} ended after ${written.size} of ${expectedSize} bytes`);
      if (this.durable) await handle.datasync();
    } catch (error) {
      await handle.close();
      await fs.promises.rm(tmp, { force: true });
      throw error;
    }
    await handle.close();
    const { size, sha256 } = written;
    const final = this.fileOf(sha256);
    if (fs.existsSync(final)) {
      await fs.promises.rm(tmp, { force: true });
    } else {
      await fs.promises.mkdir(path.dirname(final), { recursive: true });
      await fs.promises.rename(tmp, final);
      if (this.durable) syncDirectory(path.dirname(final));
    }
    return { path: relativePath, size, sha256 };
  }
}

/** Chunks being written at once by writeHashed: 4 of the 256 KiB the streams carry, 1 MiB. */
const WRITES_IN_FLIGHT = 4;

/**
 * Writes `data` to an open, empty file while hashing it. Up to WRITES_IN_FLIGHT chunks are being
 * written at once, each at its own offset, so that the disk works while the next chunks arrive
 * instead of the stream stopping for every write; memory stays bounded by those chunks. `check` sees
 * the size so far before each chunk is written, and may throw to stop. Every write has ended (or
 * failed) when this settles.
 */
export async function writeHashed(handle: fs.promises.FileHandle, data: AsyncIterable<Buffer>, check: (size: number) => void = () => {}): Promise<{ size: number; sha256: string }> {
  const hash = crypto.createHash('sha256');
  const writing: Promise<void>[] = [];
  let failure: Error | null = null;
  let size = 0;
  const writeAll = async (chunk: Buffer, position: number): Promise<void> => {
    // A short write (a nearly full disk) goes on from where it stopped.
    for (let done = 0; done < chunk.length;) {
      const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, position + done);
      if (bytesWritten === 0) throw new Error('the file system accepted no more bytes');
      done += bytesWritten;
    }
  };
  try {
    for await (const chunk of data) {
      check(size + chunk.length);
      hash.update(chunk);
      // A failed write is remembered here at once (an unawaited rejection would end the process).
      writing.push(writeAll(chunk, size).catch((error: Error) => { failure ??= error; }));
      size += chunk.length;
      if (writing.length >= WRITES_IN_FLIGHT) await writing.shift();
      if (failure !== null) throw failure;
    }
  } finally {
    await Promise.all(writing);
  }
  if (failure !== null) throw failure;
  return { size, sha256: hash.digest('hex') };
}

/** Makes a directory's entries (a rename, a new file) durable. Used only with --strict. */
export function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
