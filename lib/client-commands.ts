/**
 * What each builder-client command does and prints. Human output is aligned text; `--json` output
 * is documented in the README and stable: times are ISO 8601 strings in UTC, runs carry a `status`.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ReadEntry } from 'tar';
import { prefixLines } from '../protocol/console-chunks.js';
import type {
  Artifact, ConsoleChunk, Info, JobSource, JobSourceSummary, Period, Progress, RunDetail, RunSummary, WorkerInfo,
} from '../protocol/types.js';
import { describeOutcome, isSuccess, runStatus } from '../protocol/types.js';
import { KnownDirs, SMALL_FILE_BYTES, SmallFileSlots, readWhole, writeHashed } from './artifact-files.js';
import { Client, ClientError, EXIT } from './client.js';
import { describePeriod } from './period.js';

export interface Output {
  out(text: string): void;
  err(text: string): void;
  /** Redraw a status line on stderr (a terminal) instead of printing each progress change as a line. */
  statusLine?: boolean;
}

export const stdio: Output = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  statusLine: process.stderr.isTTY === true,
};

// ---- formatting ----------------------------------------------------------------------------------

const TIME_KEYS = new Set(['queuedAt', 'startedAt', 'finishedAt', 'nextDue', 'connectedAt', 'lastSeen', 'goneAt', 'updatedAt']);

/** JSON for scripts: timestamps become ISO 8601 strings, runs get a one-word `status`. */
export function toJson(value: unknown): string {
  // The value is rewritten first and then stringified without a replacer: V8's JSON.stringify has a
  // fast path only without one, and a replacer called for every key of a 100,000-job info was most
  // of `info --json`'s own time.
  return JSON.stringify(forJson(value), null, 2);
}

function forJson(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(forJson);
  let object = value as Record<string, unknown>;
  // A progress report's `at` is a time; a console line's `at` is milliseconds since the run started.
  if ('percent' in object && typeof object.at === 'number') object = { ...object, at: new Date(object.at).toISOString() };
  if ('uuid' in object && 'state' in object && 'outcome' in object && !('status' in object)) {
    object = { ...object, status: runStatus(object as unknown as RunSummary) };
  }
  const out: Record<string, unknown> = {};
  for (const key in object) {
    const v = object[key];
    out[key] = TIME_KEYS.has(key) && typeof v === 'number' ? new Date(v).toISOString() : forJson(v);
  }
  return out;
}

export { runStatus };

export function formatTime(ms: number | null): string {
  if (ms === null) return '-';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
}

export function formatElapsed(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = (rows[0] as string[]).map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd()).join('\n') + '\n';
}

function describeSource(source: JobSource | JobSourceSummary): string {
  if (source.kind === 'script') return 'script';
  const vars = Object.entries(source.vars).map(([key, value]) => `${key}=${value}`).join(' ');
  return `template ${source.template}${vars ? ` ${vars}` : ''}`;
}

function runOutcome(run: RunSummary): string {
  if (run.state === 'queued') return 'queued';
  if (run.state === 'running') return 'running';
  return describeOutcome(run.outcome);
}

function runDuration(run: RunSummary): string {
  if (run.startedAt === null) return '-';
  return formatElapsed((run.finishedAt ?? Date.now()) - run.startedAt);
}

/** How consoles mark a line's stream: `|` stdout, `!` stderr, `#` a note from builder itself. */
export function streamMarker(stream: ConsoleChunk['stream']): string {
  return stream === 'out' ? '|' : stream === 'err' ? '!' : '#';
}

/**
 * Console lines as observe and show print them: seconds since start, a stream marker, the text.
 * The lines of a chunk share their prefix: it is made once and put before each line in one go.
 */
export function formatConsoleChunk(chunk: ConsoleChunk): string {
  return prefixLines(chunk.text, `${(chunk.at / 1000).toFixed(3).padStart(9)} ${streamMarker(chunk.stream)} `);
}

// ---- commands --------------------------------------------------------------------------------------

export interface ScheduleArgs {
  name: string;
  platform: string;
  source: JobSource;
  period: Period;
  replace: boolean;
  timeoutSeconds: number | null;
  keepRuns: number | null;
  requires?: string[];
  env?: Record<string, string>;
  secretEnv?: Record<string, string>;
  notify?: string[];
}

