/**
 * builder-worker: dials the server, says which platform it serves, asks for a job, runs it in a
 * sandbox, streams its console, reports how it ended, uploads its artifacts, cleans up and exits
 * (or, with --loop, asks for the next one). It knows only the protocol: no store, no SQL.
 */
import os from 'node:os';
import { tarStream } from '../protocol/artifacts.js';
import { type Connection, type DialTls, dial, dialProblem } from '../protocol/connection.js';
import { HandshakeRefused, handshake } from '../protocol/handshake.js';
import { ConnectionClosed, Inbox } from '../protocol/inbox.js';
import { type JobAssignment, ServerToWorker, type Welcome } from '../protocol/messages.js';
import { pushChunk } from '../protocol/console-chunks.js';
import type { ConsoleChunk, Outcome } from '../protocol/types.js';
import { describeOutcome, limitMessage } from '../protocol/types.js';
import { jobDirectoriesRemoved, removeLeftoverJobDirectories } from './job-directory.js';
import { ProgressWatcher } from './progress.js';
import type { Sandbox } from './sandbox.js';
import { ProcessSandbox } from './sandbox-process.js';
import { SOFTWARE } from './version.js';

export interface WorkerOptions {
  platform: string;
  remote: string;
  labels: string[];
  loop: boolean;
  hostname: string;
  /** Directory for the per-job builder-XXXXXX directories. */
  tmpDir?: string;
  /** Milliseconds between SIGTERM and SIGKILL when a job is cancelled or times out. */
  killGraceMs?: number;
  /** Longest wait between reconnection attempts while idle, in milliseconds. */
  maxBackoffMs?: number;
  /** Where the worker says what it does (one line each); stderr by default. */
  say?: (line: string) => void;
  /** A factory for the sandbox each job runs in. */
  sandbox?: () => Sandbox;
  /** The worker token, when the server has tokens. */
  token?: string;
  /** Dial the server over TLS (trusting these CAs, or the system's); null or absent: plain TCP. */
  tls?: DialTls | null;
}

/** Exit statuses of builder-worker. */
export const WORKER_EXIT = {
  ok: 0,
  usage: 1,
  /** The server refused us: wrong protocol version, invalid hello. Retrying would not help. */
  refused: 2,
  /** The connection to the server was lost while a job ran; the job was stopped. */
  lostServer: 3,
  /** The sandbox cannot be used: the container engine is missing or unreachable, or the image is. */
  sandbox: 4,
} as const;

type Session = {
  conn: Connection;
  inbox: Inbox<ServerToWorker>;
  welcome: Welcome;
  /** A request-job was sent and no job has answered it yet. */
  requested: boolean;
};

const OUTPUT_BATCH_MS = 20;
const OUTPUT_BATCH_BYTES = 256 * 1024;

export async function runWorker(options: WorkerOptions): Promise<number> {
  const say = options.say ?? ((line: string) => process.stderr.write(`builder-worker: ${line}\n`));
  // Directories a worker killed before it had removed them (see removeJobDirectorySoon).
  removeLeftoverJobDirectories(options.tmpDir ?? os.tmpdir(), say);
  const stop = new StopRequest();
  try {
    return await serveJobs(options, say, stop);
  } catch (error) {
    if (error instanceof Stopped) return signalExit(error.signal);
    throw error;
  } finally {
    stop.dispose();
    // Job directories are removed in the background (see removeJobDirectorySoon): not left behind.
    await jobDirectoriesRemoved();
  }
}

async function serveJobs(options: WorkerOptions, say: (line: string) => void, stop: StopRequest): Promise<number> {
  let session: Session | null = null;
  for (;;) {
    stop.check();
    if (session === null || session.conn.isClosed) {
      try {
        session = await connect(options, say, stop);
      } catch (error) {
        if (error instanceof HandshakeRefused) {
          say(error.message);
          return WORKER_EXIT.refused;
        }
        throw error;
      }
    }
    if (!session.requested) session.conn.send({ type: 'request-job' });
    session.requested = true;
    let job: JobAssignment;
    try {
      job = await nextJob(session, say, stop);
    } catch (error) {
      if (error instanceof ConnectionClosed) {
        if (error.fatal !== null) {
          say(`the server closed the connection: ${error.fatal}`);
          return WORKER_EXIT.refused;
        }
        say(`lost the connection to ${options.remote} while waiting for a job (${error.reason}); reconnecting`);
        session = null;
        continue;
      }
      throw error;
    }
    session.requested = false;
    const code = await runJob(session, job, options, say, stop);
    if (code !== WORKER_EXIT.ok) return code;
    if (!options.loop) {
      session.conn.close();
      return WORKER_EXIT.ok;
    }
  }
}

