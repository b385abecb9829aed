/**
 * Every message builder speaks, as zod schemas. The TypeScript types are inferred from the schemas,
 * so the encoder (TypeScript) and the validator (zod) cannot drift apart. protocol/README.md documents
 * each message: who sends it, its fields, and the answer.
 */
import { z } from 'zod';
import {
  Artifact, ConsoleChunk, Env, Info, JobSource, Label, MAX_TIMEOUT_SECONDS, Name, NotifyUrl, Outcome, Period, RunDetail, RunSummary,
  Timestamp, Uuid, WorkerInfo,
} from './types.js';

/**
 * Bumped on every incompatible change to a message. Both sides must speak the same version.
 * 2: console lines travel as chunks (`output.chunks`, `console.chunks`) instead of one map per line.
 */
export const PROTOCOL_VERSION = 2;

/** Artifact and fetch streams travel in chunks of at most this many bytes, far below any frame limit. */
export const CHUNK_BYTES = 256 * 1024;

const RequestId = z.number().int().nonnegative();
const Bytes = z.custom<Uint8Array>((value) => value instanceof Uint8Array, 'must be binary data');

// ---- handshake --------------------------------------------------------------------------------

export const Hello = z.object({
  type: z.literal('hello'),
  version: z.number().int(),
  role: z.enum(['client', 'worker']),
  software: z.string().max(256),
  /** Worker only: the platform it runs jobs for, its labels, and the host it runs on. */
  platform: Name.optional(),
  labels: z.array(Label).max(64).optional(),
  hostname: z.string().min(1).max(256).optional(),
  /** The bearer token, when the server has tokens (builder-server token add). */
  token: z.string().min(1).max(256).optional(),
}).superRefine((hello, ctx) => {
  if (hello.role === 'worker' && (hello.platform === undefined || hello.hostname === undefined)) {
    ctx.addIssue({ code: 'custom', message: 'a worker hello must name its platform and hostname' });
  }
});
export type Hello = z.infer<typeof Hello>;

export const Welcome = z.object({
  type: z.literal('welcome'),
  version: z.number().int(),
  software: z.string(),
  /** Workers send a heartbeat this often (idle or running); the server answers each one. */
  heartbeatSeconds: z.number().positive(),
  maxFrameBytes: z.number().int().positive(),
  /** What this server understands beyond its protocol version's messages: 'progress', 'request-after-finished'. */
  features: z.array(z.string()).optional(),
});
export type Welcome = z.infer<typeof Welcome>;

/** A fatal error: the sender closes the connection after it. */
export const Fatal = z.object({ type: z.literal('error'), message: z.string() });
export type Fatal = z.infer<typeof Fatal>;

// ---- client → server requests -------------------------------------------------------------------

