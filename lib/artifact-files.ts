/**
 * Content-addressed artifact files under STATE/artifacts: each file is stored once, as
 * artifacts/ab/abcdef… (its SHA-256), however many runs produced it. Incoming files are written to
 * artifacts/tmp while being hashed, then fsynced and renamed into place, so a crash never leaves a
 * half-written file under a hash name.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ReadEntry } from 'tar';
import type { Artifact } from '../protocol/types.js';

/**
 * Files up to this size are taken in whole before anything is written: hashed in memory, then
 * written with one call (or not at all when the content is already stored). A file no bigger than
 * this costs a few file-system calls instead of a stream, and several are written at once.
 */
export const SMALL_FILE_BYTES = 64 * 1024;


/**
 * Limits how many small files are held in memory and being written at once. A file that finds no
 * free slot is not read from its stream until one frees up, so the tar parser (and behind it the
 * socket) waits: memory stays bounded by `slots` × SMALL_FILE_BYTES.
 */
export class SmallFileSlots {
  private free: number;
  private readonly waiting: (() => void)[] = [];

  constructor(slots: number) {
    this.free = slots;
  }

  /** Runs `task` once a slot is free (at once when one is), and frees the slot when it settles. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const started = this.free > 0
      ? (this.free--, Promise.resolve())
      : new Promise<void>((resolve) => this.waiting.push(resolve));
    return started.then(task).finally(() => {
      const next = this.waiting.shift();
      if (next !== undefined) next();
      else this.free++;
    });
  }

}

/** Directories known to exist: making one again costs no mkdir. */
export class KnownDirs {
  private readonly made = new Set<string>();

  async make(dir: string): Promise<void> {
    if (this.made.has(dir)) return;
    await fs.promises.mkdir(dir, { recursive: true });
    this.made.add(dir);
  }
}

/** The whole content of a small tar entry, taken as fast as the entry delivers it. */
export function readWhole(entry: ReadEntry, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    entry.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
    });
    entry.on('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    entry.on('error', (error: unknown) => reject(error instanceof Error ? error : new Error(String(error))));
  });
}

export class ArtifactFiles {
  private readonly tmpDir: string;
  private counter = 0;
  /** Fan-out directories known to exist: a small file then costs no mkdir. */
  private readonly dirs = new KnownDirs();
  /**
   * Each small file goes to its own fan-out directory (by hash), so many can be written at once
   * without contending for one directory's lock: enough to keep the thread pool busy.
   */
  private readonly slots = new SmallFileSlots(32);

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
   * Stores the bytes of one incoming file (a tar entry). Resolves with its size and hash once it is
   * durable. `expectedSize` is what the tar header said; a stream that ends short is an error.
   */
  store(relativePath: string, expectedSize: number, entry: ReadEntry, maxBytes: number): Promise<Artifact> {
    if (expectedSize > maxBytes) {
      entry.resume();
      return Promise.reject(new Error(`artifact ${relativePath} is larger than the limit of ${maxBytes} bytes`));
    }
    if (expectedSize <= SMALL_FILE_BYTES) {
      return this.slots.run(async () => {
        const data = await readWhole(entry, expectedSize);
        if (data.length !== expectedSize) throw new Error(`artifact ${relativePath} ended after ${data.length} of ${expectedSize} bytes`);
        return this.storeSmall(relativePath, data);
      });
    }
    return this.storeLarge(relativePath, expectedSize, entry, maxBytes);
  }

  /** A small file: its hash is known before it is written, so content already stored is not written again. */
  private async storeSmall(relativePath: string, data: Buffer): Promise<Artifact> {
    const sha256 = crypto.createHash('sha256').update(data).digest('hex');
    const final = this.fileOf(sha256);
    if (!(await exists(final))) {
      const tmp = path.join(this.tmpDir, `${process.pid}-${++this.counter}`);
      try {
        if (this.durable) {
          const handle = await fs.promises.open(tmp, 'w', 0o644);
          try {
            await writeAll(handle, data, 0);
            await handle.datasync();
          } finally {
            await handle.close();
          }
        } else {
          await fs.promises.writeFile(tmp, data, { mode: 0o644 });
        }
        await this.dirs.make(path.dirname(final));
        await fs.promises.rename(tmp, final);
      } catch (error) {
        await fs.promises.rm(tmp, { force: true });
        throw error;
      }
      if (this.durable) syncDirectory(path.dirname(final));
    }
    return { path: relativePath, size: data.length, sha256 };
  }

