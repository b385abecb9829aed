/**
 * The worker side of the server: who is connected, who waits for a job (long poll), handing queued
 * runs to waiting workers, console lines, artifact uploads, heartbeats and lost workers.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type { Connection } from '../protocol/connection.js';
import { artifactParser } from '../protocol/artifacts.js';
import { lineStats } from '../protocol/console-chunks.js';
import { type Hello, WorkerMessage, parseWith } from '../protocol/messages.js';
import type { Artifact, ConsoleChunk, JobSource, Outcome, Progress, RunSummary, WorkerInfo } from '../protocol/types.js';
import { describeOutcome, limitMessage } from '../protocol/types.js';
import type { ConsoleWriter } from './console-log.js';
import { diskFullProblem, isDiskFull } from './disk.js';
import { guard } from './log.js';
import type { ServerContext } from './server.js';
import type { Enqueued, JobRecord } from './store.js';
import { TemplateError } from './templates.js';

/** How many heartbeat periods of silence mean a running worker is lost. */
const MISSED_HEARTBEATS = 3;

/** A job whose runs lose their worker this many times in a row is not queued again automatically. */
export const MAX_CONSECUTIVE_LOSSES = 5;

/** An artifact upload in progress: the tar stream is parsed and each file stored as it arrives. */
class Upload {
  readonly artifacts: Artifact[] = [];
  problem: string | null = null;
  private readonly pending: Promise<void>[] = [];
  private readonly parser;
  private ended: Promise<void>;
  /** Reading from the worker is paused until the parser drains. */
  private waiting = false;

  /** Bytes the tar headers announced so far: the run's total is checked before a file is stored. */
  private announced = 0;

  constructor(context: ServerContext, private readonly conn: Connection, private readonly paused: (paused: boolean) => void) {
    this.parser = artifactParser({
      file: (path, size, entry) => {
        this.announced += size;
        if (this.announced > context.options.maxRunArtifactBytes) {
          this.problem ??= `the run's artifacts exceed the limit of ${context.options.maxRunArtifactBytes} bytes in all (--max-run-artifact-bytes)`;
          entry.resume();
          return;
        }
        this.pending.push(context.artifacts.store(path, size, entry, context.options.maxArtifactBytes)
          .then((artifact) => { this.artifacts.push(artifact); })
          .catch((error: Error) => { this.problem ??= error.message; entry.resume(); }));
      },
      refuse: (reason) => { this.problem ??= reason; },
    });
    this.ended = new Promise((resolve) => {
      this.parser.on('end', resolve);
      this.parser.on('close', resolve);
      this.parser.on('error', () => resolve());
    });
  }

  write(chunk: Uint8Array): void {
    if (!this.parser.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)) && !this.waiting) {
      // Disk slower than the network: stop reading from this worker until the parser catches up.
      // Its heartbeats wait in the socket meanwhile, so its silence does not count. (Frames already
      // decoded from the last read still arrive: one wait is enough for them all.)
      this.waiting = true;
      this.conn.pause();
      this.paused(true);
      this.parser.once('drain', () => {
        this.waiting = false;
        this.paused(false);
        this.conn.resume();
      });
    }
  }

  /** Ends the stream and waits until every file is durable (or refused). */
  async finish(): Promise<void> {
    this.parser.end();
    await this.ended;
    await Promise.all(this.pending);
    if (this.problem === null && new Set(this.artifacts.map((a) => a.path)).size !== this.artifacts.length) {
      this.problem = 'the artifact stream holds the same path twice';
    }
  }
}

interface ActiveRun {
  uuid: string;
  job: string;
  console: ConsoleWriter;
  /** Past --max-console-bytes: further output is dropped. */
  consoleFull?: boolean;
  upload: Upload | null;
  finishing: boolean;
  /** Secret values (and each line of a multi-line one), longest first: masked in what the run reports. */
  secrets: string[];
  /** The secrets without a newline: those that can occur in a console line (masked in console chunks). */
  lineSecrets: string[];
  progress: Progress | null;
}

/** The strings to mask for a job's secret values: each value, and each line of a multi-line one. */
export function secretMasks(values: string[]): string[] {
  const masks = new Set<string>();
  for (const value of values) {
    if (value !== '') masks.add(value);
    for (const line of value.split('\n').map((text) => text.replace(/\r$/, ''))) if (line !== '') masks.add(line);
  }
  return [...masks].sort((a, b) => b.length - a.length);
}

/** Replaces every occurrence of a secret by ***. */
export function maskSecrets(text: string, masks: string[]): string {
  let masked = text;
  for (const mask of masks) if (masked.includes(mask)) masked = masked.split(mask).join('***');
  return masked;
}

