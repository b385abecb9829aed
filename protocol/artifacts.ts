/**
 * Artifacts travel as a plain ustar/pax stream, cut into chunk frames by the sender. Both directions
 * (worker → server upload, server → client fetch) use these helpers, so the rules about which entries
 * and which paths are acceptable live in one place.
 */
import fs from 'node:fs';
import { Header, Parser, Pax, type ReadEntry } from 'tar';
import { CHUNK_BYTES } from './messages.js';

const BLOCK = 512;

/**
 * A big file is read this many bytes at a time (tarStream cuts each read into CHUNK_BYTES pieces
 * without copying): a quarter of the reads, each a trip through the thread pool, of reading chunk
 * by chunk.
 */
const READ_BYTES = 4 * CHUNK_BYTES;

/** A file up to this size is read in one synchronous call: a stream costs an open, two reads and a close, each a trip through the thread pool. */
const SMALL_READ_BYTES = 64 * 1024;

/**
 * The chunks of the file `file` for a TarSource whose listing said `size` bytes. `flags` are added to
 * O_RDONLY (O_NOFOLLOW for a job's files). The file is opened when iteration starts.
 *
 * A chunk is valid only until the next one is asked for: a bigger file is read into two buffers in
 * turn (the next read goes on while the caller sends the chunk it has), not into a new megabyte
 * for each read, which cost the garbage collector more than a third of the sender's time.
 */
export async function* fileChunks(file: string, size: number, flags = 0): AsyncGenerator<Buffer> {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | flags);
  if (size <= SMALL_READ_BYTES) {
    // Read to its end, not just `size` bytes, so that a file that grew shows (tarStream refuses it).
    let data: Buffer;
    try {
      data = fs.readFileSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    if (data.length > 0) yield data;
    return;
  }
  // One byte more than the file holds: a file that grew is still read to its end (and refused).
  const length = Math.min(READ_BYTES, size + 1);
  const buffers = [Buffer.allocUnsafeSlow(length), Buffer.allocUnsafeSlow(length)] as const;
  // A read that fails while the caller still sends the previous chunk fails the caller's next
  // request; until then the rejection is held here, not left unhandled (which would end the process).
  const read = (buffer: Buffer): Promise<number> => {
    const promise = readInto(fd, buffer);
    promise.catch(() => {});
    return promise;
  };
  let reading = read(buffers[0]);
  try {
    for (let turn = 0; ; turn ^= 1) {
      const bytes = await reading;
      if (bytes === 0) return;
      // The caller is done with the other buffer: it asked for this chunk.
      reading = read(buffers[turn ^ 1]);
      yield buffers[turn].subarray(0, bytes);
    }
  } finally {
    // A read still going on must end before its descriptor is closed (and its number reused).
    await reading.catch(() => 0);
    fs.closeSync(fd);
  }
}

/** Reads from the file's current position into `buffer`; resolves to the bytes read (0 at its end). */
function readInto(fd: number, buffer: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buffer, 0, buffer.length, null, (error, bytes) => (error === null ? resolve(bytes) : reject(error)));
  });
}

/** Why a path may not be an artifact path, or null when it may. */
export function artifactPathProblem(path: string): string | null {
  if (path.length === 0) return 'empty path';
  if (Buffer.byteLength(path) > 4096) return 'path longer than 4096 bytes';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(path)) return 'path contains a control character (newline, NUL, ...)';
  if (path.startsWith('/')) return 'absolute path';
  const parts = path.split('/');
  if (parts.some((part) => part === '..')) return "path contains '..'";
  if (parts.some((part) => part === '' || part === '.')) return 'path has an empty or "." component';
  return null;
}

/** One file to put into the stream. `chunks` must yield exactly `size` bytes. */
export interface TarSource {
  path: string;
  size: number;
  mode?: number;
  chunks(): AsyncIterable<Buffer>;
}

function headerBlocks(path: string, size: number, mode: number): Buffer[] {
  const data = { path, mode, size, uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(0), type: 'File' as const };
  const header = new Header(data);
  const needPax = header.encode();
  const blocks: Buffer[] = [];
  if (needPax || Buffer.byteLength(path) >= 100) blocks.push(new Pax({ ...data, atime: undefined, ctime: undefined }).encode());
  if (header.block === undefined) throw new Error(`could not encode a tar header for ${path}`);
  blocks.push(header.block);
  return blocks;
}

