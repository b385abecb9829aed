/**
 * The core types of builder, shared by server, worker and client.
 *
 * Terminology — use these words the same way in code, CLI, protocol and web view:
 *
 *   job       a named piece of work: a platform plus a script (or a template and its variables).
 *             Job names are unique.
 *   schedule  when a job is queued: every N seconds, a cron expression, or never (only by hand).
 *   platform  the kind of machine a job needs, e.g. "debian-12" or "freebsd-14". One queue each.
 *   worker    a process that runs one job at a time for one platform, and uploads what it built.
 *   run       one execution of a job, identified by a UUID from the moment it is queued.
 *   artifact  a file a run left in its working directory, stored by SHA-256.
 *   template  a Handlebars script per platform, rendered with the job's variables at dispatch.
 *
 * Each type is a zod schema, and the TypeScript type is inferred from it: the schema is the single
 * source for both the static type and the validation of what arrives on the wire.
 */
import { z } from 'zod';

/** Names of jobs, platforms and templates: no spaces, no slashes, nothing that needs quoting. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;
export const Name = z.string().regex(NAME_PATTERN, 'must be 1-128 characters of A-Z a-z 0-9 . _ + - and start with a letter or digit');

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const Uuid = z.string().regex(UUID_PATTERN, 'must be a lowercase UUID');

/** The longest message an outcome carries (error texts, reasons). */
export const MAX_MESSAGE_CHARS = 4096;

/** The longest job timeout: timers cannot wait longer than 2^31-1 ms (about 24.8 days). */
export const MAX_TIMEOUT_SECONDS = 24 * 86400;

/** Milliseconds since the Unix epoch. */
export const Timestamp = z.number().int().nonnegative();

/** When a job is queued. `every` counts seconds; `cron` is a 5- or 6-field cron expression. */
export const Period = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('every'), seconds: z.number().int().min(1).max(10 * 365 * 86400) }),
  z.object({ kind: z.literal('cron'), expression: z.string().min(1).max(256) }),
  z.object({ kind: z.literal('never') }),
]);
export type Period = z.infer<typeof Period>;

/** Worker labels, and the labels a job requires of its worker. */
export const LABEL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$/;
export const LABEL_RULE = 'labels are 1-64 characters of A-Z a-z 0-9 . _ : = -';
export const Label = z.string().regex(LABEL_PATTERN, LABEL_RULE);

/**
 * A job's environment: names are shell identifiers; BUILDER_* is builder's own (BUILDER_UUID,
 * BUILDER_PROGRESS, ...) and cannot be set by a job.
 */
export const ENV_KEY_PATTERN = /^(?!BUILDER_)[A-Za-z_][A-Za-z0-9_]*$/;
export const Env = z.record(
  z.string().max(256).regex(ENV_KEY_PATTERN, 'environment variable names are identifiers (A-Z a-z 0-9 _, not starting with a digit), and BUILDER_* is reserved'),
  z.string().max(65536),
).refine((env) => Object.keys(env).length <= 256, 'at most 256 environment variables');
export type Env = z.infer<typeof Env>;

/** What a job last said about its progress (BUILDER_PROGRESS / builder-progress). */
export const Progress = z.object({
  /** 0-100, or null when the job gave only a message. */
  percent: z.number().min(0).max(100).nullable(),
  message: z.string().max(200),
  /** When the server received it. */
  at: Timestamp,
});
export type Progress = z.infer<typeof Progress>;

/**
 * What is wrong with a webhook URL, if anything: it is not http(s), or it holds a user name or
 * password (which would show in logs and in `show`). Shared by the protocol and the command lines.
 */
export function webhookUrlProblem(text: string): 'not-http' | 'credentials' | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not-http';
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') return 'not-http';
  return url.username === '' && url.password === '' ? null : 'credentials';
}

/** A webhook URL: http or https, without a user name or password. */
export const NotifyUrl = z.string().max(2048)
  .refine((text) => webhookUrlProblem(text) !== 'not-http', 'must be an http:// or https:// URL')
  .refine((text) => webhookUrlProblem(text) !== 'credentials',
    'must not hold a user name or password (they would show in logs and in show): sign deliveries with --notify-secret-file instead');