export class WorkerSession {
  readonly id: string;
  readonly connectedAt = Date.now();
  lastSeen = Date.now();
  run: ActiveRun | null = null;
  waiting = false;
  /** It sent request-job after its run's `finished`, before the outcome was committed. */
  nextRequested = false;
  /**
   * The run it was given in the same commit as its outcome: sent right after the acknowledgement,
   * once the reply to `finished` is on its way.
   */
  nextStart: Start | null = null;
  /** Why the server ended this worker's connection, when it did (shown for a gone worker). */
  goneReason: string | null = null;
  private silence: NodeJS.Timeout | null = null;

  constructor(private readonly dispatcher: Dispatcher, readonly conn: Connection, readonly hello: Hello & { platform: string; hostname: string }) {
    this.id = `${hello.hostname}/${randomBytes(2).toString('hex')}`;
  }

  get platform(): string {
    return this.hello.platform;
  }

  get labels(): string[] {
    return this.hello.labels ?? [];
  }

  /** As `workers` lists it: active when heard from within 1.5 heartbeats, late when not. */
  info(heartbeatSeconds: number, now = Date.now()): WorkerInfo {
    return {
      id: this.id, platform: this.platform, labels: this.labels, hostname: this.hello.hostname,
      version: this.hello.software, address: this.conn.peer, connectedAt: this.connectedAt, lastSeen: this.lastSeen,
      run: this.run?.uuid ?? null,
      status: now - this.lastSeen > heartbeatSeconds * 1500 ? 'late' : 'active',
      progress: this.run?.progress ?? null,
      goneAt: null, reason: null,
    };
  }

  message(value: unknown): void {
    this.lastSeen = Date.now();
    this.silence?.refresh();
    const parsed = parseWith(WorkerMessage, value);
    if (!parsed.ok) {
      this.dispatcher.protocolViolation(this, parsed.error);
      return;
    }
    this.dispatcher.handle(this, parsed.message).catch((error: Error) => {
      this.dispatcher.guarded('worker message', () => this.dispatcher.protocolViolation(this, `internal error: ${error.message}`));
    });
  }

  closed(reason: string): void {
    this.stopSilenceTimer();
    this.dispatcher.guarded('worker disconnect', () => this.dispatcher.removeWorker(this, reason));
  }

  startSilenceTimer(heartbeatSeconds: number, onSilent: () => void): void {
    this.stopSilenceTimer();
    this.silence = setTimeout(() => this.dispatcher.guarded('heartbeat timeout', onSilent), heartbeatSeconds * MISSED_HEARTBEATS * 1000);
  }

  stopSilenceTimer(): void {
    if (this.silence !== null) clearTimeout(this.silence);
    this.silence = null;
  }
}

/** A run started inside a dispatch pass, to be sent to its worker once the pass has committed. */
interface Start {
  worker: WorkerSession;
  uuid: string;
  job: JobRecord;
  script: string;
  env: Record<string, string>;
  secrets: Record<string, string>;
}

interface PendingFinish {
  worker: WorkerSession;
  uuid: string;
  outcome: Outcome;
  artifacts: Artifact[];
  consoleLines: number;
  /** Files of a refused upload, already stored, that belong to no run. */
  refused: Artifact[];
  resolve(): void;
  reject(error: Error): void;
}

const DISK_RETRY_MS = 2000;
/** Gone workers remembered at most (the newest), however short --forget-workers-after is. */
const GONE_WORKERS_KEPT = 100;

export class Dispatcher {
  private readonly workers = new Set<WorkerSession>();
  private gone: WorkerInfo[] = [];
  /** Per platform, the timer that tries dispatching again once a full disk may have room. */
  private readonly diskRetry = new Map<string, NodeJS.Timeout>();
  /** Runs whose artifacts are being stored and not yet committed (see Retention). */
  private readonly uploads = new Set<string>();
  /** Set when the server stops: no more dispatch passes (the store is about to close). */
  private stopped = false;
  /** Platforms with a dispatch pass due at the end of this turn. */
  private readonly dispatchDue = new Set<string>();
  /** Outcomes waiting for the group commit at the end of this turn (see commitFinish). */
  private finishing: PendingFinish[] = [];
  /** Workers that asked for a job and got none yet, per platform, in the order they asked. */
  private readonly waiting = new Map<string, WorkerSession[]>();

  constructor(private readonly context: ServerContext) {}

  /** Runs an action from a callback or timer; a failure is logged, never thrown. */
  guarded(during: string, action: () => void): void {
    guard(this.context.log, during, action);
  }

