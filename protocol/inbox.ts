/**
 * The receiving end of a connection for the client and the worker: every message is validated
 * against the schema for its direction, then either taken by a listener (for messages that can
 * arrive at any time, like cancel-run) or queued for `next()`.
 */
import type { z } from 'zod';
import type { Connection } from './connection.js';
import { parseWith } from './messages.js';

/** The connection ended; `reason` says why, `fatal` holds the server's error message if it sent one. */
export class ConnectionClosed extends Error {
  constructor(readonly reason: string, readonly fatal: string | null) {
    super(fatal ?? reason);
  }
}

export class Inbox<T extends { type: string }> {
  private readonly queued: T[] = [];
  private waiter: { resolve: (message: T) => void; reject: (error: Error) => void } | null = null;
  private ended: ConnectionClosed | null = null;
  private fatal: string | null = null;
  /** Sees every message first; returns true if it handled it (then `next()` never sees it). */
  listener: ((message: T) => boolean) | null = null;
  /** When the last message arrived (ms since the epoch): how long the peer has been silent. */
  lastHeard = Date.now();
  /** Called once when the connection ends. */
  onClose: ((closed: ConnectionClosed) => void) | null = null;

  constructor(readonly conn: Connection, schema: z.ZodType<T>) {
    conn.start({
      message: (value) => {
        this.lastHeard = Date.now();
        const parsed = parseWith(schema, value);
        if (!parsed.ok) {
          conn.fail(parsed.error);
          return;
        }
        const message = parsed.message;
        if (message.type === 'error' && 'message' in message) this.fatal = String(message.message);
        if (this.listener?.(message) === true) return;
        if (this.waiter !== null) {
          const { resolve } = this.waiter;
          this.waiter = null;
          resolve(message);
        } else {
          this.queued.push(message);
        }
      },
      close: (reason) => {
        this.ended = new ConnectionClosed(reason, this.fatal);
        this.onClose?.(this.ended);
        if (this.waiter !== null) {
          const { reject } = this.waiter;
          this.waiter = null;
          reject(this.ended);
        }
      },
    });
  }

  /** The next message. Rejects with ConnectionClosed once the connection is gone. */
  next(): Promise<T> {
    const message = this.queued.shift();
    if (message !== undefined) return Promise.resolve(message);
    if (this.ended !== null) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Bytes of messages received but not yet taken: lets a consumer apply backpressure. */
  get backlog(): number {
    return this.queued.length;
  }
}