/** schedule / schedule-template: prints the queued run's UUID on stdout, what happened on stderr. */
export async function schedule(client: Client, args: ScheduleArgs, io: Output): Promise<number> {
  const reply = await client.call({ type: 'schedule', ...args }, 'queued');
  io.err(`${reply.message}\n`);
  if (reply.uuid !== null) io.out(`${reply.uuid}\n`);
  return EXIT.ok;
}

export async function execute(client: Client, name: string, io: Output): Promise<number> {
  const reply = await client.call({ type: 'execute', name }, 'queued');
  io.err(`${reply.message}\n`);
  if (reply.uuid !== null) io.out(`${reply.uuid}\n`);
  return EXIT.ok;
}

/** Commands whose answer is one sentence: unschedule, reschedule, drop/undrop, cancel. */
export async function simple(client: Client, request: Parameters<Client['call']>[0], io: Output): Promise<number> {
  const reply = await client.call(request, 'ok');
  io.out(`${reply.message}\n`);
  return EXIT.ok;
}

export async function info(client: Client, json: boolean, io: Output): Promise<number> {
  const { info: data } = await client.call({ type: 'info' }, 'info-result');
  io.out(json ? `${toJson(data)}\n` : formatInfo(data));
  return EXIT.ok;
}

export function formatInfo(data: Info): string {
  let text = `jobs (${data.jobs.length}):\n`;
  const jobRows = [['  NAME', 'PLATFORM', 'REQUIRES', 'SCHEDULE', 'NEXT DUE', 'SOURCE']];
  for (const job of data.jobs) {
    jobRows.push([`  ${job.name}`, job.platform, job.requires?.join(',') || '-', describePeriod(job.period), formatTime(job.nextDue), describeSource(job.source)]);
  }
  text += data.jobs.length > 0 ? table(jobRows) : '  none\n';
  const platforms = Object.keys(data.queues).sort();
  text += `queues (${platforms.reduce((n, p) => n + (data.queues[p]?.length ?? 0), 0)} runs waiting):\n`;
  if (platforms.length === 0) text += '  all empty\n';
  for (const platform of platforms) {
    text += `  ${platform}:\n`;
    text += table((data.queues[platform] ?? []).map((entry, i) => [`    ${i + 1}.`, entry.job, entry.uuid, `queued ${formatTime(entry.queuedAt)}`,
      entry.blocked === null || entry.blocked === undefined ? '' : `blocked: ${entry.blocked}`]));
  }
  text += `running (${data.running.length}):\n`;
  text += data.running.length > 0
    ? table(data.running.map((run) => [`  ${run.job}`, run.uuid, run.platform, `on ${run.worker ?? '-'}`, `for ${runDuration(run)}`,
      run.progress === null || run.progress === undefined ? '' : `[${formatProgress(run.progress)}]`]))
    : '  none\n';
  text += `dropped platforms: ${data.dropped.length > 0 ? data.dropped.join(', ') : 'none'}\n`;
  text += `workers connected: ${data.workers}\n`;
  return text;
}

export async function results(client: Client, name: string, limit: number, json: boolean, io: Output): Promise<number> {
  const { runs } = await client.call({ type: 'results', name, limit }, 'results-result');
  if (json) io.out(`${toJson(runs)}\n`);
  else if (runs.length === 0) io.out(`${name} has no runs\n`);
  else {
    io.out(table([['UUID', 'STATUS', 'QUEUED', 'STARTED', 'DURATION', 'PLATFORM', 'WORKER', 'OUTCOME'],
      ...runs.map((run) => [run.uuid, runStatus(run), formatTime(run.queuedAt), formatTime(run.startedAt), runDuration(run),
        run.platform, run.worker ?? '-', runOutcome(run)])]));
  }
  return EXIT.ok;
}

export async function workers(client: Client, json: boolean, io: Output): Promise<number> {
  const { workers: list } = await client.call({ type: 'workers' }, 'workers-result');
  if (json) io.out(`${toJson(list)}\n`);
  else io.out(formatWorkers(list));
  return EXIT.ok;
}