  addWorker(conn: Connection, hello: Hello): WorkerSession {
    const session = new WorkerSession(this, conn, hello as Hello & { platform: string; hostname: string });
    this.workers.add(session);
    this.context.log('hello', {
      peer: conn.peer, role: 'worker', worker: session.id, platform: session.platform,
      labels: (hello.labels ?? []).join(','), software: hello.software,
    });
    // Idle or busy, a worker heartbeats every period; several missed and it is gone.
    this.watchSilence(session);
    return session;
  }

  /** Connected workers, with their status (active or late). */
  list(): WorkerInfo[] {
    const now = Date.now();
    return [...this.workers].map((worker) => worker.info(this.context.options.heartbeatSeconds, now));
  }

  /** Connected workers, then those gone within --forget-workers-after, newest first. */
  listAll(): WorkerInfo[] {
    return [...this.list(), ...this.recentlyGone()];
  }

  /** Connected workers of a platform, with their labels. */
  workersOf(platform: string): { id: string; labels: string[] }[] {
    return [...this.workers].filter((worker) => worker.platform === platform).map((worker) => ({ id: worker.id, labels: worker.labels }));
  }

  /** Whether an upload is storing files whose rows are not committed yet. */
  get uploading(): boolean {
    return this.uploads.size > 0;
  }

  /** Workers that left within --forget-workers-after (at most 100), newest first; older ones are forgotten. */
  private recentlyGone(): WorkerInfo[] {
    const now = Date.now();
    const keep = this.context.options.forgetWorkersSeconds * 1000;
    this.gone = this.gone.filter((gone) => now - (gone.goneAt ?? 0) < keep);
    return this.gone;
  }

  get count(): number {
    return this.workers.size;
  }

  /** Bytes of console written so far for a run being written here now, or null. */
  consoleOffset(uuid: string): number | null {
    for (const worker of this.workers) if (worker.run?.uuid === uuid) return worker.run.console.bytes;
    return null;
  }

  workerRunning(uuid: string): WorkerSession | null {
    for (const worker of this.workers) if (worker.run?.uuid === uuid) return worker;
    return null;
  }

  /** Runs left `running` by a server that died are recorded as worker lost and queued again. */
  recoverInterrupted(): void {
    const { store, log } = this.context;
    for (const run of store.runsInState('running')) {
      const lines = this.countConsoleLines(run.uuid);
      const again = store.loseRun(run.uuid, 'the server stopped while the run was in progress', Date.now(), lines);
      log('recover', { run: run.uuid, job: run.job, requeued: again?.uuid ?? 'no' });
    }
  }

  private countConsoleLines(uuid: string): number {
    let lines = 0;
    try {
      const text = fs.readFileSync(this.context.consoles.fileOf(uuid));
      for (const byte of text) if (byte === 10) lines++;
    } catch {
      // No console file: the run never printed anything.
    }
    return lines;
  }

  /** Runs were queued (by a client, the scheduler, or a lost worker): tell observers, try to dispatch. */
  queued(runs: Enqueued[]): void {
    const { store, hub, log } = this.context;
    const platforms = new Set<string>();
    for (const queued of runs) {
      if (queued.fresh) log('queue', { run: queued.uuid, job: queued.job, platform: queued.platform });
      platforms.add(queued.platform);
      // Loaded only for observe-latest waiters: a scheduler burst queues thousands at once.
      if (!hub.hasLatestWaiters) continue;
      const run = store.getRun(queued.uuid);
      if (run === null) continue;
      for (const waiter of hub.takeLatestWaiters(run)) {
        void hub.observe(waiter.conn, waiter.id, run, (uuid) => this.consoleOffset(uuid));
      }
    }
    for (const platform of platforms) this.dispatch(platform);
  }

  /** Puts a worker that asked for a job in its platform's waiting list (once) and tries dispatching. */
  private wait(worker: WorkerSession): void {
    if (this.enqueueWaiting(worker)) this.dispatch(worker.platform);
  }

  /** Puts a worker at the end of its platform's waiting list; false if it is there already or gone. */
  private enqueueWaiting(worker: WorkerSession): boolean {
    if (worker.waiting || worker.conn.isClosed) return false;
    worker.waiting = true;
    const list = this.waiting.get(worker.platform) ?? [];
    list.push(worker);
    this.waiting.set(worker.platform, list);
    return true;
  }

