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
    const hash = crypto.createHash('sha256');
    const handle = await fs.promises.open(tmp, 'w', 0o644);
    let size = 0;
    try {
      for await (const chunk of data) {
        size += chunk.length;
        if (size > maxBytes) throw new Error(`artifact ${relativePath} is larger than the limit of ${maxBytes} bytes`);
        hash.update(chunk);
        await handle.write(chunk);
      }
      if (size !== expectedSize) throw new Error(`artifact ${relativePath} ended after ${size} of ${expectedSize} bytes`);
      if (this.durable) await handle.datasync();
    } catch (error) {
      await handle.close();
      await fs.promises.rm(tmp, { force: true });
      throw error;
    }
    await handle.close();
    const sha256 = hash.digest('hex');
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

/** Makes a directory's entries (a rename, a new file) durable. Used only with --strict. */
export function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
