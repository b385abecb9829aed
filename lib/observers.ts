/**
 * Observers of runs. `observe UUID` first replays the console from its file, following the file
 * like `tail -f` until it has caught up with the writer, then switches to the live stream — so a
 * replay never holds live lines in memory, however fast the job prints. A live observer whose socket
 * backlog grows past the limit goes back to reading the file from the first line it has not been
 * sent, at the pace its socket drains, and rejoins the live stream once it has caught up again: a
 * slow reader never slows the worker or the server, costs no memory beyond that backlog, and still
 * gets every line. The final `run-end` is never dropped: it bypasses the limit, and an observer still
 * replaying gets it right after catching up.
 */
import { Connection } from '../protocol/connection.js';
import { encodeFrame } from '../protocol/frame.js';
import type { ServerToClient } from '../protocol/messages.js';
import type { ConsoleChunk, RunSummary } from '../protocol/types.js';
import type { ConsoleStore } from './console-log.js';

export interface ObserverLimits {
  /** Unsent bytes in the socket beyond which a live observer goes back to reading the console file. */
  maxBacklogBytes: number;
}

/** Bytes of console written so far for a run being written now, or null when it is not running here. */
export type ConsoleOffset = (uuid: string) => number | null;

/**
 * Where an observer's messages go: a client connection, or the web view's server-sent events. The
 * same replay, catch-up and cut-off rules apply to both.
 */
export interface ObserverSink {
  /** Queues a message; false when the sink's buffer is full (wait for drained()). */
  send(message: ServerToClient): boolean;
  drained(): Promise<void>;
  /** Bytes queued but not yet sent. */
  readonly backlog: number;
  readonly isClosed: boolean;
}

class Observer {
  replaying = true;
  done = false;
  /** Set when the run ends while the observer is still replaying. */
  ended: RunSummary | null = null;
  /** The newest state change seen while replaying, sent once caught up. */
  update: RunSummary | null = null;
  /** While live: the console file offset up to which this observer has been sent every line. */
  sent = 0;
  /** This observer's `console` frame up to its `chunks` value (see SharedLines), made on first use. */
  private head: Buffer | null = null;
  constructor(readonly conn: ObserverSink, readonly id: number, readonly uuid: string, readonly offsetOf: ConsoleOffset) {}

  /**
   * Sends live lines. To a client connection, the lines encoded once for every observer follow this
   * observer's own head; to any other sink (the web view), the message as usual.
   */
  sendLines(shared: SharedLines): boolean {
    const conn = this.conn;
    if (!(conn instanceof Connection)) return conn.send({ type: 'console', id: this.id, chunks: shared.chunks });
    if (conn.isClosed || conn.socket.destroyed) return false;
    this.head ??= SharedLines.head(this.id);
    const body = shared.encoded();
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(this.head.length + body.length, 0);
    // One writev for the three pieces: no copy of the console per observer.
    conn.socket.cork();
    conn.socket.write(length);
    conn.socket.write(this.head);
    const flowing = conn.socket.write(body);
    conn.socket.uncork();
    return flowing;
  }
}

/**
 * One batch of live chunks, msgpack-encoded at most once however many observers get it: with 20
 * observers, encoding the same lines 20 times was most of the server's work. A `console` message is
 * the map {type, id, chunks} with `chunks` last (msgpackr writes keys in insertion order), so each
 * observer's frame is its head — the map up to the `chunks` key, made once per observer — followed
 * by the shared encoding of the array: byte for byte what encodeFrame would have made.
 */
class SharedLines {
  private body: Buffer | null = null;
  constructor(readonly chunks: ConsoleChunk[]) {}

  encoded(): Buffer {
    this.body ??= encodeFrame(this.chunks).subarray(4);
    return this.body;
  }

  static head(id: number): Buffer {
    const empty = encodeFrame({ type: 'console', id, chunks: [] });
    // An empty array is the single byte 0x90, and it comes last.
    if (empty[empty.length - 1] !== 0x90) throw new Error('unexpected encoding of a console message');
    return empty.subarray(4, empty.length - 1);
  }
}

interface LatestWaiter {
  conn: ObserverSink;
  id: number;
  job: string | null;
  platform: string | null;
}

export class ObserverHub {
  private readonly byRun = new Map<string, Set<Observer>>();
  private latestWaiters: LatestWaiter[] = [];

  constructor(private readonly consoles: ConsoleStore, private readonly limits: ObserverLimits) {}

  /**
   * Starts observing `run`: replay from byte `start` of its console, catch up, then live until the
   * run ends.
   */
  async observe(conn: ObserverSink, id: number, run: RunSummary, offsetOf: ConsoleOffset, start = 0): Promise<void> {
    conn.send({ type: 'observing', id, run });
    if (run.state === 'finished') {
      await this.replay(conn, id, run.uuid, start, null);
      conn.send({ type: 'run-end', id, run });
      return;
    }
    const observer = new Observer(conn, id, run.uuid, offsetOf);
    let set = this.byRun.get(run.uuid);
    if (set === undefined) this.byRun.set(run.uuid, (set = new Set()));
    set.add(observer);
    await this.catchUp(observer, start);
  }