  /**
   * Hands queued runs of `platform` to waiting workers soon: at the end of this turn of the event
   * loop, so that the workers that asked and the runs that were queued during the turn are matched
   * in one pass and one commit.
   */
  dispatch(platform: string): void {
    this.dispatchDue.add(platform);
    if (this.dispatchDue.size > 1) return;
    setImmediate(() => {
      const platforms = [...this.dispatchDue];
      this.dispatchDue.clear();
      if (this.stopped) return;
      for (const due of platforms) this.guarded('dispatch', () => this.dispatchNow(due));
    });
  }

  /**
   * Hands queued runs of `platform` to waiting workers, in the order they asked: each gets the first
   * run whose job requires no label it lacks. All starts share one commit; workers get their jobs
   * only once it is done.
   */
  private dispatchNow(platform: string): void {
    const { store, log } = this.context;
    const waiting = this.waiting.get(platform);
    if (waiting === undefined || waiting.length === 0 || !store.hasQueued(platform)) return;
    if (this.diskFull(platform)) return;
    const starts: Start[] = [];
    const failed: RunSummary[] = [];
    try {
      store.batch(() => this.startWaiting(platform, starts, failed), false);
    } catch (error) {
      // The commit failed (the database's disk is full?): nothing started; the workers wait on.
      log('error', { platform, problem: `cannot start runs: ${(error as Error).message}` });
      this.retryDispatch(platform);
      return;
    }
    this.started(platform, starts);
    for (const run of failed) this.context.hub.end(run);
    for (const start of starts) this.begin(start);
  }

  /**
   * A full disk: runs stay queued and workers wait; tried again in a while. Looked at once per pass,
   * not per run handed out, and a look that found room serves the passes of the next 20 ms (a statfs
   * was 5 % of the server's time per run with one worker taking runs as fast as it can).
   */
  private diskFull(platform: string): boolean {
    const { options, log } = this.context;
    const full = diskFullProblem(options.stateDir, options.minFreeBytes, 20);
    if (full === null) return false;
    if (!this.diskRetry.has(platform)) log('disk-full', { platform, problem: full });
    this.retryDispatch(platform);
    return true;
  }

  /**
   * The dispatch pass itself, inside the caller's transaction: starts queued runs of `platform` on its
   * waiting workers, in the order they asked; each gets the first run whose job requires no label it
   * lacks. Callers have seen that something is queued; the pass stops once nothing is.
   */
  private startWaiting(platform: string, starts: Start[], failed: RunSummary[]): void {
    const { store } = this.context;
    for (const worker of this.waiting.get(platform) ?? []) {
      if (worker.conn.isClosed) continue;
      for (;;) {
        const next = store.nextFor(platform, worker.labels);
        if (next === null) break;
        const start = this.start(worker, next.uuid, next.job, failed);
        if (start !== null) {
          starts.push(start);
          break;
        }
      }
      if (!store.hasQueued(platform)) return;
    }
  }

  /** After a dispatch pass committed: the workers that got a run leave the waiting list. */
  private started(platform: string, starts: Start[]): void {
    const given = new Set(starts.map((start) => start.worker));
    const waiting = this.waiting.get(platform) ?? [];
    this.waiting.set(platform, waiting.filter((worker) => !worker.conn.isClosed && !given.has(worker)));
  }

  private retryDispatch(platform: string): void {
    if (this.diskRetry.has(platform)) return;
    this.diskRetry.set(platform, setTimeout(() => {
      this.diskRetry.delete(platform);
      this.dispatch(platform);
    }, DISK_RETRY_MS));
  }

  /**
   * Records a queued run as started on a waiting worker (inside dispatchNow's transaction) and says
   * what to send once that commits; null when the run failed before it could start (its template:
   * the job's problem, never the worker's), its summary added to `failed`.
   */
  private start(worker: WorkerSession, uuid: string, job: JobRecord, failed: RunSummary[]): Start | null {
    const { store, templates, log } = this.context;
    const now = Date.now();
    let script: string;
    const source: JobSource = job.source;
    try {
      script = source.kind === 'script' ? source.script
        : templates.render(source.template, job.platform, source.vars, { job: job.name, platform: job.platform, uuid });
    } catch (error) {
      const message = error instanceof TemplateError ? error.message : `template ${source.kind === 'template' ? source.template : ''} failed: ${(error as Error).message}`;
      store.finishRun(uuid, { kind: 'error', message: limitMessage(message) }, now);
      log('finish', { run: uuid, job: job.name, outcome: `error: ${message}` });
      const run = store.getRun(uuid);
      if (run !== null) failed.push(run);
      return null;
    }
    const env = job.env ?? {};
    const secrets = store.secretsOf(job.name);
    store.startRun(uuid, worker.id, source, script, now, { env, secretKeys: Object.keys(secrets) });
    return { worker, uuid, job, script, env, secrets };
  }