export const ScheduleRequest = z.object({
  type: z.literal('schedule'), id: RequestId,
  name: Name, platform: Name, source: JobSource, period: Period,
  replace: z.boolean(),
  timeoutSeconds: z.number().int().positive().max(MAX_TIMEOUT_SECONDS).nullable(),
  /** Finished runs to keep; older ones are removed. Absent or null: the server's --keep-runs. */
  keepRuns: z.number().int().positive().max(1_000_000).nullable().optional(),
  /** Labels a worker must have (all of them) to be given this job. */
  requires: z.array(Label).max(32).optional(),
  /** Variables set for the job, shown in show and the web view. */
  env: Env.optional(),
  /** Variables set for the job whose values are never shown, and masked as *** in its console. */
  secretEnv: Env.optional(),
  /** URLs that receive a POST when a run of this job is queued, starts and finishes. */
  notify: z.array(NotifyUrl).max(16).optional(),
}).superRefine((request, ctx) => {
  for (const key of Object.keys(request.secretEnv ?? {})) {
    if (request.env !== undefined && key in request.env) ctx.addIssue({ code: 'custom', path: ['secretEnv', key], message: `${key} is given both as a variable and as a secret` });
  }
});
export const UnscheduleRequest = z.object({ type: z.literal('unschedule'), id: RequestId, name: Name });
export const ExecuteRequest = z.object({ type: z.literal('execute'), id: RequestId, name: Name });
export const RescheduleRequest = z.object({
  type: z.literal('reschedule'), id: RequestId, name: Name, nextDue: Timestamp, period: Period.nullable(),
});
export const DropPlatformRequest = z.object({ type: z.literal('drop-platform'), id: RequestId, platform: Name });
export const UndropPlatformRequest = z.object({ type: z.literal('undrop-platform'), id: RequestId, platform: Name });
export const CancelRequest = z.object({ type: z.literal('cancel'), id: RequestId, uuid: Uuid });
export const InfoRequest = z.object({ type: z.literal('info'), id: RequestId });
export const ResultsRequest = z.object({
  type: z.literal('results'), id: RequestId, name: Name, limit: z.number().int().min(1).max(10000),
});
export const WorkersRequest = z.object({ type: z.literal('workers'), id: RequestId });
export const ShowRequest = z.object({ type: z.literal('show'), id: RequestId, uuid: Uuid });
export const ObserveRequest = z.object({ type: z.literal('observe'), id: RequestId, uuid: Uuid });
export const ObserveLatestRequest = z.object({
  type: z.literal('observe-latest'), id: RequestId, job: Name.nullable(), platform: Name.nullable(),
});
export const FetchRequest = z.object({ type: z.literal('fetch'), id: RequestId, uuid: Uuid });

export const ClientMessage = z.discriminatedUnion('type', [
  ScheduleRequest, UnscheduleRequest, ExecuteRequest, RescheduleRequest, DropPlatformRequest,
  UndropPlatformRequest, CancelRequest, InfoRequest, ResultsRequest, WorkersRequest, ShowRequest,
  ObserveRequest, ObserveLatestRequest, FetchRequest,
]);
export type ClientMessage = z.infer<typeof ClientMessage>;

// ---- server → client replies --------------------------------------------------------------------

/** schedule/execute: the run that was queued (null when the platform is dropped). */
export const QueuedReply = z.object({
  type: z.literal('queued'), id: RequestId, job: Name, uuid: Uuid.nullable(), message: z.string(),
});
/** unschedule, reschedule, drop/undrop-platform, cancel: done, with a sentence saying what happened. */
export const OkReply = z.object({ type: z.literal('ok'), id: RequestId, message: z.string() });
export const FailureReply = z.object({ type: z.literal('failure'), id: RequestId, message: z.string() });
export const InfoReply = z.object({ type: z.literal('info-result'), id: RequestId, info: Info });
export const ResultsReply = z.object({ type: z.literal('results-result'), id: RequestId, runs: z.array(RunSummary) });
export const WorkersReply = z.object({ type: z.literal('workers-result'), id: RequestId, workers: z.array(WorkerInfo) });
export const ShowReply = z.object({ type: z.literal('show-result'), id: RequestId, run: RunDetail });
/** observe: first the run as it is now, then console batches and updates, last `run-end`. */
export const ObservingReply = z.object({ type: z.literal('observing'), id: RequestId, run: RunSummary });
export const ConsoleBatch = z.object({ type: z.literal('console'), id: RequestId, chunks: z.array(ConsoleChunk) });
export const RunUpdate = z.object({ type: z.literal('run-update'), id: RequestId, run: RunSummary });
export const RunEnd = z.object({ type: z.literal('run-end'), id: RequestId, run: RunSummary });
/** fetch: the artifact list, then the tar stream in chunks, then `data-end`. */
export const ArtifactList = z.object({
  type: z.literal('artifacts'), id: RequestId, uuid: Uuid, artifacts: z.array(Artifact),
});
export const DataChunk = z.object({ type: z.literal('data'), id: RequestId, chunk: Bytes });
export const DataEnd = z.object({ type: z.literal('data-end'), id: RequestId });