export function formatWorkers(list: WorkerInfo[], now = Date.now()): string {
  if (list.length === 0) return 'no workers connected, and none gone recently\n';
  const ago = (ms: number): string => `${formatElapsed(Math.max(0, now - ms))} ago`;
  return table([['WORKER', 'STATUS', 'PLATFORM', 'LABELS', 'HOST', 'ADDRESS', 'LAST SEEN', 'RUN'],
    ...list.map((w) => [w.id, w.status ?? 'active', w.platform, w.labels.join(',') || '-', w.hostname, w.address, ago(w.lastSeen),
      w.status === 'gone' ? `gone ${ago(w.goneAt ?? now)}: ${w.reason ?? ''}`
        : w.run === null ? 'idle' : `${w.run}${w.progress === null || w.progress === undefined ? '' : ` [${formatProgress(w.progress)}]`}`])]);
}

/** `40% compiling`, or the message alone when the job gave no percent. */
export function formatProgress(progress: Progress): string {
  const percent = progress.percent === null ? '' : `${Math.floor(progress.percent)}%`;
  return [percent, progress.message].filter((part) => part !== '').join(' ');
}

export interface ShowArgs {
  uuid: string;
  script: boolean;
  console: boolean;
  json: boolean;
}

export async function show(client: Client, args: ShowArgs, io: Output): Promise<number> {
  const { run } = await client.call({ type: 'show', uuid: args.uuid }, 'show-result');
  if (args.json && !args.script && !args.console) {
    io.out(`${toJson(run)}\n`);
    return EXIT.ok;
  }
  if (!args.script && !args.console) io.out(formatRun(run));
  if (args.script) {
    if (run.script === null) throw new ClientError(`run ${run.uuid} has no script yet: it is rendered when the run is dispatched`, EXIT.server);
    io.out(run.script.endsWith('\n') || run.script === '' ? run.script : `${run.script}\n`);
  }
  if (args.console) {
    // A run that has not ended is followed to its end, as observe does.
    const id = client.send({ type: 'observe', uuid: args.uuid });
    for (;;) {
      const message = await client.receive(id);
      if (message.type === 'console') io.out(message.chunks.map(formatConsoleChunk).join(''));
      if (message.type === 'run-end') break;
    }
  }
  return EXIT.ok;
}

function formatRun(run: RunDetail): string {
  const rows = [
    ['run', run.uuid], ['job', run.job], ['platform', run.platform], ['status', runStatus(run)],
    ['outcome', runOutcome(run)], ['worker', run.worker ?? '-'], ['queued', formatTime(run.queuedAt)],
    ['started', formatTime(run.startedAt)], ['finished', formatTime(run.finishedAt)], ['duration', runDuration(run)],
    ['source', run.source === null ? '-' : describeSource(run.source)], ['console', `${run.consoleLines} lines`],
    ['progress', run.progress === null || run.progress === undefined ? '-' : formatProgress(run.progress)],
  ];
  // The environment it was given: secrets by name only, their values are never sent to clients.
  for (const [key, value] of Object.entries(run.env ?? {})) rows.push(['env', `${key}=${value}`]);
  for (const key of run.secretKeys ?? []) rows.push(['env', `${key}=*** (secret)`]);
  rows.push(['artifacts', String(run.artifacts.length)]);
  let text = table(rows.map(([key, value]) => [`${key}:`, value ?? '']));
  for (const artifact of run.artifacts) text += `  ${artifact.sha256}  ${String(artifact.size).padStart(10)}  ${artifact.path}\n`;
  for (const d of run.deliveries ?? []) {
    text += `notify: ${d.event} → ${d.url}: ${d.state}${d.attempts === 1 ? '' : ` after ${d.attempts} attempts`}`
      + `${d.lastError === null || d.state === 'delivered' ? '' : ` (last error: ${d.lastError})`}\n`;
  }
  return text;
}

export interface ObserveArgs {
  uuid?: string;
  job?: string | null;
  platform?: string | null;
  raw: boolean;
}

/**
 * observe / observe-latest: replays the console, follows it live, then prints the outcome.
 * Exit 0 if the run succeeded, 3 if it failed in any way.
 */