  /** Sends a committed start to its worker. */
  private begin({ worker, uuid, job, script, env, secrets }: Start): void {
    const { store, hub, log, options } = this.context;
    worker.waiting = false;
    const masks = secretMasks(Object.values(secrets));
    worker.run = {
      uuid, job: job.name, console: this.context.consoles.open(uuid), upload: null, finishing: false,
      secrets: masks, lineSecrets: masks.filter((mask) => !mask.includes('\n')), progress: null,
    };
    if (worker.conn.isClosed) {
      // It left while the start was being committed: its run is lost and queued again at once.
      this.loseRun(worker, `worker ${worker.id} disconnected: ${worker.goneReason ?? 'connection closed'}`);
      return;
    }
    const given = { ...env, ...secrets };
    worker.conn.send({
      type: 'job', uuid, name: job.name, platform: job.platform, script,
      timeoutSeconds: job.timeoutSeconds ?? options.jobTimeoutSeconds,
      ...(Object.keys(given).length > 0 ? { env: given } : {}),
    });
    log('dispatch', { run: uuid, job: job.name, platform: job.platform, worker: worker.id });
    if (hub.watching(uuid)) {
      const run = store.getRun(uuid);
      if (run !== null) hub.update(run);
    }
  }

  async handle(worker: WorkerSession, message: WorkerMessage): Promise<void> {
    switch (message.type) {
      case 'request-job': {
        if (worker.run !== null) {
          // After its `finished` (feature request-after-finished), a worker may ask for its next job
          // before the outcome is committed: it joins the waiting workers in the outcome's commit,
          // where its next run may start too (see commitFinishes). That saves one round trip per job
          // for a worker in --loop mode.
          if (!worker.run.finishing) return this.protocolViolation(worker, `request-job while run ${worker.run.uuid} is not finished`);
          worker.nextRequested = true;
          return;
        }
        this.wait(worker);
        return;
      }
      case 'heartbeat':
        worker.conn.send({ type: 'heartbeat-ack', uuid: message.uuid });
        return;
      case 'output': {
        const run = this.currentRun(worker, message.uuid, 'output');
        if (run === null) return;
        // A chunk's lines are joined by \n and no mask holds one, so masking the whole chunk masks
        // each line exactly as masking them one by one would.
        const { chunks, lines } = this.limitConsole(run, run.secrets.length === 0 ? message.chunks
          : message.chunks.map((chunk) => ({ ...chunk, text: maskSecrets(chunk.text, run.lineSecrets) })));
        if (chunks.length === 0) return;
        try {
          run.console.append(chunks, lines);
        } catch (error) {
          // The job goes on; what it prints from now on is not kept (observers are told).
          run.consoleFull = true;
          const problem = isDiskFull(error) ? 'the server\'s disk is full' : `the server cannot write the console: ${(error as Error).message}`;
          this.context.log(isDiskFull(error) ? 'disk-full' : 'error', { run: run.uuid, problem: `console not written: ${problem}` });
          this.context.hub.lines(run.uuid, [{ at: chunks[0]?.at ?? 0, stream: 'builder', text: `${problem}: the rest of this console is not kept` }], null);
          return;
        }
        this.context.hub.lines(run.uuid, chunks, run.console.bytes);
        return;
      }
      case 'progress': {
        const run = this.currentRun(worker, message.uuid, 'progress');
        if (run === null) return;
        run.progress = { percent: message.percent, message: maskSecrets(message.message, run.secrets), at: Date.now() };
        this.context.store.setProgress(run.uuid, run.progress);
        const summary = this.context.store.getRun(run.uuid);
        if (summary !== null) this.context.hub.update(summary);
        return;
      }
      case 'upload': {
        const run = this.currentRun(worker, message.uuid, 'upload');
        if (run === null) return;
        if (run.upload === null) this.uploads.add(run.uuid);
        run.upload ??= new Upload(this.context, worker.conn, (paused) => {
          if (paused) worker.stopSilenceTimer();
          else if (worker.run === run && !run.finishing) this.watchSilence(worker);
        });
        run.upload.write(message.chunk);
        return;
      }
      case 'finished': {
        const run = this.currentRun(worker, message.uuid, 'finished');
        if (run === null) return;
        if (message.outcome.kind === 'worker-lost') return this.protocolViolation(worker, 'a worker cannot report its own run as worker-lost');
        try {
          await this.finish(worker, run, message.outcome);
        } catch (error) {
          // The outcome could not be recorded (disk full?): the run is lost and queued again rather
          // than left running forever; the worker hears why.
          run.finishing = false;
          if (worker.run === null) worker.run = run;
          const problem = `the server could not record the outcome of run ${run.uuid}: ${(error as Error).message}`;
          this.context.log('error', { worker: worker.id, problem });
          this.guarded('losing an unrecorded run', () => this.loseRun(worker, problem));
          worker.conn.fail(problem);
        }
        return;
      }
    }
  }