export const ServerToClient = z.discriminatedUnion('type', [
  QueuedReply, OkReply, FailureReply, InfoReply, ResultsReply, WorkersReply, ShowReply,
  ObservingReply, ConsoleBatch, RunUpdate, RunEnd, ArtifactList, DataChunk, DataEnd, Welcome, Fatal,
]);
export type ServerToClient = z.infer<typeof ServerToClient>;

// ---- worker ↔ server ----------------------------------------------------------------------------

export const RequestJob = z.object({ type: z.literal('request-job') });
export const Output = z.object({ type: z.literal('output'), uuid: Uuid, chunks: z.array(ConsoleChunk).min(1) });
export const Heartbeat = z.object({ type: z.literal('heartbeat'), uuid: Uuid.nullable() });
export const Upload = z.object({ type: z.literal('upload'), uuid: Uuid, chunk: Bytes });
export const Finished = z.object({ type: z.literal('finished'), uuid: Uuid, outcome: Outcome });
/** The job's latest progress (sent only to a server whose welcome lists the 'progress' feature). */
export const ProgressReport = z.object({
  type: z.literal('progress'), uuid: Uuid, percent: z.number().min(0).max(100).nullable(), message: z.string().max(200),
});

export const WorkerMessage = z.discriminatedUnion('type', [RequestJob, Output, Heartbeat, Upload, Finished, ProgressReport]);
export type WorkerMessage = z.infer<typeof WorkerMessage>;

export const JobAssignment = z.object({
  type: z.literal('job'), uuid: Uuid, name: Name, platform: Name, script: z.string(),
  timeoutSeconds: z.number().int().positive().max(MAX_TIMEOUT_SECONDS),
  /** Variables for the job, secrets included (absent: none). */
  env: z.record(z.string(), z.string()).optional(),
});
export const FinishedAck = z.object({ type: z.literal('finished-ack'), uuid: Uuid });
export const CancelRun = z.object({ type: z.literal('cancel-run'), uuid: Uuid, message: z.string() });
/** The answer to every heartbeat: lets a worker notice a server that went silent (a partition). */
export const HeartbeatAck = z.object({ type: z.literal('heartbeat-ack'), uuid: Uuid.nullable() });

export const ServerToWorker = z.discriminatedUnion('type', [JobAssignment, FinishedAck, CancelRun, HeartbeatAck, Welcome, Fatal]);
export type ServerToWorker = z.infer<typeof ServerToWorker>;

export type JobAssignment = z.infer<typeof JobAssignment>;

/** Any message a server may receive after the hello, or send. */
export type AnyMessage = Hello | Welcome | ClientMessage | ServerToClient | WorkerMessage | ServerToWorker;

// ---- validation -----------------------------------------------------------------------------------

export type Parsed<T> = { ok: true; message: T } | { ok: false; error: string };

/** Turns zod's issues into one line: `field.path: problem; other.field: problem`. */
export function formatIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((issue) => {
      const where = issue.path.length > 0 ? issue.path.map(String).join('.') : 'message';
      // A bad record key (an environment variable's name): zod says only "Invalid key in record";
      // the key's own issue says what is wrong with it.
      const inner = issue.code === 'invalid_key' ? issue.issues[0]?.message : undefined;
      return `${where}: ${inner ?? issue.message}`;
    })
    .join('; ');
}

/**
 * Validates a decoded value against one direction's schema. Never throws: a value of the wrong shape
 * becomes an error string that names the message type (if any) and the offending fields.
 */
export function parseWith<T>(schema: z.ZodType<T>, value: unknown): Parsed<T> {
  const result = schema.safeParse(value);
  if (result.success) return { ok: true, message: result.data };
  const type = typeof value === 'object' && value !== null && 'type' in value && typeof value.type === 'string'
    ? value.type.slice(0, 64) : null;
  return { ok: false, error: `invalid ${type === null ? 'message' : `'${type}' message`}: ${formatIssues(result.error)}` };
}