export async function observe(client: Client, args: ObserveArgs, io: Output): Promise<number> {
  const id = args.uuid !== undefined
    ? client.send({ type: 'observe', uuid: args.uuid })
    : client.send({ type: 'observe-latest', job: args.job ?? null, platform: args.platform ?? null });
  if (args.uuid === undefined) io.err(`waiting for the newest run${args.job ? ` of ${args.job}` : ''}${args.platform ? ` on ${args.platform}` : ''}\n`);
  // Progress: on a terminal, one status line under the console, redrawn; otherwise a line per change.
  let status = '';
  let shownProgress: Progress | null = null;
  let started = false;
  const clearStatus = (): void => {
    if (status !== '') io.err('\r\x1b[K');
  };
  const showProgress = (run: RunSummary): void => {
    const progress = run.progress ?? null;
    if (progress === null || (shownProgress !== null && progress.at === shownProgress.at)) return;
    shownProgress = progress;
    if (io.statusLine === true) {
      clearStatus();
      status = `[${formatProgress(progress)}]`.slice(0, Math.max(20, (process.stderr.columns ?? 80) - 1));
      io.err(status);
    } else {
      io.err(`progress: ${formatProgress(progress)}\n`);
    }
  };
  for (;;) {
    const message = await client.receive(id);
    switch (message.type) {
      case 'observing':
        io.err(`observing run ${message.run.uuid} of ${message.run.job} (${runOutcome(message.run)})\n`);
        if (message.run.state === 'queued') io.err('the run is queued, waiting for a worker\n');
        started = message.run.state !== 'queued';
        if (message.run.state === 'running') showProgress(message.run);
        break;
      case 'run-update':
        if (message.run.state === 'running' && !started) {
          started = true;
          clearStatus();
          io.err(`started on ${message.run.worker ?? 'a worker'}\n`);
          if (status !== '') io.err(status);
        }
        showProgress(message.run);
        break;
      case 'console': {
        // One write per batch, not per line: a fast job prints hundreds of thousands of lines.
        let out = '';
        let err = '';
        for (const chunk of message.chunks) {
          if (!args.raw) out += formatConsoleChunk(chunk);
          else if (chunk.stream === 'out') out += `${chunk.text}\n`;
          else err += `${chunk.text}\n`;
        }
        clearStatus();
        if (out.length > 0) io.out(out);
        if (err.length > 0) io.err(err);
        if (status !== '') io.err(status);
        break;
      }
      case 'run-end': {
        clearStatus();
        const run = message.run;
        const took = run.startedAt !== null && run.finishedAt !== null ? `, took ${formatElapsed(run.finishedAt - run.startedAt)}` : '';
        const text = `run ${run.uuid} of ${run.job}: ${describeOutcome(run.outcome)}${took}\n`;
        if (args.raw) io.err(text);
        else io.out(text);
        return isSuccess(run.outcome) ? EXIT.ok : EXIT.runFailed;
      }
      default:
        break;
    }
  }
}

export interface FetchArgs {
  uuid: string;
  dir: string;
  /** Show a progress bar (on stderr) when the artifacts are large. */
  progress: boolean;
}

const PROGRESS_THRESHOLD = 8 * 1024 * 1024;

/**
 * fetch: downloads a run's artifacts into DIR, each file written under a temporary name, checked
 * against its SHA-256 and only then renamed into place. Any mismatch is an error.
 */