  private currentRun(worker: WorkerSession, uuid: string, what: string): ActiveRun | null {
    if (worker.run === null || worker.run.uuid !== uuid || worker.run.finishing) {
      this.protocolViolation(worker, `${what} for run ${uuid}, which is not the run this worker is running (${worker.run?.uuid ?? 'none'})`);
      return null;
    }
    return worker.run;
  }

  private async finish(worker: WorkerSession, run: ActiveRun, reported: Outcome): Promise<void> {
    const { store, hub, log } = this.context;
    run.finishing = true;
    // The worker has reported; storing its artifacts may take a while, and that is not its silence.
    worker.stopSilenceTimer();
    let outcome = reported;
    let artifacts: Artifact[] = [];
    if (run.upload !== null) {
      await run.upload.finish();
      if (run.upload.problem !== null) {
        outcome = { kind: 'error', message: limitMessage(`${describeOutcome(reported)}, but its artifacts were refused: ${run.upload.problem}`) };
        const note: ConsoleChunk = { at: Date.now() - (store.getRun(run.uuid)?.startedAt ?? Date.now()), stream: 'builder', text: `artifacts refused: ${run.upload.problem}` };
        run.console.append([note]);
        hub.lines(run.uuid, [note], run.console.bytes);
      } else {
        artifacts = run.upload.artifacts;
      }
    }
    run.console.close(this.context.options.strict);
    try {
      await this.commitFinish(worker, run.uuid, outcome, artifacts, run.console.lines, run.upload !== null && run.upload.problem !== null ? run.upload.artifacts : []);
    } finally {
      this.uploads.delete(run.uuid);
    }
    worker.run = null;
    this.watchSilence(worker);
    const next = worker.nextStart;
    worker.nextStart = null;
    // The acknowledgement and the next run (when the same commit started one) leave in one write.
    worker.conn.together(() => {
      worker.conn.send({ type: 'finished-ack', uuid: run.uuid });
      if (next !== null) this.begin(next);
    });
    if (worker.nextRequested) {
      worker.nextRequested = false;
      // Asked early and given nothing in that commit: it waits (already, when there was no run to give).
      if (next === null) this.wait(worker);
    }
    log('finish', { run: run.uuid, job: run.job, worker: worker.id, outcome: describeOutcome(outcome), artifacts: artifacts.length, lines: run.console.lines });
    if (hub.watching(run.uuid)) {
      const summary = store.getRun(run.uuid);
      if (summary !== null) hub.end(summary);
    }
  }

