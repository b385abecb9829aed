/**
 * Observers of runs: `observe UUID` replays the console from its file, then follows live. Each
 * observer has a bounded backlog. One that falls too far behind is told so and cut off, so a slow
 * reader never slows the worker or the server. The final `run-end` is never dropped: it bypasses the
 * bound, and an observer still replaying receives it right after the replay.
 */
import type { Connection } from '../protocol/connection.js';
import type { ServerToClient } from '../protocol/messages.js';
import type { ConsoleLine, RunSummary } from '../protocol/types.js';
import type { ConsoleStore } from './console-log.js';

export interface ObserverLimits {
  /** Unsent bytes in the socket beyond which a live observer is cut off. */
  maxBacklogBytes: number;
  /** Console lines held for an observer that is still replaying. */
  maxBufferedLines: number;
}

class Observer {
  replaying = true;
  done = false;
  buffered: ServerToClient[] = [];
  bufferedLines = 0;
  constructor(readonly conn: Connection, readonly id: number, readonly uuid: string) {}
}

interface LatestWaiter {
  conn: Connection;
  id: number;
  job: string | null;
  platform: string | null;
}

export class ObserverHub {
  private readonly byRun = new Map<string, Set<Observer>>();
  private latestWaiters: LatestWaiter[] = [];

  constructor(private readonly consoles: ConsoleStore, private readonly limits: ObserverLimits) {}

  /**
   * Starts observing `run` for a client request. `liveOffset` is how many bytes of the console file
   * exist right now; everything after that arrives through `lines`.
   */
  async observe(conn: Connection, id: number, run: RunSummary, liveOffset: number): Promise<void> {
    conn.send({ type: 'observing', id, run });
    if (run.state === 'finished') {
      for await (const lines of this.consoles.replay(run.uuid, null)) {
        if (conn.isClosed) return;
        conn.send({ type: 'console', id, lines });
        await conn.drained();
      }
      conn.send({ type: 'run-end', id, run });
      return;
    }
    const observer = new Observer(conn, id, run.uuid);
    let set = this.byRun.get(run.uuid);
    if (set === undefined) this.byRun.set(run.uuid, (set = new Set()));
    set.add(observer);
    for await (const lines of this.consoles.replay(run.uuid, liveOffset)) {
      if (observer.done || conn.isClosed) return;
      conn.send({ type: 'console', id, lines });
      await conn.drained();
    }
    observer.replaying = false;
    for (const message of observer.buffered.splice(0)) {
      if (observer.done) return;
      this.deliver(observer, message, message.type === 'run-end');
    }
  }

  /** Registers a client waiting for the newest run of a job/platform that has none yet. */
  waitForLatest(conn: Connection, id: number, job: string | null, platform: string | null): void {
    this.latestWaiters.push({ conn, id, job, platform });
  }

  /** A run was queued: hands it to observe-latest waiters that match. Returns them. */
  takeLatestWaiters(run: RunSummary): LatestWaiter[] {
    const matching = this.latestWaiters.filter((w) => !w.conn.isClosed && (w.job === null || w.job === run.job)
      && (w.platform === null || w.platform === run.platform));
    this.latestWaiters = this.latestWaiters.filter((w) => !w.conn.isClosed && !matching.includes(w));
    return matching;
  }

  lines(uuid: string, lines: ConsoleLine[]): void {
    const set = this.byRun.get(uuid);
    if (set === undefined) return;
    for (const observer of set) this.deliver(observer, { type: 'console', id: observer.id, lines }, false);
  }

  update(run: RunSummary): void {
    const set = this.byRun.get(run.uuid);
    if (set === undefined) return;
    for (const observer of set) this.deliver(observer, { type: 'run-update', id: observer.id, run }, false);
  }

  end(run: RunSummary): void {
    const set = this.byRun.get(run.uuid);
    if (set === undefined) return;
    for (const observer of set) this.deliver(observer, { type: 'run-end', id: observer.id, run }, true);
  }

  /** Forgets everything a closed connection was observing or waiting for. */
  forget(conn: Connection): void {
    for (const [uuid, set] of this.byRun) {
      for (const observer of set) if (observer.conn === conn) observer.done = true;
      this.prune(uuid, set);
    }
    this.latestWaiters = this.latestWaiters.filter((w) => w.conn !== conn);
  }

  get count(): number {
    let n = 0;
    for (const set of this.byRun.values()) n += set.size;
    return n;
  }

  private deliver(observer: Observer, message: ServerToClient, final: boolean): void {
    if (observer.done) return;
    if (observer.replaying) {
      observer.buffered.push(message);
      if (message.type === 'console') observer.bufferedLines += message.lines.length;
      if (!final && observer.bufferedLines > this.limits.maxBufferedLines) {
        this.cut(observer, `more than ${this.limits.maxBufferedLines} new console lines arrived while it was still replaying`);
      }
      return;
    }
    if (!final && observer.conn.backlog > this.limits.maxBacklogBytes) {
      this.cut(observer, `it fell more than ${this.limits.maxBacklogBytes} bytes behind the console`);
      return;
    }
    observer.conn.send(message);
    if (final) this.finish(observer);
  }

  private cut(observer: Observer, why: string): void {
    this.finish(observer);
    observer.conn.send({
      type: 'failure', id: observer.id,
      message: `observer cut off because ${why}; the run goes on — run observe ${observer.uuid} again to replay its console`,
    });
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