/** One webhook delivery of a run event, as `show` lists it. */
export const Delivery = z.object({
  url: z.string(),
  event: z.enum(['queued', 'started', 'finished']),
  state: z.enum(['pending', 'delivered', 'failed']),
  attempts: z.number().int().nonnegative(),
  lastError: z.string().nullable(),
  updatedAt: Timestamp,
});
export type Delivery = z.infer<typeof Delivery>;

/** Template variables: string to string. */
export const Vars = z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'variable names are identifiers'), z.string().max(65536));
export type Vars = z.infer<typeof Vars>;

/** What a job runs: a plain script, or a template and its variables. */
export const JobSource = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('script'), script: z.string().max(1024 * 1024) }),
  z.object({ kind: z.literal('template'), template: Name, vars: Vars }),
]);
export type JobSource = z.infer<typeof JobSource>;

/**
 * How a run ended. The worker reports exited/signalled/stopped/error/timeout/cancelled;
 * only the server records `worker-lost` (the worker disconnected or went silent mid-run).
 */
export const Outcome = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('exited'), code: z.number().int().min(0).max(255) }),
  // `message` says why when the sandbox knows it (a container killed for exceeding its memory limit).
  z.object({ kind: z.literal('signalled'), signal: z.number().int().min(1).max(128), message: z.string().max(MAX_MESSAGE_CHARS).optional() }),
  z.object({ kind: z.literal('stopped'), signal: z.number().int().min(1).max(128) }),
  z.object({ kind: z.literal('error'), message: z.string().max(MAX_MESSAGE_CHARS) }),
  z.object({ kind: z.literal('timeout'), seconds: z.number().int().nonnegative() }),
  z.object({ kind: z.literal('cancelled'), message: z.string().max(MAX_MESSAGE_CHARS) }),
  z.object({ kind: z.literal('worker-lost'), message: z.string().max(MAX_MESSAGE_CHARS) }),
]);
export type Outcome = z.infer<typeof Outcome>;

export const RunState = z.enum(['queued', 'running', 'finished']);
export type RunState = z.infer<typeof RunState>;

/** One line of a run's console: milliseconds since the run started, which stream, the text. */
export const ConsoleLine = z.object({
  at: z.number().int().nonnegative(),
  stream: z.enum(['out', 'err', 'builder']),
  text: z.string(),
});
export type ConsoleLine = z.infer<typeof ConsoleLine>;

/**
 * Console lines on the wire: consecutive lines that share their time and stream travel as one
 * string, joined by `\n` (so `text` holds one line more than it has newlines; '' is one empty
 * line). A fast job prints a pipe's worth of lines per read, all with the same time and stream:
 * one string for them costs one msgpack string, one validation and one string operation wherever
 * they go, where an object per line cost all of that per line.
 */
export const ConsoleChunk = z.object({
  at: z.number().int().nonnegative(),
  stream: z.enum(['out', 'err', 'builder']),
  text: z.string(),
});
export type ConsoleChunk = z.infer<typeof ConsoleChunk>;

export const Artifact = z.object({
  path: z.string().min(1).max(4096),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type Artifact = z.infer<typeof Artifact>;

/** A run as listed by `results`, `info` and `observe`. */
export const RunSummary = z.object({
  uuid: Uuid,
  job: Name,
  platform: Name,
  state: RunState,
  worker: z.string().nullable(),
  queuedAt: Timestamp,
  startedAt: Timestamp.nullable(),
  finishedAt: Timestamp.nullable(),
  outcome: Outcome.nullable(),
  /** The latest progress the job reported, kept with the run. */
  progress: Progress.nullable().optional(),
});
export type RunSummary = z.infer<typeof RunSummary>;

/** Everything known about one run (`show`). */
export const RunDetail = RunSummary.extend({
  script: z.string().nullable(),
  source: JobSource.nullable(),
  consoleLines: z.number().int().nonnegative(),
  artifacts: z.array(Artifact),
  /** The environment the run was given (set at dispatch); secrets are listed by name only. */
  env: Env.optional(),
  secretKeys: z.array(z.string()).optional(),
  /** Webhook deliveries of this run's events. */
  deliveries: z.array(Delivery).optional(),
});
export type RunDetail = z.infer<typeof RunDetail>;

/**
 * What a job runs, as listed by `info`: a script is summarised by its size and hash (scripts can be
 * large, and info lists every job); `show` gives the exact script of a run.
 */
export const JobSourceSummary = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('script'), bytes: z.number().int().nonnegative(), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
  z.object({ kind: z.literal('template'), template: Name, vars: Vars }),
]);
export type JobSourceSummary = z.infer<typeof JobSourceSummary>;