  /**
   * Group commit: outcomes reported during one turn of the event loop are committed together, in
   * one transaction, after the turn (with --strict, one fsync for them all); each resolves once it
   * is committed, and only then is the worker acknowledged. An outcome the store refuses (its run is
   * no longer running) fails alone: each is a savepoint of the shared transaction.
   *
   * A worker that asked for its next job along with its outcome (request-after-finished) joins its
   * platform's waiting workers inside that transaction, and a dispatch pass runs there too: its
   * next run starts in the same commit, and leaves with the acknowledgement (see finish).
   */
  private commitFinish(worker: WorkerSession, uuid: string, outcome: Outcome, artifacts: Artifact[], consoleLines: number, refused: Artifact[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.finishing.length === 0) setImmediate(() => this.commitFinishes());
      this.finishing.push({ worker, uuid, outcome, artifacts, consoleLines, refused, resolve, reject });
    });
  }

  private commitFinishes(): void {
    const { store, retention, log } = this.context;
    const batch = this.finishing;
    this.finishing = [];
    let failures: (Error | null)[];
    const starts: Start[] = [];
    const failed: RunSummary[] = [];
    const asked = new Set<WorkerSession>();
    const passes: string[] = [];
    try {
      failures = store.batch(() => {
        const outcomes = batch.map((item) => {
          try {
            store.finishRun(item.uuid, item.outcome, Date.now(), item.artifacts, item.consoleLines);
            // Files a refused upload had already stored belong to no run: they go with the garbage.
            if (item.refused.length > 0) store.addGarbage('artifact', item.refused.map((a) => a.sha256));
            return null;
          } catch (error) {
            return error as Error;
          }
        });
        batch.forEach((item, i) => {
          if (outcomes[i] === null && item.worker.nextRequested && this.enqueueWaiting(item.worker)) asked.add(item.worker);
        });
        for (const platform of new Set([...asked].map((worker) => worker.platform))) {
          if (this.stopped || !store.hasQueued(platform) || this.diskFull(platform)) continue;
          const before = { starts: starts.length, failed: failed.length };
          try {
            // A savepoint of its own: a pass that fails leaves the outcomes to commit, and the
            // workers that asked wait, as after a failed dispatchNow.
            store.batch(() => this.startWaiting(platform, starts, failed));
            passes.push(platform);
          } catch (error) {
            starts.length = before.starts;
            failed.length = before.failed;
            log('error', { platform, problem: `cannot start runs: ${(error as Error).message}` });
            this.retryDispatch(platform);
          }
        }
        return outcomes;
      });
    } catch (error) {
      // The commit itself failed (a full disk): none of them is recorded, and nothing started.
      failures = batch.map(() => error as Error);
      starts.length = 0;
      failed.length = 0;
    }
    // A worker acknowledged in this turn gets its run with the acknowledgement (see finish, which
    // goes on once this function has returned).
    for (const start of starts) if (asked.has(start.worker)) start.worker.nextStart = start;
    batch.forEach((item, i) => {
      const failure = failures[i];
      if (failure === null || failure === undefined) item.resolve();
      else item.reject(failure);
    });
    this.guarded('starting runs', () => {
      for (const platform of passes) this.started(platform, starts);
      for (const start of starts) if (!asked.has(start.worker)) this.begin(start);
    });
    this.guarded('ending runs', () => {
      for (const run of failed) this.context.hub.end(run);
    });
    // Acknowledgements and observers first (the promises above), then the files of pruned runs.
    setImmediate(() => this.guarded('collecting garbage', () => retention.collect()));
  }

  /**
   * Console limits: a line longer than --max-line-bytes is cut, saying so; past --max-console-bytes
   * a run's output is no longer kept, and one note says so. The job itself runs on. A chunk none of
   * whose lines is near the line limit and that fits under the console limit (nearly always) is
   * kept whole; only one that may break a limit is looked at line by line. Returns the chunks to
   * keep and how many lines they hold.
   */
  private limitConsole(run: ActiveRun, chunks: ConsoleChunk[]): { chunks: ConsoleChunk[]; lines: number } {
    const { maxLineBytes, maxConsoleBytes } = this.context.options;
    if (run.consoleFull) return { chunks: [], lines: 0 };
    const kept: ConsoleChunk[] = [];
    let keptLines = 0;
    let bytes = run.console.bytes;
    // Each line counts its UTF-8 bytes and 16 more; the chunk's (lines - 1) joining \n are not lines'
    // bytes. Far from the limit, 3 bytes per UTF-16 unit (UTF-8's most) is counted instead: the exact
    // count is a pass over every byte, and is made only once a chunk might not fit.
    const chunkBytes = (text: string, lines: number, exact: boolean): number =>
      (exact ? Buffer.byteLength(text) : 3 * text.length) - (lines - 1) + 16 * lines;
    let exact = false;
    for (const chunk of chunks) {
      const { lines, longest } = lineStats(chunk.text);
      // Exact from here on when the chunk might not fit, or has a line to cut (a cut line may hold
      // more bytes than the estimate of its share).
      if (!exact && (longest > maxLineBytes / 4 || bytes + chunkBytes(chunk.text, lines, false) > maxConsoleBytes)) {
        exact = true;
        bytes = run.console.bytes;
        for (const earlier of kept) bytes += chunkBytes(earlier.text, lineStats(earlier.text).lines, true);
      }
      const size = chunkBytes(chunk.text, lines, exact);
      if (longest <= maxLineBytes / 4 && bytes + size <= maxConsoleBytes) {
        kept.push(chunk);
        keptLines += lines;
        bytes += size;
        continue;
      }
      const texts: string[] = [];
      for (const line of chunk.text.split('\n')) {
        let text = line;
        if (text.length > maxLineBytes / 4 && Buffer.byteLength(text) > maxLineBytes) {
          const cut = Buffer.from(text).subarray(0, maxLineBytes).toString('utf8').replace(/\uFFFD$/, '');
          text = `${cut}… (line cut at ${maxLineBytes} bytes, --max-line-bytes)`;
        }
        bytes += Buffer.byteLength(text) + 16;
        if (bytes > maxConsoleBytes) {
          run.consoleFull = true;
          if (texts.length > 0) kept.push({ ...chunk, text: texts.join('\n') });
          kept.push({ at: chunk.at, stream: 'builder', text: `console limit of ${maxConsoleBytes} bytes reached: the rest of this run's output is not kept (--max-console-bytes)` });
          return { chunks: kept, lines: keptLines + texts.length + 1 };
        }
        texts.push(text);
      }
      kept.push({ ...chunk, text: texts.join('\n') });
      keptLines += texts.length;
    }
    return { chunks: kept, lines: keptLines };
  }

  /** Starts (or restarts in full) the timer after which a silent running worker is lost. */
  private watchSilence(worker: WorkerSession): void {
    worker.startSilenceTimer(this.context.options.heartbeatSeconds, () => this.silent(worker));
  }

  /**
   * A worker went silent for several heartbeats (a hung host, a broken network path): it is gone,
   * its run (if any) is lost and queued again, and its connection is closed.
   */
  private silent(worker: WorkerSession): void {
    const seconds = this.context.options.heartbeatSeconds * MISSED_HEARTBEATS;
    this.context.log('error', { worker: worker.id, problem: `no heartbeat for ${seconds}s` });
    worker.goneReason = `no heartbeat for ${seconds}s`;
    const running = worker.run !== null && !worker.run.finishing;
    this.loseRun(worker, `no heartbeat from ${worker.id} for ${seconds}s`);
    worker.conn.fail(`no heartbeat for ${seconds}s${running ? ': your run was recorded as worker lost and queued again' : ''}`);
  }

  /** A bad message from a worker ends its connection (its run, if any, is lost and queued again). */
  protocolViolation(worker: WorkerSession, problem: string): void {
    this.context.log('error', { peer: worker.conn.peer, worker: worker.id, problem });
    this.loseRun(worker, `worker ${worker.id} sent an invalid message: ${problem}`);
    worker.conn.fail(problem);
  }

  removeWorker(worker: WorkerSession, reason: string): void {
    if (!this.workers.delete(worker)) return;
    // Remembered as gone, newest first, until --forget-workers-after.
    const now = Date.now();
    this.gone = [{ ...worker.info(this.context.options.heartbeatSeconds, now), status: 'gone' as const, progress: null, goneAt: now, reason: worker.goneReason ?? reason },
      ...this.recentlyGone()].slice(0, GONE_WORKERS_KEPT);
    this.context.log('gone', { worker: worker.id, reason: worker.goneReason ?? reason });
    const list = this.waiting.get(worker.platform);
    if (list !== undefined) this.waiting.set(worker.platform, list.filter((w) => w !== worker));
    this.loseRun(worker, `worker ${worker.id} disconnected: ${reason}`);
  }

  private loseRun(worker: WorkerSession, message: string): void {
    const run = worker.run;
    // A run whose outcome arrived is committed by finish(), whatever happens to the connection now.
    if (run === null || run.finishing) return;
    worker.run = null;
    worker.stopSilenceTimer();
    run.console.close(false);
    // Files it is still storing are never referenced: it no longer counts as uploading once done.
    if (run.upload === null) this.uploads.delete(run.uuid);
    else {
      const upload = run.upload;
      void upload.finish().catch(() => {}).finally(() => {
        this.uploads.delete(run.uuid);
        this.guarded('forgetting a lost upload', () => {
          this.context.store.addGarbage('artifact', upload.artifacts.map((a) => a.sha256));
          this.context.retention.collect();
        });
      });
    }
    const { store, hub, log } = this.context;
    const again = store.loseRun(run.uuid, limitMessage(message), Date.now(), run.console.lines, MAX_CONSECUTIVE_LOSSES);
    log('lost', { run: run.uuid, job: run.job, worker: worker.id, reason: message, requeued: again?.uuid ?? 'no' });
    const summary = store.getRun(run.uuid);
    if (summary !== null) hub.end(summary);
    if (again !== null) this.queued([again]);
    this.context.retention.collect();
  }

  /** Asks the worker running `uuid` to cancel it. Returns false if no connected worker runs it. */
  cancelRunning(uuid: string, message: string): boolean {
    const worker = this.workerRunning(uuid);
    if (worker === null) return false;
    worker.conn.send({ type: 'cancel-run', uuid, message });
    this.context.log('cancel', { run: uuid, worker: worker.id });
    return true;
  }

  stop(): void {
    this.stopped = true;
    for (const worker of this.workers) worker.stopSilenceTimer();
    for (const timer of this.diskRetry.values()) clearTimeout(timer);
  }
}
