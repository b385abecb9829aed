/**
 * A framed, message-oriented connection over a TCP socket, used by all three programs.
 * It decodes frames as bytes arrive, hands each decoded value on in order, and turns a bad frame
 * into a one-line fatal error for the peer followed by closing the connection.
 */
import net from 'node:net';
import tls from 'node:tls';
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError, encodeFrameParts } from './frame.js';
import type { AnyMessage } from './messages.js';

export interface ConnectionHandlers {
  /** One decoded (not yet validated) value. */
  message(value: unknown): void;
  /** The connection is gone; `reason` says why in a few words. Called exactly once. */
  close(reason: string): void;
}

export class Connection {
  private readonly decoder: FrameDecoder;
  private closed = false;
  private handlers: ConnectionHandlers | null = null;
  private early: unknown[] = [];
  private closeReason: string | null = null;
  /** sendWritten calls whose bytes are not yet with the kernel. */
  private readonly writeWaiters = new Set<() => void>();
  readonly peer: string;

  constructor(readonly socket: net.Socket, maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {
    this.decoder = new FrameDecoder(maxFrameBytes);
    this.peer = formatPeer(socket);
    socket.setNoDelay(true);
    // Dead peers (a worker whose host vanished behind NAT) are eventually noticed even when idle.
    socket.setKeepAlive(true, 30_000);
    socket.on('data', (data: Buffer) => this.receive(data));
    socket.on('error', (error: NodeJS.ErrnoException) => this.finish(error.code ?? error.message));
    socket.on('close', () => {
      // Nothing more leaves a closed socket: senders waiting for their bytes to go may go on.
      for (const waiter of [...this.writeWaiters]) waiter();
      this.finish('connection closed');
    });
    socket.on('end', () => {
      if (this.decoder.pending > 0) this.finish('connection closed in the middle of a frame');
      socket.end();
    });
  }

  /** Starts delivering messages. Bytes that arrived before are buffered by the socket until then. */
  start(handlers: ConnectionHandlers): void {
    this.handlers = handlers;
    const early = this.early.splice(0);
    for (const value of early) if (!this.closed) handlers.message(value);
    if (this.closed && this.closeReason !== null) handlers.close(this.closeReason);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes written but not yet handed to the kernel: what a slow peer costs us. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  /**
   * Sends one message. Returns false when the socket's buffer is full (see `drained`). A big `chunk`
   * of bytes is handed to the socket as it is, not copied (encodeFrameParts): it must not change
   * after this call.
   */
  send(message: AnyMessage): boolean {
    if (this.closed || this.socket.destroyed) return false;
    const parts = encodeFrameParts(message);
    if (parts.length === 1) return this.socket.write(parts[0]!);
    // The head and the bytes leave in one writev.
    let room = true;
    this.together(() => {
      for (const part of parts) room = this.socket.write(part);
    });
    return room;
  }

  /** Whatever `send` calls `write` makes leave together, in one system call (writev). */
  together(write: () => void): void {
    this.socket.cork();
    try {
      write();
    } finally {
      this.socket.uncork();
    }
  }

  /**
   * Holds back what is sent from now on until the returned function is called or this turn of the
   * event loop ends, whichever comes first, and then sends it all in one write: messages that follow
   * each other closely leave together, and none waits longer than the turn.
   */
  holdForThisTurn(): () => void {
    this.socket.cork();
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      clearImmediate(timer);
      this.socket.uncork();
    };
    const timer = setImmediate(release);
    return release;
  }

  /**
   * Sends one message and resolves once the socket has handed all of it to the kernel (or the
   * connection has closed): from then on, a `chunk` it carried may be reused. Senders of artifact
   * streams use it, so that file data can be read into the same buffers again instead of new ones
   * (each a megabyte the garbage collector would have to notice). It also waits out backpressure.
   */
  sendWritten(message: AnyMessage): Promise<void> {
    if (this.closed || this.socket.destroyed) return Promise.resolve();
    const parts = encodeFrameParts(message);
    return new Promise((resolve) => {
      const done = (): void => {
        this.writeWaiters.delete(done);
        resolve();
      };
      this.writeWaiters.add(done);
      this.together(() => parts.forEach((part, i) => this.socket.write(part, i === parts.length - 1 ? done : undefined)));
    });
  }

  /** Resolves once the socket's write buffer has been flushed (or the connection closed). */
  drained(): Promise<void> {
    if (this.closed || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  /** Sends a fatal error message, then closes the connection once it is written. */
  fail(message: string): void {
    if (this.closed) return;
    this.send({ type: 'error', message });
    this.finish(message);
    this.socket.end();
    // A peer that never reads must not keep the socket open forever.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Closes without a message. */
  close(): void {
    this.finish('closed by us');
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    if (!this.closed) this.socket.resume();
  }

  private receive(data: Buffer): void {
    if (this.closed) return;
    let values: unknown[];
    try {
      values = this.decoder.push(data);
    } catch (error) {
      if (error instanceof FrameError) {
        this.fail(`protocol error: ${error.message}`);
        return;
      }
      throw error;
    }
    for (const value of values) {
      if (this.closed) return;
      if (this.handlers === null) {
        this.early.push(value);
        continue;
      }
      try {
        this.handlers.message(value);
      } catch (error) {
        // A handler bug must cost this one connection, never the whole process.
        this.fail(`internal error while handling a message: ${(error as Error).message}`);
        return;
      }
    }
  }

  private finish(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.handlers?.close(reason);
  }
}

function formatPeer(socket: net.Socket): string {
  const address = socket.remoteAddress ?? 'unknown';
  return address.includes(':') ? `[${address}]:${socket.remotePort}` : `${address}:${socket.remotePort}`;
}

/** Parses HOST:PORT, [IPV6]:PORT or :PORT. Throws an Error with a one-line explanation. */
export function parseAddress(text: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || !(port >= 0 && port <= 65535)) {
    throw new Error(`invalid address '${text}': expected HOST:PORT, for example 127.0.0.1:1234`);
  }
  return { host: match[1] ?? (match[2] || '127.0.0.1'), port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Opens a TCP connection. Rejects with the socket's error (ECONNREFUSED and friends). */
const UNTRUSTED = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_UNTRUSTED']);

/**
 * Why a dial failed, in words: a network error's code (ECONNREFUSED, …), or for TLS what is wrong
 * and what to do about it. `tls` is true when the failure was in the TLS handshake.
 */
export function dialProblem(error: unknown): { reason: string; tls: boolean } {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  const message = (error as Error).message;
  if (UNTRUSTED.has(code)) return { tls: true, reason: `the server's certificate is not trusted (${code}): give the CA that signed it with --tls-ca FILE` };
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return { tls: true, reason: `the server's certificate is not valid for this address: ${message}` };
  if (code === 'CERT_HAS_EXPIRED') return { tls: true, reason: 'the server\'s certificate has expired' };
  if (code.startsWith('ERR_SSL') || code === 'EPROTO' || /SSL|TLS/.test(message)) {
    return { tls: true, reason: `the TLS handshake failed (${code || message}): does the server use TLS (--tls-cert)? without it, drop --tls/--tls-ca` };
  }
  return { tls: false, reason: code || message };
}

/** TLS for dial: the CA certificates to trust (PEM), or null for the system's store. */
export interface DialTls {
  ca: Buffer | null;
}

/**
 * Connects to HOST:PORT, over TLS when `tls` is given (the server's certificate must be valid for
 * the host name or IP address dialled). Rejects with the socket's error, or ETIMEDOUT.
 */
export function dial(address: string, maxFrameBytes?: number, timeoutMs = 10000, tlsOptions: DialTls | null = null): Promise<Connection> {
  const { host, port } = parseAddress(address);
  return new Promise((resolve, reject) => {
    const socket = tlsOptions === null
      ? net.connect({ host, port })
      : tls.connect({ host, port, ...(tlsOptions.ca === null ? {} : { ca: tlsOptions.ca }), ...(net.isIP(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error(`timed out after ${timeoutMs / 1000}s`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    socket.once(tlsOptions === null ? 'connect' : 'secureConnect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(new Connection(socket, maxFrameBytes));
    });
    const onError = (error: Error): void => {
      clearTimeout(timer);
      reject(error);
    };
    socket.once('error', onError);
  });
}