/**
 * Produces the tar stream for `sources` in pieces of at most CHUNK_BYTES (nothing at all when there
 * are no sources). Small files are coalesced into one piece so that 10,000 tiny artifacts do not
 * cost 30,000 frames. A piece, like a source's chunk, is valid only until the next is asked for
 * (send it with Connection.sendWritten): a file's bytes are passed on without being copied, except
 * those kept to be coalesced, which are copied as the source may reuse its buffer.
 */
export async function* tarStream(sources: AsyncIterable<TarSource> | Iterable<TarSource>): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  function* add(buf: Buffer, reused = false): Generator<Buffer> {
    if (pendingBytes + buf.length > CHUNK_BYTES && pendingBytes > 0) {
      yield Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
    }
    for (let offset = 0; offset < buf.length; offset += CHUNK_BYTES) {
      const piece = buf.subarray(offset, offset + CHUNK_BYTES);
      if (piece.length === CHUNK_BYTES) yield piece;
      else {
        pending.push(reused ? Buffer.from(piece) : piece);
        pendingBytes += piece.length;
      }
    }
  }
  let files = 0;
  for await (const source of sources) {
    files++;
    for (const block of headerBlocks(source.path, source.size, source.mode ?? 0o644)) yield* add(block);
    let written = 0;
    for await (const chunk of source.chunks()) {
      if (written + chunk.length > source.size) throw new Error(`${source.path} grew while it was being sent`);
      written += chunk.length;
      yield* add(chunk, true);
    }
    if (written !== source.size) throw new Error(`${source.path} shrank while it was being sent`);
    const padding = (BLOCK - (source.size % BLOCK)) % BLOCK;
    if (padding > 0) yield* add(Buffer.alloc(padding));
  }
  // No files, no stream at all: an archive of only end blocks is not one every tar reader accepts.
  if (files === 0) return;
  yield* add(Buffer.alloc(2 * BLOCK));
  if (pendingBytes > 0) yield Buffer.concat(pending, pendingBytes);
}

export interface TarFileHandler {
  /** A regular file with an acceptable path. Consume `entry` (a readable stream of its bytes). */
  file(path: string, size: number, entry: ReadEntry): void;
  /** An entry that was refused; the stream stops being useful after this. */
  refuse(reason: string): void;
}

/**
 * A tar parser that accepts only regular files (and directories, which are implied and skipped) with
 * safe relative paths. Symlinks, hard links, devices and FIFOs are refused by type, before any data.
 */
/** A path as a refusal quotes it: a very long one is cut, so that the reason itself fits. */
function shortPath(path: string): string {
  return path.length > 200 ? `${path.slice(0, 200)}…` : path;
}

export function artifactParser(handler: TarFileHandler): Parser {
  let refused = false;
  const refuse = (reason: string): void => {
    if (refused) return;
    refused = true;
    handler.refuse(reason);
  };
  const parser = new Parser({
    strict: true,
    onReadEntry: (entry: ReadEntry) => {
      if (refused) {
        entry.resume();
        return;
      }
      const path = entry.path.replace(/\/+$/, '');
      const problem = artifactPathProblem(path);
      if (problem !== null) {
        refuse(`artifact ${JSON.stringify(shortPath(entry.path))} refused: ${problem}`);
        entry.resume();
        return;
      }
      if (entry.type === 'Directory') {
        entry.resume();
        return;
      }
      if (entry.type !== 'File' && entry.type !== 'OldFile' && entry.type !== 'ContiguousFile') {
        refuse(`artifact ${JSON.stringify(shortPath(path))} refused: it is a ${entry.type}, only regular files are artifacts`);
        entry.resume();
        return;
      }
      handler.file(path, entry.size ?? 0, entry);
    },
  });
  parser.on('error', (error: Error) => refuse(`artifact stream is not a valid tar stream: ${error.message}`));
  parser.on('warn', (_code: string, message: string | Error) => refuse(`artifact stream is not a valid tar stream: ${String(message)}`));
  return parser;
}