export const JobInfo = z.object({
  name: Name,
  platform: Name,
  source: JobSourceSummary,
  period: Period,
  nextDue: Timestamp.nullable(),
  timeoutSeconds: z.number().int().positive().nullable(),
  /** Finished runs kept (older ones removed); null: the server's --keep-runs. */
  keepRuns: z.number().int().positive().nullable().optional(),
  /** Labels a worker must have to run this job. */
  requires: z.array(Label).optional(),
  env: Env.optional(),
  /** Names of the job's secret variables; their values are never sent to clients. */
  secretKeys: z.array(z.string()).optional(),
  notify: z.array(z.string()).optional(),
});
export type JobInfo = z.infer<typeof JobInfo>;

export const WorkerInfo = z.object({
  id: z.string(),
  platform: Name,
  labels: z.array(z.string()),
  hostname: z.string(),
  version: z.string(),
  address: z.string(),
  connectedAt: Timestamp,
  lastSeen: Timestamp,
  run: Uuid.nullable(),
  /** active: heard from within 1.5 heartbeats; late: not; gone: disconnected or silent too long. */
  status: z.enum(['active', 'late', 'gone']).optional(),
  /** The progress of the run it is running. */
  progress: Progress.nullable().optional(),
  /** For a gone worker: when and why it left. */
  goneAt: Timestamp.nullable().optional(),
  reason: z.string().nullable().optional(),
});
export type WorkerInfo = z.infer<typeof WorkerInfo>;

export const QueueEntry = z.object({
  uuid: Uuid, job: Name, queuedAt: Timestamp,
  /** Why no connected worker can take it (platform or labels), or null/absent when one could. */
  blocked: z.string().nullable().optional(),
});
export type QueueEntry = z.infer<typeof QueueEntry>;

export const Info = z.object({
  jobs: z.array(JobInfo),
  queues: z.record(z.string(), z.array(QueueEntry)),
  running: z.array(RunSummary),
  dropped: z.array(Name),
  workers: z.number().int().nonnegative(),
});
export type Info = z.infer<typeof Info>;

/** Cuts a message to what an outcome may hold, saying that it was cut. */
export function limitMessage(message: string): string {
  return message.length <= MAX_MESSAGE_CHARS ? message : `${message.slice(0, MAX_MESSAGE_CHARS - 20)}… (message cut)`;
}

/** Outcomes that count as success: only a clean exit 0. */
export function isSuccess(outcome: Outcome | null): boolean {
  return outcome !== null && outcome.kind === 'exited' && outcome.code === 0;
}

/** One word for where a run is: queued | running | success | failed. */
export function runStatus(run: { state: RunState; outcome: Outcome | null }): 'queued' | 'running' | 'success' | 'failed' {
  if (run.state !== 'finished') return run.state;
  return isSuccess(run.outcome) ? 'success' : 'failed';
}

/** One short phrase for an outcome, as printed by the CLI and written to logs. */
export function describeOutcome(outcome: Outcome | null): string {
  if (outcome === null) return 'not finished';
  switch (outcome.kind) {
    case 'exited': return `exited ${outcome.code}`;
    case 'signalled': return outcome.message === undefined ? `signalled ${outcome.signal}` : `signalled ${outcome.signal}: ${outcome.message}`;
    case 'stopped': return `stopped ${outcome.signal}`;
    case 'error': return `error: ${outcome.message}`;
    case 'timeout': return `timeout after ${outcome.seconds}s`;
    case 'cancelled': return `cancelled: ${outcome.message}`;
    case 'worker-lost': return `worker lost: ${outcome.message}`;
  }
}