/** Dials until the server answers, waiting longer after each failure (0.5 s doubling up to the maximum). */
async function connect(options: WorkerOptions, say: (line: string) => void, stop: StopRequest): Promise<Session> {
  let delay = 500;
  for (;;) {
    stop.check();
    let conn: Connection;
    try {
      conn = await dial(options.remote, undefined, 10_000, options.tls ?? null);
    } catch (error) {
      const { reason, tls } = dialProblem(error);
      // A certificate problem does not go away by waiting: the worker stops and says why.
      if (tls) throw new HandshakeRefused(`TLS with the server at ${options.remote} failed: ${reason}`);
      say(`cannot reach the server at ${options.remote} (${reason}); retrying in ${(delay / 1000).toFixed(1)}s (--remote or BUILDER_REMOTE sets the address)`);
      await stop.sleep(delay);
      delay = Math.min(delay * 2, options.maxBackoffMs ?? 30_000);
      continue;
    }
    const inbox = new Inbox(conn, ServerToWorker);
    try {
      const welcome = await handshake(inbox, {
        role: 'worker', software: SOFTWARE, platform: options.platform, labels: options.labels, hostname: options.hostname,
        ...(options.token === undefined ? {} : { token: options.token }),
      });
      say(`connected to ${options.remote} (${welcome.software}) as a ${options.platform} worker`);
      return { conn, inbox, welcome, requested: false };
    } catch (error) {
      if (error instanceof ConnectionClosed) {
        say(`the connection to ${options.remote} closed during the hello (${error.reason}); retrying in ${(delay / 1000).toFixed(1)}s`
          + (options.tls === undefined || options.tls === null ? ' (if the server uses TLS, give --tls-ca FILE or --tls)' : ''));
        await stop.sleep(delay);
        delay = Math.min(delay * 2, options.maxBackoffMs ?? 30_000);
        continue;
      }
      throw error;
    }
  }
}

/**
 * Waits for a job, sending heartbeats meanwhile. A server that answers none of three (a dead host,
 * a broken NAT mapping) is given up on: the connection is closed and the worker dials again.
 */
async function nextJob(session: Session, say: (line: string) => void, stop: StopRequest): Promise<JobAssignment> {
  const { conn, inbox, welcome } = session;
  // Stopped while idle (service stop, Ctrl-C): there is nothing to report, but the directories of
  // earlier jobs may still be being removed, which runWorker waits for before the worker exits.
  stop.check();
  stop.onStop = () => conn.close();
  const beat = setInterval(() => {
    if (serverSilent(inbox, welcome)) {
      say(`no answer from the server for ${3 * welcome.heartbeatSeconds}s while idle`);
      conn.close();
      return;
    }
    conn.send({ type: 'heartbeat', uuid: null });
  }, welcome.heartbeatSeconds * 1000);
  try {
    for (;;) {
      const message = await inbox.next().catch((error: unknown) => {
        stop.check();
        throw error;
      });
      // A job that came with the signal is not started: the server has seen the connection close
      // and queues it again.
      stop.check();
      if (message.type === 'job') return message;
      // Anything else while idle (heartbeat acks, a late cancel) needs no answer.
    }
  } finally {
    clearInterval(beat);
    stop.onStop = null;
  }
}

/**
 * A stop asked for by SIGTERM or SIGINT (a service stop, Ctrl-C), listened for during the worker's
 * whole life, so that a signal arriving between two phases (a job ending, the connection closing,
 * a reconnection) is never lost. Each phase says how it reacts (`onStop`) and calls `check()` before
 * it waits. The first signal only asks; the listeners are then gone, so a second one ends the
 * process the default way.
 */
class StopRequest {
  signal: NodeJS.Signals | null = null;
  /** The current phase's reaction to the stop. */
  onStop: ((signal: NodeJS.Signals) => void) | null = null;
  private wake: (() => void) | null = null;

  private readonly listener = (signal: NodeJS.Signals): void => {
    this.dispose();
    this.signal = signal;
    this.wake?.();
    this.onStop?.(signal);
  };

  constructor() {
    process.once('SIGTERM', this.listener);
    process.once('SIGINT', this.listener);
  }