export async function fetchArtifacts(client: Client, args: FetchArgs, io: Output): Promise<number> {
  // Only fetch needs these two (tar and the progress bar): loaded here, they cost no other command.
  const [{ SingleBar }, { artifactParser }] = await Promise.all([import('cli-progress'), import('../protocol/artifacts.js')]);
  const id = client.send({ type: 'fetch', uuid: args.uuid });
  const first = await client.receive(id);
  if (first.type !== 'artifacts') throw new ClientError(`unexpected reply '${first.type}' to fetch`, EXIT.server);
  const expected = new Map<string, Artifact>(first.artifacts.map((a) => [a.path, a]));
  const total = first.artifacts.reduce((sum, a) => sum + a.size, 0);
  fs.mkdirSync(args.dir, { recursive: true });
  const bar = args.progress && total >= PROGRESS_THRESHOLD
    ? new SingleBar({ format: 'fetching [{bar}] {percentage}% | {value}/{total} MiB', stream: process.stderr, hideCursor: true }) : null;
  bar?.start(Math.ceil(total / 1048576), 0);
  let received = 0;
  let problem: string | null = null;
  const writes: Promise<void>[] = [];
  const done = new Set<string>();
  const target = new TargetDir(args.dir);
  const parser = artifactParser({
    file: (relative, size, entry) => {
      const artifact = expected.get(relative);
      if (artifact === undefined || artifact.size !== size || done.has(relative)) {
        problem ??= `the server sent ${relative}, which is not in the run's artifact list`;
        entry.resume();
        return;
      }
      done.add(relative);
      writes.push(target.write(artifact, entry, (n) => {
        received += n;
        bar?.update(Math.floor(received / 1048576));
      }).catch((error: Error) => { problem ??= error.message; }));
    },
    refuse: (reason) => { problem ??= reason; },
  });
  const parsed = new Promise<void>((resolve) => {
    parser.on('end', resolve);
    parser.on('close', resolve);
    parser.on('error', () => resolve());
  });
  for (;;) {
    const message = await client.receive(id);
    if (message.type === 'data-end') break;
    if (message.type !== 'data') continue;
    if (!parser.write(Buffer.from(message.chunk.buffer, message.chunk.byteOffset, message.chunk.byteLength))) {
      client.conn.pause();
      await new Promise((resolve) => parser.once('drain', resolve));
      client.conn.resume();
    }
  }
  parser.end();
  await parsed;
  await Promise.all(writes);
  bar?.stop();
  for (const artifact of first.artifacts) if (!done.has(artifact.path)) problem ??= `${artifact.path} was in the list but not in the stream`;
  if (problem !== null) throw new ClientError(`fetch failed: ${problem}`, EXIT.server);
  for (const artifact of first.artifacts) io.out(`${artifact.sha256}  ${artifact.path}\n`);
  io.err(`fetched ${first.artifacts.length} artifact(s), ${total} bytes, into ${args.dir}; every SHA-256 matches\n`);
  return EXIT.ok;
}

/**
 * Where fetch writes: each file under a temporary name, checked against its SHA-256 and only then
 * renamed into place. A small file is taken in whole and checked before anything is written, and
 * several are written at once (see SmallFileSlots); a big one is hashed as it is written.
 */
class TargetDir {
  private readonly resolved: string;
  private readonly dirs = new KnownDirs();
  /**
   * Few at once: fetched files share directories, and threads creating and renaming entries in one
   * directory mostly wait for (and spin on) its lock in the kernel.
   */
  private readonly slots = new SmallFileSlots(4);

  constructor(private readonly dir: string) {
    this.resolved = path.resolve(dir);
  }

  write(artifact: Artifact, entry: ReadEntry, progress: (bytes: number) => void): Promise<void> {
    const target = path.join(this.dir, artifact.path);
    if (!path.resolve(target).startsWith(this.resolved + path.sep)) {
      entry.resume();
      return Promise.reject(new Error(`${artifact.path} would be written outside ${this.dir}`));
    }
    if (artifact.size <= SMALL_FILE_BYTES) {
      return this.slots.run(async () => {
        const data = await readWhole(entry, artifact.size);
        progress(data.length);
        this.check(artifact, crypto.createHash('sha256').update(data).digest('hex'));
        await this.dirs.make(path.dirname(target));
        const tmp = `${target}.builder-partial`;
        await fs.promises.writeFile(tmp, data);
        await fs.promises.rename(tmp, target);
      });
    }
    return this.writeLarge(artifact, target, entry, progress);
  }

  private async writeLarge(artifact: Artifact, target: string, entry: ReadEntry, progress: (bytes: number) => void): Promise<void> {
    let handle: fs.promises.FileHandle;
    const tmp = `${target}.builder-partial`;
    try {
      await this.dirs.make(path.dirname(target));
      handle = await fs.promises.open(tmp, 'w');
    } catch (error) {
      entry.resume();
      throw error;
    }
    let sha256: string;
    let counted = 0;
    try {
      // Hashed as it arrives, several chunks written at once (see writeHashed).
      ({ sha256 } = await writeHashed(handle, entry, (size) => {
        progress(size - counted);
        counted = size;
      }));
    } finally {
      await handle.close();
    }
    try {
      this.check(artifact, sha256);
    } catch (error) {
      await fs.promises.rm(tmp, { force: true });
      throw error;
    }
    await fs.promises.rename(tmp, target);
  }

  private check(artifact: Artifact, sha256: string): void {
    if (sha256 !== artifact.sha256) throw new Error(`${artifact.path}: SHA-256 mismatch (expected ${artifact.sha256}, received ${sha256})`);
  }
}