  /**
   * Replays the console from byte `offset`, following the writer, until caught up; then switches the
   * observer to the live stream. Used when observing starts and when a live observer falls behind.
   */
  private async catchUp(observer: Observer, offset: number): Promise<void> {
    observer.replaying = true;
    const { conn, id, uuid } = observer;
    for (;;) {
      // Read up to what the writer has written right now; once nothing new was written while we
      // read, we are caught up, and (synchronously, so no line slips between) switch to live.
      const target = observer.ended !== null ? null : (observer.offsetOf(uuid) ?? 0);
      if (target !== null && target <= offset) break;
      await this.replay(conn, id, uuid, offset, target);
      if (observer.done || conn.isClosed) return;
      if (target === null) break;
      offset = target;
    }
    observer.replaying = false;
    observer.sent = offset;
    if (observer.ended !== null) {
      this.deliver(observer, { type: 'run-end', id, run: observer.ended }, true);
    } else if (observer.update !== null) {
      const update = observer.update;
      observer.update = null;
      this.deliver(observer, { type: 'run-update', id, run: update }, false);
    }
  }

  private async replay(conn: ObserverSink, id: number, uuid: string, start: number, end: number | null): Promise<void> {
    for await (const chunks of this.consoles.replay(uuid, start, end)) {
      if (conn.isClosed) return;
      if (!conn.send({ type: 'console', id, chunks })) await conn.drained();
    }
  }

  /** Registers a client waiting for the newest run of a job/platform that has none yet. */
  waitForLatest(conn: ObserverSink, id: number, job: string | null, platform: string | null): void {
    this.latestWaiters.push({ conn, id, job, platform });
  }

  /** Whether any client waits for the newest run of something (observe-latest). */
  get hasLatestWaiters(): boolean {
    return this.latestWaiters.length > 0;
  }

  /** A run was queued: hands it to observe-latest waiters that match. Returns them. */
  takeLatestWaiters(run: RunSummary): LatestWaiter[] {
    const matching = this.latestWaiters.filter((w) => !w.conn.isClosed && (w.job === null || w.job === run.job)
      && (w.platform === null || w.platform === run.platform));
    this.latestWaiters = this.latestWaiters.filter((w) => !w.conn.isClosed && !matching.includes(w));
    return matching;
  }

  /** Whether anyone observes run `uuid` (so that telling them is worth loading it). */
  watching(uuid: string): boolean {
    return this.byRun.has(uuid);
  }

  /**
   * Live console chunks of run `uuid`. `end`: the console file's size once they are in it, or null
   * for a note that is not in the file.
   */
  lines(uuid: string, chunks: ConsoleChunk[], end: number | null): void {
    const set = this.byRun.get(uuid);
    if (set === undefined) return;
    const shared = new SharedLines(chunks);
    for (const observer of set) {
      // An observer still replaying reads these lines from the file.
      if (!observer.replaying && this.deliver(observer, shared, false) && end !== null) observer.sent = end;
    }
  }

  update(run: RunSummary): void {
    const set = this.byRun.get(run.uuid);
    if (set === undefined) return;
    for (const observer of set) {
      if (observer.replaying) observer.update = run;
      else this.deliver(observer, { type: 'run-update', id: observer.id, run }, false);
    }
  }

  end(run: RunSummary): void {
    const set = this.byRun.get(run.uuid);
    if (set === undefined) return;
    for (const observer of set) {
      if (observer.replaying) observer.ended = run;
      else this.deliver(observer, { type: 'run-end', id: observer.id, run }, true);
    }
  }

  /** Forgets everything a closed connection was observing or waiting for. */
  forget(conn: ObserverSink): void {
    for (const [uuid, set] of this.byRun) {
      for (const observer of set) if (observer.conn === conn) observer.done = true;
      this.prune(uuid, set);
    }
    this.latestWaiters = this.latestWaiters.filter((w) => w.conn !== conn);
  }

  /** Sends a live message; false when the observer is behind and was sent back to the file instead. */
  private deliver(observer: Observer, message: ServerToClient | SharedLines, final: boolean): boolean {
    if (observer.done) return false;
    if (!final && observer.conn.backlog > this.limits.maxBacklogBytes) {
      // Behind: no more live messages queue up for it. It reads the console file from the first
      // line it was not sent, as fast as its socket drains; a run-update waits for it there.
      if (!(message instanceof SharedLines)) observer.update = message.type === 'run-update' ? message.run : observer.update;
      void this.catchUp(observer, observer.sent).catch(() => this.finish(observer));
      return false;
    }
    if (message instanceof SharedLines) observer.sendLines(message);
    else observer.conn.send(message);
    if (final) this.finish(observer);
    return true;
  }

  private finish(observer: Observer): void {
    observer.done = true;
    const set = this.byRun.get(observer.uuid);
    if (set !== undefined) this.prune(observer.uuid, set);
  }

  private prune(uuid: string, set: Set<Observer>): void {
    for (const observer of set) if (observer.done) set.delete(observer);
    if (set.size === 0) this.byRun.delete(uuid);
  }
}