  /** Throws Stopped once a stop was asked for. */
  check(): void {
    if (this.signal !== null) throw new Stopped(this.signal);
  }

  /** Waits `ms`, or less if a stop is asked for meanwhile (and then throws Stopped). */
  async sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = null;
    this.check();
  }

  dispose(): void {
    process.off('SIGTERM', this.listener);
    process.off('SIGINT', this.listener);
  }
}

/** The exit status of a worker stopped by `signal`: 128 + its number, as a shell reports it. */
function signalExit(signal: NodeJS.Signals): number {
  return 128 + (os.constants.signals[signal] ?? 15);
}

/** The worker was stopped by `signal` while it waited for a job. */
class Stopped extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`stopped by ${signal}`);
  }
}

function serverSilent(inbox: Inbox<ServerToWorker>, welcome: Welcome): boolean {
  return Date.now() - inbox.lastHeard > 3 * welcome.heartbeatSeconds * 1000;
}

/** Runs one job start to finish. Returns WORKER_EXIT.ok, or lostServer if the connection went away. */
async function runJob(session: Session, job: JobAssignment, options: WorkerOptions, say: (line: string) => void, stop: StopRequest): Promise<number> {
  const { conn, inbox, welcome } = session;
  const sandbox = options.sandbox?.() ?? new ProcessSandbox({ tmpDir: options.tmpDir, killGraceMs: options.killGraceMs });
  const started = Date.now();
  let lost = false;
  // Stopping the worker (service stop, Ctrl-C) stops its job too: the job runs in its own process
  // group (or container), so it would not get the signal otherwise. Nothing is reported: the
  // server records the run as worker lost when the connection closes, and queues the job again.
  // The job is cleaned up as usual below, then the worker exits 128 + the signal's number.
  /** `finished` was sent; and a request-job after it (see below). */
  let reported = false;
  let askedEarly = false;
  stop.onStop = (signal) => {
    if (reported) {
      say(`${signal}: stopping after run ${job.uuid} of ${job.name}, which is reported`);
      // Having asked for its next job, the worker leaves at once, before the server can hand it one
      // (which would be recorded as worker lost). The reported outcome is committed all the same.
      if (askedEarly) conn.close();
      return;
    }
    say(`${signal}: stopping ${job.name} (run ${job.uuid}); the server queues it again`);
    lost = true;
    sandbox.kill({ kind: 'lost' });
  };
  say(`running ${job.name} (run ${job.uuid})`);
  inbox.listener = (message) => {
    if (message.type === 'cancel-run' && message.uuid === job.uuid) {
      say(`cancelling ${job.name}: ${message.message}`);
      sandbox.kill({ kind: 'cancel', message: message.message });
      return true;
    }
    return false;
  };
  inbox.onClose = () => {
    lost = true;
    sandbox.kill({ kind: 'lost' });
  };
  // While the job runs, a server that answers no heartbeat for three periods is treated as gone: the
  // job is stopped, as the server will have recorded it lost and queued it again by then — so a
  // network partition cannot leave the same job running twice for long.
  let watchServer = true;
  const heartbeat = setInterval(() => {
    if (watchServer && serverSilent(inbox, welcome)) {
      say(`no answer from the server for ${3 * welcome.heartbeatSeconds}s; stopping ${job.name}`);
      conn.close();
      return;
    }
    conn.send({ type: 'heartbeat', uuid: job.uuid });
  }, welcome.heartbeatSeconds * 1000);

  // Console lines are batched for a few milliseconds; when the socket backs up, the job's output
  // is paused, so a slow server slows the job down instead of filling the worker's memory.
  let batch: ConsoleChunk[] = [];
  let batchBytes = 0;
  let batchTimer: NodeJS.Timeout | null = null;
  const flush = (): void => {
    if (batchTimer !== null) clearTimeout(batchTimer);
    batchTimer = null;
    if (batch.length === 0) return;
    const chunks = batch;
    batch = [];
    batchBytes = 0;
    if (!conn.send({ type: 'output', uuid: job.uuid, chunks })) {
      sandbox.setPaused(true);
      void conn.drained().then(() => sandbox.setPaused(false));
    }
  };
  const emit = (chunks: ConsoleChunk[]): void => {
    for (const chunk of chunks) {
      pushChunk(batch, chunk);
      batchBytes += chunk.text.length + 16;
    }
    if (batchBytes >= OUTPUT_BATCH_BYTES) flush();
    else batchTimer ??= setTimeout(flush, OUTPUT_BATCH_MS);
  };
  const note = (text: string): void => emit([{ at: Date.now() - started, stream: 'builder', text }]);

  let outcome: Outcome;
  let progress: ProgressWatcher | null = null;
  try {
    await sandbox.prepare({ uuid: job.uuid, name: job.name, platform: job.platform, script: job.script, timeoutSeconds: job.timeoutSeconds, env: job.env ?? {} });
    const file = sandbox.progressFile();
    // An older server would take a progress message for a protocol violation: only if it says so.
    if (file !== null && (welcome.features ?? []).includes('progress')) {
      progress = new ProgressWatcher(file, (value) => {
        flush();
        conn.send({ type: 'progress', uuid: job.uuid, percent: value.percent, message: value.message });
      });
      progress.start();
    }
    outcome = await sandbox.run({ lines: emit });
    // Uploading may stall on a busy server disk (it stops reading from us): not a silence that counts.
    watchServer = false;
    flush();
  } catch (error) {
    outcome = { kind: 'error', message: (error as Error).message };
  }
  // A last look at the progress file: the job may have written its final line just before it ended.
  progress?.stop();
  if (!lost && outcome.kind !== 'error') {
    try {
      for await (const chunk of tarStream(sandbox.collect(note))) {
        if (lost) break;
        await conn.sendWritten({ type: 'upload', uuid: job.uuid, chunk });
      }
    } catch (error) {
      note(`cannot upload artifacts: ${(error as Error).message}`);
      outcome = { kind: 'error', message: `${describeOutcome(outcome)}, but its artifacts could not be read: ${(error as Error).message}` };
    }
  }
  flush();
  // Report first, clean up while the server commits: heartbeats go on until the server has
  // confirmed, so a slow commit on the server or a slow clean-up here never makes a finished run
  // look lost. A --loop worker asks for its next job once clean, without waiting for the
  // confirmation (when the server allows it): that saves a round trip per job. Asking only once
  // clean means a worker stopped during its clean-up has no job given to it yet.
  // A clean-up done within this turn (a process sandbox's is) lets the report and the request leave
  // in one write, and the server record the outcome and start the next run in one commit; a slower
  // one (a container's) never holds the report back past the turn.
  const release = conn.holdForThisTurn();
  let confirmed: Promise<boolean> = Promise.resolve(false);
  if (!lost) {
    conn.send({ type: 'finished', uuid: job.uuid, outcome: limitOutcome(outcome) });
    reported = true;
    confirmed = (async () => {
      for (;;) {
        const message = await inbox.next();
        if (message.type === 'finished-ack' && message.uuid === job.uuid) return true;
        if (message.type === 'job') {
          // A server hands out the next job only after confirming: this one breaks the protocol.
          say(`the server sent job ${message.uuid} before confirming run ${job.uuid}; closing the connection`);
          conn.close();
          return false;
        }
      }
    })().catch(() => false);
  }
  await sandbox.cleanUp((problem) => say(problem));
  if (options.loop && !lost && stop.signal === null && (welcome.features ?? []).includes('request-after-finished')) {
    conn.send({ type: 'request-job' });
    session.requested = true;
    askedEarly = true;
  }
  release();
  // False when the connection closed first: said below.
  const wasConfirmed = await confirmed;
  clearInterval(heartbeat);
  inbox.listener = null;
  inbox.onClose = null;
  stop.onStop = null;
  if (stop.signal !== null) {
    conn.close();
    return signalExit(stop.signal);
  }
  if (lost && !reported) {
    say(`lost the connection to the server while running ${job.name}; the job was stopped (the server queues it again)`);
    return WORKER_EXIT.lostServer;
  }
  if (!wasConfirmed) {
    say(`lost the connection to the server after reporting run ${job.uuid} (${describeOutcome(outcome)}) but before it confirmed; `
      + 'if the report did not arrive, the server queues the job again');
    return WORKER_EXIT.lostServer;
  }
  say(`${job.name} (run ${job.uuid}) ${describeOutcome(outcome)}`);
  return WORKER_EXIT.ok;
}

/** Outcome messages are bounded on the wire; a long one (a deep path in an error) is cut. */
function limitOutcome(outcome: Outcome): Outcome {
  if ('message' in outcome && outcome.message !== undefined) return { ...outcome, message: limitMessage(outcome.message) };
  return outcome;
}

export function defaultHostname(): string {
  return os.hostname();
}
