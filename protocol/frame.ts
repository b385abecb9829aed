/**
 * Frames: a 4-byte big-endian unsigned length, then that many bytes holding one msgpack value.
 * The decoder accepts bytes in whatever pieces TCP delivers them and refuses a frame whose declared
 * length is over the maximum as soon as the 4 length bytes are in, before buffering any of it.
 */
import { C1, Packr, RESERVE_START_SPACE } from 'msgpackr';

export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;

// Plain msgpack maps and arrays (no msgpackr record extension) so that any msgpack peer can talk to
// us; 64-bit integers that fit a JavaScript number decode as numbers (other encoders use uint64 for
// millisecond timestamps). ('auto' is supported by msgpackr but missing from its type definitions.)
const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false, int64AsType: 'auto' as 'number' });

/** True if the never-used msgpack byte 0xc1 appears anywhere in a decoded value. */
function containsC1(value: unknown, depth = 0): boolean {
  if (value === C1) return true;
  if (typeof value !== 'object' || value === null || depth > 64 || value instanceof Uint8Array) return false;
  for (const item of Array.isArray(value) ? value : Object.values(value)) if (containsC1(item, depth + 1)) return true;
  return false;
}

export class FrameError extends Error {}

export function encodeFrame(value: unknown): Buffer {
  // msgpackr leaves the 4 bytes of the length free before the body: no copy into a frame of our own
  // (for a worker's 256 KiB console batches, that copy and its garbage were a sixth of its work).
  // What pack returns is never written to again: the next pack goes on after it, or in a new buffer.
  const frame = packr.pack(value, RESERVE_START_SPACE | 4);
  frame.writeUInt32BE(frame.length - 4, 0);
  // But it is a view of msgpackr's buffer, which grows to several times the biggest message packed
  // so far: a small frame that is kept (an observer's message head) would keep all of it. Copying
  // a small one costs next to nothing.
  return frame.length <= SMALL_FRAME_BYTES ? Buffer.from(frame) : frame;
}

/** Frames up to this size are copied out of msgpackr's buffer (see encodeFrame). */
const SMALL_FRAME_BYTES = 16 * 1024;

/** A `chunk` of bytes at least this long is not copied into its frame (see encodeFrameParts). */
const UNCOPIED_CHUNK_BYTES = 4096;
const NO_BYTES = Buffer.alloc(0);

/**
 * Encodes a message as encodeFrame does, but a big `chunk` of bytes (artifact streams) is not copied:
 * the result is the frame's head (length, and the message up to the bytes) and the bytes themselves,
 * to be written one after the other. The message is packed with an empty `chunk` as its last field,
 * whose `bin 8` header (c4 00) is then replaced by the `bin 32` header of the real bytes: the same
 * msgpack a copying encoder makes, without two copies of every artifact byte (into msgpackr's buffer,
 * then into the frame) and the garbage they leave.
 */
export function encodeFrameParts(value: object): Buffer[] {
  const { chunk, ...rest } = value as { chunk?: unknown };
  if (!(chunk instanceof Uint8Array) || chunk.length < UNCOPIED_CHUNK_BYTES) return [encodeFrame(value)];
  const body = packr.pack({ ...rest, chunk: NO_BYTES });
  const before = body.length - 2;
  if (body[before] !== 0xc4 || body[before + 1] !== 0) throw new Error('msgpackr did not end the message with an empty bin 8');
  const head = Buffer.allocUnsafe(4 + before + 5);
  head.writeUInt32BE(before + 5 + chunk.length, 0);
  body.copy(head, 4, 0, before);
  head[4 + before] = 0xc6;
  head.writeUInt32BE(chunk.length, 4 + before + 1);
  return [head, Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)];
}

/** Decodes the body of one frame. Throws FrameError on anything that is not exactly one msgpack value. */
export function decodeBody(body: Buffer): unknown {
  if (body.length === 0) throw new FrameError('empty frame: a frame holds exactly one msgpack value');
  let values: unknown[];
  try {
    values = packr.unpackMultiple(body) as unknown[];
  } catch (error) {
    throw new FrameError(`undecodable frame: not valid msgpack (${(error as Error).message})`);
  }
  if (values.length !== 1) throw new FrameError(`frame holds ${values.length} msgpack values, expected exactly one`);
  if (containsC1(values[0])) throw new FrameError('undecodable frame: not valid msgpack (the byte 0xc1 is never used)');
  return values[0];
}

export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private expected = -1;

  constructor(readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {}

  /** Feeds bytes; returns every complete value they finish. Throws FrameError on a bad frame. */
  push(data: Buffer): unknown[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const values: unknown[] = [];
    for (;;) {
      if (this.expected < 0) {
        if (this.buffered < 4) break;
        const length = this.take(4).readUInt32BE(0);
        if (length > this.maxFrameBytes) {
          throw new FrameError(`frame of ${length} bytes is over the maximum of ${this.maxFrameBytes} bytes`);
        }
        this.expected = length;
      }
      if (this.buffered < this.expected) break;
      const body = this.take(this.expected);
      this.expected = -1;
      values.push(decodeBody(body));
    }
    return values;
  }

  /** Bytes received that do not yet form a whole frame. */
  get pending(): number {
    return this.buffered + (this.expected >= 0 ? 4 : 0);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const all = Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return out;
  }
}
