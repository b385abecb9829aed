/** A raw TCP peer for tests that speak the wire protocol by hand (malformed input, evil workers). */
import net from 'node:net';
import { FrameDecoder, encodeFrame } from '../protocol/frame.js';

/** A raw TCP connection that records every frame the server sends until it closes. */
export class RawPeer {
  readonly socket: net.Socket;
  readonly frames: unknown[] = [];
  readonly closed: Promise<void>;
  /** Which socket read (counted from 1) completed the frame next() returned last. */
  lastRead = 0;
  private reads = 0;
  private readonly frameReads: number[] = [];
  private readonly decoder = new FrameDecoder();

  constructor(address: string) {
    const [host, port] = address.split(':') as [string, string];
    this.socket = net.connect({ host, port: Number(port) });
    this.socket.on('data', (data: Buffer) => {
      this.reads++;
      for (const frame of this.decoder.push(data)) {
        this.frames.push(frame);
        this.frameReads.push(this.reads);
      }
    });
    this.closed = new Promise((resolve) => {
      this.socket.on('close', () => resolve());
      this.socket.on('error', () => resolve());
    });
  }

  send(value: unknown): void {
    this.socket.write(encodeFrame(value));
  }

  async next(): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 10_000;
    while (this.frames.length === 0) {
      if (Date.now() > deadline) throw new Error('no frame from the server');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    this.lastRead = this.frameReads.shift() ?? 0;
    return this.frames.shift() as Record<string, unknown>;
  }
}