  private async storeLarge(relativePath: string, expectedSize: number, entry: ReadEntry, maxBytes: number): Promise<Artifact> {
    const tmp = path.join(this.tmpDir, `${process.pid}-${++this.counter}`);
    let handle: fs.promises.FileHandle;
    try {
      handle = await fs.promises.open(tmp, 'w', 0o644);
    } catch (error) {
      entry.resume();
      throw error;
    }
    let written: { size: number; sha256: string };
    try {
      written = await writeHashed(handle, entry, (size) => {
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
    if (await exists(final)) {
      await fs.promises.rm(tmp, { force: true });
    } else {
      await this.dirs.make(path.dirname(final));
      await fs.promises.rename(tmp, final);
      if (this.durable) syncDirectory(path.dirname(final));
    }
    return { path: relativePath, size, sha256 };
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.promises.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Writes all of `chunk` at `position`; a short write (a nearly full disk) goes on from where it stopped. */
export async function writeAll(handle: fs.promises.FileHandle, chunk: Buffer, position: number): Promise<void> {
  for (let done = 0; done < chunk.length;) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, position + done);
    if (bytesWritten === 0) throw new Error('the file system accepted no more bytes');
    done += bytesWritten;
  }
}

/**
 * Bytes being written at once by writeHashed. Past this the entry is paused, which stops the tar
 * parser and, behind it, reading from the socket: memory stays bounded by it.
 */
const BYTES_IN_FLIGHT = 4 * 1024 * 1024;

/**
 * Writes a tar entry's bytes to an open, empty file while hashing them. The entry flows (each chunk
 * is hashed and its write started as it arrives, each at its own offset) so that the tar parser is
 * never held up by a disk that keeps up; only when BYTES_IN_FLIGHT are being written is the entry
 * paused until some have finished. (Reading the entry with `for await` would pause it after every
 * chunk, and with it the parser and the socket.) `check` sees the size so far before each chunk is
 * written, and may throw to stop; the rest of the entry is then drained and dropped, so that the
 * parser can go on. Every write has ended (or failed) when this settles.
 */
export function writeHashed(handle: fs.promises.FileHandle, entry: ReadEntry, check: (size: number) => void = () => {}): Promise<{ size: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    let size = 0;
    let inFlight = 0;
    let ended = false;
    let paused = false;
    let failure: Error | null = null;
    const settle = (): void => {
      if (inFlight > 0) return;
      if (failure !== null) reject(failure);
      else if (ended) resolve({ size, sha256: hash.digest('hex') });
    };
    const fail = (error: Error): void => {
      failure ??= error;
      entry.off('data', onData);
      // Drained and dropped from now on, so that the parser moves on to the next entry.
      entry.resume();
      settle();
    };
    const onData = (chunk: Buffer): void => {
      try {
        check(size + chunk.length);
      } catch (error) {
        fail(error as Error);
        return;
      }
      hash.update(chunk);
      const position = size;
      size += chunk.length;
      inFlight += chunk.length;
      writeAll(handle, chunk, position).then(() => {
        inFlight -= chunk.length;
        if (paused && failure === null && inFlight <= BYTES_IN_FLIGHT / 2) {
          paused = false;
          entry.resume();
        }
        settle();
      }, (error: Error) => {
        inFlight -= chunk.length;
        fail(error);
      });
      if (inFlight >= BYTES_IN_FLIGHT && !paused) {
        paused = true;
        entry.pause();
      }
    };
    entry.on('data', onData);
    entry.on('end', () => {
      ended = true;
      settle();
    });
    entry.on('error', (error: unknown) => fail(error instanceof Error ? error : new Error(String(error))));
  });
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
