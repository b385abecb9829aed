/**
 * All of builder's durable state, behind one narrow interface. This is the only module that speaks
 * SQL; the server's handlers ask it questions and tell it what happened, in the words of
 * protocol/types.ts. Every method that changes state does so in one transaction, committed before it
 * returns, so that whatever the server acknowledges afterwards survives a SIGKILL.
 *
 * The interface is synchronous because better-sqlite3 is: it keeps dispatch free of interleavings
 * (a job can never be handed out twice). A PostgreSQL backend would implement the same operations.
 */
import Database from 'better-sqlite3';
import { hash, randomUUID } from 'node:crypto';
import { limitMessage } from '../protocol/types.js';
import { statementCache } from './statements.js';
import type {
  Artifact, Delivery, Env, JobInfo, JobSource, JobSourceSummary, Outcome, Period, Progress, QueueEntry, RunDetail, RunState, RunSummary,
} from '../protocol/types.js';

/**
 * Numbered migrations; PRAGMA user_version records how many have run. Never edit one that shipped.
 * Most are SQL; one that must compute values SQL cannot (a SHA-256) is a function. Exported for the
 * tests, which build a database as each version left it and migrate it from there.
 */
export const MIGRATIONS: readonly (string | ((db: Database.Database) => void))[] = [
  // 1: jobs, queue, runs, artifacts, dropped platforms
  `
  CREATE TABLE jobs (
    name        TEXT PRIMARY KEY,
    platform    TEXT NOT NULL,
    source      TEXT NOT NULL,          -- JSON JobSource
    period      TEXT NOT NULL,          -- JSON Period
    next_due    INTEGER,                -- ms since epoch; NULL when the period is never
    timeout_s   INTEGER,                -- NULL: the server's default
    created_at  INTEGER NOT NULL
  );
  CREATE INDEX jobs_next_due ON jobs(next_due) WHERE next_due IS NOT NULL;

  CREATE TABLE runs (
    uuid         TEXT PRIMARY KEY,
    job          TEXT NOT NULL,
    platform     TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    worker       TEXT,
    source       TEXT,                  -- JSON JobSource as it was at dispatch
    script       TEXT,                  -- the exact script the worker ran (rendered at dispatch)
    queued_at    INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    outcome      TEXT,                  -- JSON Outcome
    console_lines INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX runs_job ON runs(job, queued_at DESC);
  CREATE INDEX runs_state ON runs(state) WHERE state != 'finished';
  CREATE INDEX runs_queued_at ON runs(queued_at DESC);

  -- One row per queued run; the lowest position is the front. A job is in the queue at most once.
  CREATE TABLE queue (
    run_uuid  TEXT PRIMARY KEY REFERENCES runs(uuid),
    job       TEXT NOT NULL UNIQUE,
    platform  TEXT NOT NULL,
    position  INTEGER NOT NULL
  );
  CREATE INDEX queue_order ON queue(platform, position);

  CREATE TABLE artifacts (
    run_uuid TEXT NOT NULL REFERENCES runs(uuid),
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    PRIMARY KEY (run_uuid, path)
  );
  CREATE INDEX artifacts_sha256 ON artifacts(sha256);

  CREATE TABLE dropped_platforms (platform TEXT PRIMARY KEY);
  `,
  `
  -- Retention: a job may keep its own number of finished runs (NULL: the server's --keep-runs).
  ALTER TABLE jobs ADD COLUMN keep_runs INTEGER;
  CREATE INDEX runs_job_finished ON runs(job, finished_at DESC) WHERE state = 'finished';
  -- Files of removed runs, deleted from disk after the transaction that removed their rows (an
  -- artifact file only when no run references its hash any more). Kept here so that a crash in
  -- between leaves nothing behind for ever.
  CREATE TABLE garbage (
    kind TEXT NOT NULL CHECK (kind IN ('artifact', 'console')),
    name TEXT NOT NULL,
    PRIMARY KEY (kind, name)
  );
  `,
  `
  -- The token that created a job (NULL: made without tokens): operators may unschedule or replace
  -- only their own jobs.
  ALTER TABLE jobs ADD COLUMN owner TEXT;
  `,
  `
  -- Labels a worker must have, the job's environment and its webhook URLs (JSON; NULL: none).
  ALTER TABLE jobs ADD COLUMN requires TEXT;
  ALTER TABLE jobs ADD COLUMN env TEXT;
  ALTER TABLE jobs ADD COLUMN notify TEXT;
  -- Secret variables, apart from everything that is ever listed or shown.
  CREATE TABLE job_secrets (
    job   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job, key)
  );
  -- What a run was given at dispatch (secrets by name only), and the progress it last reported.
  ALTER TABLE runs ADD COLUMN env TEXT;
  ALTER TABLE runs ADD COLUMN secret_keys TEXT;
  ALTER TABLE runs ADD COLUMN progress TEXT;
  -- Webhook deliveries, written in the transaction of the event they announce, so none is lost.
  CREATE TABLE deliveries (
    id         INTEGER PRIMARY KEY,
    run_uuid   TEXT NOT NULL,
    event      TEXT NOT NULL,
    url        TEXT NOT NULL,
    body       TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT,
    updated_at INTEGER NOT NULL
  );
  CREATE INDEX deliveries_pending ON deliveries(url, id) WHERE state = 'pending';
  CREATE INDEX deliveries_run ON deliveries(run_uuid);
  `,
  // What `info` lists for a job's source (JSON JobSourceSummary: a script's size and SHA-256, or the
  // template and its variables), computed once when the job is written: info lists every job, and
  // parsing and hashing every script on every info made its cost grow with the farm's script bytes.
  (db) => {
    db.exec('ALTER TABLE jobs ADD COLUMN source_summary TEXT');
    const update = db.prepare('UPDATE jobs SET source_summary = ? WHERE name = ?');
    for (const row of db.prepare('SELECT name, source FROM jobs').all() as { name: string; source: string }[]) {
      update.run(JSON.stringify(summariseSource(JSON.parse(row.source) as JobSource)), row.name);
    }
  },
  `
  -- The queue is the runs in state 'queued', in the order of their position: no table of its own.
  -- Taking a run off a separate queue table wrote four pages (the table and its three indexes) on
  -- top of the run's own, at every start; now a start changes only indexes of runs, and only partial
  -- ones over the few runs queued or running. A queued run the old queue had lost (none should
  -- exist) is recorded as cancelled rather than put anywhere.
  ALTER TABLE runs ADD COLUMN position INTEGER;  -- its place in its platform's queue; NULL once it leaves
  UPDATE runs SET position = (SELECT position FROM queue WHERE queue.run_uuid = runs.uuid) WHERE state = 'queued';
  UPDATE runs SET state = 'finished', finished_at = CAST(unixepoch('subsec') * 1000 AS INTEGER),
    outcome = '{"kind":"cancelled","message":"queued, but missing from the queue when the store was upgraded"}'
    WHERE state = 'queued' AND position IS NULL;
  DROP TABLE queue;
  DROP INDEX runs_state;
  CREATE INDEX runs_queue ON runs(platform, position) WHERE state = 'queued';
  CREATE UNIQUE INDEX runs_queued_job ON runs(job) WHERE state = 'queued';
  CREATE INDEX runs_running ON runs(started_at) WHERE state = 'running';
  `,
];

/** runsInState's query for each state, with the state written in (see there). */
const RUNS_IN_STATE: Record<RunState, string> = {
  queued: `SELECT * FROM runs WHERE state = 'queued' ORDER BY started_at, queued_at`,
  running: `SELECT * FROM runs WHERE state = 'running' ORDER BY started_at, queued_at`,
  finished: `SELECT * FROM runs WHERE state = 'finished' ORDER BY started_at, queued_at`,
};

/** What `info` lists for a job's source: a script by its size and SHA-256 (scripts can be large). */
export function summariseSource(source: JobSource): JobSourceSummary {
  return source.kind === 'script'
    ? { kind: 'script', bytes: Buffer.byteLength(source.script), sha256: hash('sha256', source.script) }
    : source;
}

export interface JobRecord {
  name: string;
  platform: string;
  source: JobSource;
  period: Period;
  nextDue: number | null;
  timeoutSeconds: number | null;
  /** Finished runs to keep (older ones are removed); null: the server's default. */
  keepRuns: number | null;
  /** The name of the token that created the job; null when made on a server without tokens. */
  owner?: string | null;
  /** Labels a worker must have to be given this job. */
  requires?: string[];
  env?: Env;
  /** Webhook URLs for this job's run events. */
  notify?: string[];
  createdAt: number;
}

interface JobRow {
  name: string; platform: string; source: string; period: string; next_due: number | null;
  timeout_s: number | null; keep_runs: number | null; owner: string | null; created_at: number;
  requires: string | null; env: string | null; notify: string | null;
}
interface RunRow {
  uuid: string; job: string; platform: string; state: RunState; worker: string | null; source: string | null;
  script: string | null; queued_at: number; started_at: number | null; finished_at: number | null;
  outcome: string | null; console_lines: number; env: string | null; secret_keys: string | null; progress: string | null;
}

interface DeliveryRow {
  id: number; run_uuid: string; event: Delivery['event']; url: string; body: string; state: Delivery['state'];
  attempts: number; next_at: number; last_error: string | null; updated_at: number;
}

/** A webhook delivery waiting to be sent. */
export interface PendingDelivery {
  id: number;
  run: string;
  event: Delivery['event'];
  url: string;
  body: string;
  attempts: number;
  nextAt: number;
}

/** Run events that webhooks announce; see Store's `onRunEvent`. */
export type RunEvent = 'queued' | 'started' | 'finished';

/** JSON of a list or map, NULL when empty (most jobs have none). */
function jsonOrNull(value: string[] | Record<string, string> | undefined): string | null {
  if (value === undefined) return null;
  return (Array.isArray(value) ? value.length : Object.keys(value).length) === 0 ? null : JSON.stringify(value);
}

function toJob(row: JobRow): JobRecord {
  return {
    name: row.name,
    platform: row.platform,
    source: JSON.parse(row.source) as JobSource,
    period: JSON.parse(row.period) as Period,
    nextDue: row.next_due,
    timeoutSeconds: row.timeout_s,
    keepRuns: row.keep_runs,
    owner: row.owner,
    requires: row.requires === null ? [] : (JSON.parse(row.requires) as string[]),
    env: row.env === null ? {} : (JSON.parse(row.env) as Env),
    notify: row.notify === null ? [] : (JSON.parse(row.notify) as string[]),
    createdAt: row.created_at,
  };
}

/** SQL for "this finished run succeeded": exited 0, as isSuccess() says. */
const SUCCESS_SQL = "(json_extract(outcome, '$.kind') = 'exited' AND json_extract(outcome, '$.code') = 0)";

function toRun(row: RunRow): RunSummary {
  return {
    uuid: row.uuid,
    job: row.job,
    platform: row.platform,
    state: row.state,
    worker: row.worker,
    queuedAt: row.queued_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    outcome: row.outcome === null ? null : (JSON.parse(row.outcome) as Outcome),
    progress: row.progress === null ? null : (JSON.parse(row.progress) as Progress),
  };
}

/** What the scheduler needs of a job that fell due to compute its next due time. */
export type DueJob = Pick<JobRecord, 'name' | 'platform' | 'period' | 'nextDue'>;

/** What enqueue did: queued a new run, or found the job already waiting (and maybe moved it). */
export interface Enqueued {
  uuid: string;
  job: string;
  platform: string;
  fresh: boolean;
}

export class Store {
  readonly db: Database.Database;
  private readonly sql: (text: string) => Database.Statement;
  /** db.transaction() wrapped once; see atomically(). */
  private readonly transaction: (work: () => unknown) => unknown;

  /** Finished runs kept per job unless the job says otherwise; 0 keeps all. */
  readonly keepRuns: number;
  private readonly strict: boolean;

  /**
   * Called inside the transaction of every run event (a fresh run queued, a run started, a run
   * finished), so that what it writes (webhook deliveries) commits or rolls back with the event.
   */
  onRunEvent: ((event: RunEvent, uuid: string) => void) | null = null;
  /** False once the garbage list was found empty, until something is listed again (see garbage()). */
  private garbageMaybe = true;
  /** Whether any job may have webhooks; null until first asked (see notifyOfRun). */
  private webhooksMaybe: boolean | null = null;

  /**
   * Runs `work` in one transaction, or in a savepoint inside the one that is open. The wrapper is
   * made once: better-sqlite3's db.transaction() builds four functions and defines their properties
   * on every call, which was about a tenth of the server's time per run started and finished.
   */
  private atomically<T>(work: () => T): T {
    return this.transaction(work) as T;
  }

  constructor(path: string, options: { strict?: boolean; keepRuns?: number } = {}) {
    this.keepRuns = options.keepRuns ?? 0;
    this.strict = options.strict === true;
    this.db = new Database(path);
    this.sql = statementCache(this.db);
    this.transaction = this.db.transaction((work: () => unknown) => work());
    try {
      // One server per state directory: the first write takes SQLite's exclusive lock and keeps it
      // for the life of the process (the OS releases it if the process dies). A second server on the
      // same directory fails here, before it has read or changed anything.
      this.db.pragma('locking_mode = EXCLUSIVE');
      try {
        this.db.pragma('journal_mode = WAL');
        this.db.exec('BEGIN EXCLUSIVE; COMMIT;');
      } catch (error) {
        if ((error as { code?: string }).code === 'SQLITE_BUSY') {
          throw new StoreError(`the state database ${path} is in use by another builder-server; stop it, or give this one another --state-dir`);
        }
        throw error;
      }
      // NORMAL in WAL mode: a committed transaction survives the process being killed (SIGKILL);
      // only a power loss can take back the last few. `strict` makes every commit wait for fsync.
      this.db.pragma(`synchronous = ${options.strict === true ? 'FULL' : 'NORMAL'}`);
      // The WAL is copied back into the database by checkpoint(), on the server's timer, not by the
      // commit that happens to cross SQLite's threshold: that commit (a finishing run, a burst of
      // due schedules) would wait for the copy and its fsync. Closing the store checkpoints too.
      this.db.pragma('wal_autocheckpoint = 0');
      this.db.pragma('foreign_keys = ON');
      this.migrate();
      // The savepoints inside a group commit (one per outcome, see Store.batch) journal each page
      // they change. On disk, that journal was one more file written page by page for every run
      // started or finished, as many writes as the WAL itself; in memory it costs a few pages.
      // Set after the migrations: a VACUUM or CREATE INDEX on a big database keeps its temporary
      // copy or sort on disk.
      this.db.pragma('temp_store = MEMORY');
    } catch (error) {
      this.db.close();
      throw error;
    }
  }

  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  private migrate(): void {
    const current = this.schemaVersion;
    if (current > MIGRATIONS.length) {
      throw new Error(`the state database has schema version ${current}, newer than this builder-server knows (${MIGRATIONS.length}); run a newer builder-server`);
    }
    // Incremental auto-vacuum: space freed by retention can be handed back a little at a time
    // (vacuum()) instead of by a full VACUUM. Switching a database to it takes one full VACUUM:
    // instant on a new one, once on a database made before this setting.
    if ((this.db.pragma('auto_vacuum', { simple: true }) as number) !== 2) {
      this.db.pragma('auto_vacuum = INCREMENTAL');
      this.db.exec('VACUUM');
    }
    for (let version = current; version < MIGRATIONS.length; version++) {
      this.atomically(() => {
        const migration = MIGRATIONS[version] as string | ((db: Database.Database) => void);
        if (typeof migration === 'string') this.db.exec(migration);
        else migration(this.db);
        this.db.pragma(`user_version = ${version + 1}`);
      });
    }
  }

  close(): void {
    this.db.close();
  }

  integrityCheck(): string {
    return this.db.pragma('integrity_check', { simple: true }) as string;
  }

  // ---- jobs and schedules -----------------------------------------------------------------------

  getJob(name: string): JobRecord | null {
    const row = this.sql('SELECT * FROM jobs WHERE name = ?').get(name) as JobRow | undefined;
    return row === undefined ? null : toJob(row);
  }

  listJobs(): JobRecord[] {
    return (this.sql('SELECT * FROM jobs ORDER BY name').all() as JobRow[]).map(toJob);
  }

  /**
   * Every job as `info` lists it, by name. One pass over rows fetched as arrays, straight into the
   * objects sent: info lists every job (100,000 on a big farm), and building row objects and then
   * JobRecords to copy from was most of its cost. Sources are listed by the summary putJob stored.
   */
  jobInfos(secretKeys: Map<string, string[]>): JobInfo[] {
    const rows = this.sql(`SELECT name, platform, source_summary, period, next_due, timeout_s, keep_runs, requires, env, notify
      FROM jobs ORDER BY name -- info`).raw(true).all() as [string, string, string, string, number | null, number | null, number | null, string | null, string | null, string | null][];
    // A farm's jobs share a handful of periods, and most have no labels, environment or webhooks:
    // those are parsed once and shared by every job listed (the list is only encoded and dropped).
    const periods = new Map<string, Period>();
    const none: string[] = [];
    const noEnv: Env = {};
    const jobs: JobInfo[] = new Array(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const [name, platform, source, period, nextDue, timeoutSeconds, keepRuns, requires, env, notify] = rows[i]!;
      let parsed = periods.get(period);
      if (parsed === undefined) periods.set(period, parsed = JSON.parse(period) as Period);
      jobs[i] = {
        name, platform, source: JSON.parse(source) as JobSourceSummary, period: parsed, nextDue, timeoutSeconds, keepRuns,
        requires: requires === null ? none : (JSON.parse(requires) as string[]),
        env: env === null ? noEnv : (JSON.parse(env) as Env),
        secretKeys: secretKeys.get(name) ?? none,
        notify: notify === null ? none : (JSON.parse(notify) as string[]),
      };
    }
    return jobs;
  }

  /** Adds a job (or replaces one of the same name when `replace`), and queues it in the same transaction. */
  putJob(job: JobRecord, replace: boolean, now: number, secrets: Env = {}): { replaced: boolean; enqueued: Enqueued | null; cancelled: string | null } {
    return this.atomically(() => {
      const existing = this.getJob(job.name);
      if (existing !== null && !replace) throw new StoreError(`job ${job.name} already exists; give --replace to replace it`);
      let cancelled: string | null = null;
      if (existing !== null) {
        if (existing.platform !== job.platform) cancelled = this.removeQueued(job.name, 'job replaced for another platform', now);
        this.sql('DELETE FROM jobs WHERE name = ?').run(job.name);
        this.sql('DELETE FROM job_secrets WHERE job = ?').run(job.name);
      }
      if (jsonOrNull(job.notify) !== null) this.webhooksMaybe = true;
      this.sql(`INSERT INTO jobs (name, platform, source, source_summary, period, next_due, timeout_s, keep_runs, owner, requires, env, notify, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(job.name, job.platform, JSON.stringify(job.source), JSON.stringify(summariseSource(job.source)),
        JSON.stringify(job.period), job.nextDue, job.timeoutSeconds, job.keepRuns, job.owner ?? null,
        jsonOrNull(job.requires), jsonOrNull(job.env), jsonOrNull(job.notify), existing?.createdAt ?? job.createdAt);
      const secret = this.sql('INSERT INTO job_secrets (job, key, value) VALUES (?, ?, ?)');
      for (const [key, value] of Object.entries(secrets)) secret.run(job.name, key, value);
      if (existing !== null) this.pruneLocked(job.name);
      const enqueued = this.isDropped(job.platform) ? null : this.enqueueLocked(job.name, job.platform, false, now);
      return { replaced: existing !== null, enqueued, cancelled };
    });
  }

  /** Removes a job; its queued run (if any) is recorded as cancelled and returned. */
  deleteJob(name: string, now: number): { existed: boolean; cancelled: string | null } {
    return this.atomically(() => {
      const cancelled = this.removeQueued(name, 'job unscheduled', now);
      this.sql('DELETE FROM job_secrets WHERE job = ?').run(name);
      return { existed: this.sql('DELETE FROM jobs WHERE name = ?').run(name).changes > 0, cancelled };
    });
  }

  /** A job's secret variables, for the worker that runs it. Never listed anywhere else. */
  secretsOf(name: string): Env {
    const rows = this.sql('SELECT key, value FROM job_secrets WHERE job = ? ORDER BY key').all(name) as { key: string; value: string }[];
    return Object.fromEntries(rows.map((row) => [row.key, row.value]));
  }

  /** The names (only) of every job's secret variables, by job. */
  secretKeysByJob(): Map<string, string[]> {
    const keys = new Map<string, string[]>();
    for (const row of this.sql('SELECT job, key FROM job_secrets ORDER BY job, key').all() as { job: string; key: string }[]) {
      const list = keys.get(row.job) ?? [];
      list.push(row.key);
      keys.set(row.job, list);
    }
    return keys;
  }

  /** The webhook URLs of the job a run belongs to (one indexed lookup: called for every run event). */
  notifyOfRun(uuid: string): string[] {
    // Most farms have no webhooks: then every run's three events skip this query.
    this.webhooksMaybe ??= this.sql('SELECT 1 FROM jobs WHERE notify IS NOT NULL LIMIT 1').get() !== undefined;
    if (!this.webhooksMaybe) return [];
    const row = this.sql('SELECT j.notify FROM runs r JOIN jobs j ON j.name = r.job WHERE r.uuid = ?').get(uuid) as { notify: string | null } | undefined;
    return row?.notify === null || row?.notify === undefined ? [] : (JSON.parse(row.notify) as string[]);
  }

  setSchedule(name: string, nextDue: number | null, period: Period | null): boolean {
    const result = period === null
      ? this.sql('UPDATE jobs SET next_due = ? WHERE name = ?').run(nextDue, name)
      : this.sql('UPDATE jobs SET next_due = ?, period = ? WHERE name = ?').run(nextDue, JSON.stringify(period), name);
    return result.changes > 0;
  }

  /** The earliest due time of any schedule, or null if nothing is ever due. */
  earliestDue(): number | null {
    const row = this.sql('SELECT MIN(next_due) AS due FROM jobs WHERE next_due IS NOT NULL').get() as { due: number | null };
    return row.due;
  }

  /**
   * Queues every job due at `now` (unless already queued or its platform is dropped) and moves each
   * schedule to its next due time, all in one transaction.
   */
  enqueueDue(now: number, next: (job: DueJob) => number | null): Enqueued[] {
    // Wrapped once: the scheduler calls this at every wake and after every change to a schedule.
    this.enqueueDueTransaction ??= this.db.transaction((at: number, nextOf: (job: DueJob) => number | null): Enqueued[] => {
      // Only the columns the schedule needs, and the rowid to move it on: thousands of jobs can fall
      // due at the same instant (a cron line they share), and all of them wait for this transaction.
      const due = this.sql(`SELECT rowid, name, platform, period, next_due FROM jobs WHERE next_due IS NOT NULL AND next_due <= ?
        ORDER BY next_due, name`).all(at) as { rowid: number; name: string; platform: string; period: string; next_due: number }[];
      if (due.length === 0) return [];
      const dropped = new Set(this.droppedPlatforms());
      const queued: Enqueued[] = [];
      const update = this.sql('UPDATE jobs SET next_due = ? WHERE rowid = ?');
      for (const row of due) {
        update.run(nextOf({ name: row.name, platform: row.platform, period: JSON.parse(row.period) as Period, nextDue: row.next_due }), row.rowid);
        if (dropped.has(row.platform)) continue;
        const enqueued = this.enqueueLocked(row.name, row.platform, false, at);
        if (enqueued.fresh) queued.push(enqueued);
      }
      return queued;
    });
    return this.enqueueDueTransaction(now, next);
  }

  private enqueueDueTransaction: ((now: number, next: (job: DueJob) => number | null) => Enqueued[]) | null = null;

  // ---- queue ----------------------------------------------------------------------------------------

  /** Queues a run of `name` at the back (or the front). A job already waiting is not queued twice. */
  enqueue(name: string, front: boolean, now: number): Enqueued {
    return this.atomically(() => {
      const job = this.getJob(name);
      if (job === null) throw new StoreError(`unknown job ${name}`);
      if (this.isDropped(job.platform)) throw new StoreError(`platform ${job.platform} is dropped; run undrop-platform ${job.platform} first`);
      return this.enqueueLocked(name, job.platform, front, now);
    });
  }

  private enqueueLocked(name: string, platform: string, front: boolean, now: number): Enqueued {
    const waiting = this.queuedRunOf(name);
    const position = (this.sql(`SELECT ${front ? 'MIN(position) - 1' : 'MAX(position) + 1'} AS p FROM runs WHERE platform = ? AND state = 'queued'`)
      .get(platform) as { p: number | null }).p ?? 0;
    if (waiting !== null) {
      if (front) this.sql(`UPDATE runs SET position = ? WHERE uuid = ? AND state = 'queued'`).run(position, waiting);
      return { uuid: waiting, job: name, platform, fresh: false };
    }
    const uuid = randomUUID();
    this.sql(`INSERT INTO runs (uuid, job, platform, state, queued_at, position) VALUES (?, ?, ?, 'queued', ?, ?)`).run(uuid, name, platform, now, position);
    this.onRunEvent?.('queued', uuid);
    return { uuid, job: name, platform, fresh: true };
  }

  /** The run of job `name` that waits in its queue, if any (there is at most one: runs_queued_job). */
  private queuedRunOf(name: string): string | null {
    return (this.sql(`SELECT uuid FROM runs WHERE job = ? AND state = 'queued'`).get(name) as { uuid: string } | undefined)?.uuid ?? null;
  }

  private removeQueued(name: string, message: string, now: number): string | null {
    const waiting = this.queuedRunOf(name);
    if (waiting === null) return null;
    this.finishLocked(waiting, { kind: 'cancelled', message }, now);
    return waiting;
  }

  /**
   * The first queued run of `platform` that a worker with `labels` may take: its job requires no
   * label the worker lacks. A job waiting for a label nobody has does not hold up the jobs behind it.
   */
  nextFor(platform: string, labels: string[]): { uuid: string; job: JobRecord } | null {
    // The job's row comes with its run (one statement per start, not two). A queued run always has
    // its job: deleting a job cancels its queued run in the same transaction.
    const row = this.sql(`SELECT q.uuid AS run_uuid, j.* FROM runs q JOIN jobs j ON j.name = q.job
      WHERE q.platform = ? AND q.state = 'queued' AND (j.requires IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_each(j.requires) needed WHERE needed.value NOT IN (SELECT value FROM json_each(?))))
      ORDER BY q.position LIMIT 1`).get(platform, JSON.stringify(labels)) as (JobRow & { run_uuid: string }) | undefined;
    return row === undefined ? null : { uuid: row.run_uuid, job: toJob(row) };
  }

  /** Whether anything waits in a platform's queue (one index probe: dispatch asks it often). */
  hasQueued(platform: string): boolean {
    return this.sql(`SELECT 1 FROM runs WHERE platform = ? AND state = 'queued' LIMIT 1`).get(platform) !== undefined;
  }

  queues(): Record<string, QueueEntry[]> {
    const rows = this.sql(`SELECT platform, uuid, job, queued_at FROM runs WHERE state = 'queued'
      ORDER BY platform, position`).all() as { platform: string; uuid: string; job: string; queued_at: number }[];
    const queues: Record<string, QueueEntry[]> = {};
    for (const row of rows) (queues[row.platform] ??= []).push({ uuid: row.uuid, job: row.job, queuedAt: row.queued_at });
    return queues;
  }

  /** The labels each queued job requires, for the jobs that require any. */
  queuedRequirements(): Map<string, string[]> {
    const rows = this.sql(`SELECT j.name, j.requires FROM runs q JOIN jobs j ON j.name = q.job WHERE q.state = 'queued' AND j.requires IS NOT NULL`)
      .all() as { name: string; requires: string }[];
    return new Map(rows.map((row) => [row.name, JSON.parse(row.requires) as string[]]));
  }

  /** Platforms that have at least one queued run. */
  queuedPlatforms(): string[] {
    return (this.sql(`SELECT DISTINCT platform FROM runs WHERE state = 'queued'`).all() as { platform: string }[]).map((row) => row.platform);
  }

  // ---- runs -------------------------------------------------------------------------------------------

  /** Takes a queued run off its queue and records it as running on `worker` with its rendered script. */
  startRun(uuid: string, worker: string, source: JobSource, script: string, now: number, given: { env?: Env; secretKeys?: string[] } = {}): void {
    this.atomically(() => {
      const changed = this.sql(`UPDATE runs SET state = 'running', position = NULL, worker = ?, source = ?, script = ?, started_at = ?, env = ?, secret_keys = ?
        WHERE uuid = ? AND state = 'queued'`).run(worker, JSON.stringify(source), script, now, jsonOrNull(given.env), jsonOrNull(given.secretKeys), uuid).changes;
      if (changed !== 1) throw new Error(`run ${uuid} is not queued`);
      this.onRunEvent?.('started', uuid);
    });
  }

  /** Keeps the progress a running run last reported. */
  setProgress(uuid: string, progress: Progress): void {
    this.sql(`UPDATE runs SET progress = ? WHERE uuid = ? AND state = 'running'`).run(JSON.stringify(progress), uuid);
  }

  /**
   * Runs `work` in one transaction: the store's own transactions inside it become savepoints, so
   * many writes share one commit (and, with --strict, one fsync). A write that throws inside is
   * rolled back alone when `work` catches it.
   *
   * `durable: false` skips the fsync even with --strict, for writes that acknowledge nothing (runs
   * starting: if a power loss takes them back, the runs are queued again, where a lost worker would
   * have put them). The next durable commit makes them durable too, as the WAL is written in order.
   */
  batch<T>(work: () => T, durable = true): T {
    if (durable || !this.strict) return this.atomically(work);
    this.sql('PRAGMA synchronous = NORMAL').run();
    try {
      return this.atomically(work);
    } finally {
      this.sql('PRAGMA synchronous = FULL').run();
    }
  }

  /** Records how a run ended, with its artifacts, in one transaction. */
  finishRun(uuid: string, outcome: Outcome, now: number, artifacts: Artifact[] = [], consoleLines = 0): void {
    this.atomically(() => {
      // Artifacts first: the run's `finished` event (a webhook) lists them.
      const insert = this.sql('INSERT INTO artifacts (run_uuid, path, size, sha256) VALUES (?, ?, ?, ?)');
      for (const artifact of artifacts) insert.run(uuid, artifact.path, artifact.size, artifact.sha256);
      this.finishLocked(uuid, outcome, now, consoleLines);
    });
  }

  private finishLocked(uuid: string, outcome: Outcome, now: number, consoleLines = 0): void {
    // The run's job comes back from the update itself, not from a second lookup of the same row.
    const finished = this.sql(`UPDATE runs SET state = 'finished', position = NULL, outcome = ?, finished_at = ?, console_lines = ?
      WHERE uuid = ? AND state != 'finished' RETURNING job`).get(JSON.stringify(outcome), now, consoleLines, uuid) as { job: string } | undefined;
    if (finished === undefined) throw new StoreError(`run ${uuid} is not queued or running`);
    this.onRunEvent?.('finished', uuid);
    this.pruneLocked(finished.job, uuid);
  }

  /**
   * Retention: removes the finished runs of a job beyond the newest N it keeps (never `spare`, the
   * run just finished), with their artifact rows; their console files and artifact files go on the
   * garbage list, for collectGarbage() once this transaction has committed.
   */
  private pruneLocked(job: string, spare: string | null = null): number {
    const own = (this.sql('SELECT keep_runs FROM jobs WHERE name = ?').get(job) as { keep_runs: number | null } | undefined)?.keep_runs;
    const keep = own ?? this.keepRuns;
    if (keep <= 0) return 0;
    const old = this.sql(`SELECT uuid FROM runs WHERE job = ? AND state = 'finished' AND uuid IS NOT ?
      ORDER BY finished_at DESC, rowid DESC LIMIT -1 OFFSET ?`).all(job, spare, spare === null ? keep : keep - 1) as { uuid: string }[];
    for (const { uuid } of old) {
      this.listGarbage('artifact', (this.sql('SELECT DISTINCT sha256 FROM artifacts WHERE run_uuid = ?').all(uuid) as { sha256: string }[])
        .map((row) => row.sha256));
      this.listGarbage('console', [uuid]);
      this.sql('DELETE FROM artifacts WHERE run_uuid = ?').run(uuid);
      this.sql('DELETE FROM deliveries WHERE run_uuid = ?').run(uuid);
      this.sql('DELETE FROM runs WHERE uuid = ?').run(uuid);
    }
    return old.length;
  }

  /**
   * Applies retention to every job (at start, when --keep-runs may have changed). Returns runs
   * removed. Nothing to do when the server keeps all: a job's own limit was applied at each finish.
   */
  pruneAll(): number {
    if (this.keepRuns <= 0) return 0;
    return this.atomically(() => {
      // Only the jobs that have more finished runs than they keep, counted in one pass over the
      // index: asking every job in turn took seconds at every start of a big farm, to remove nothing.
      const jobs = this.sql(`SELECT c.job FROM (SELECT job, count(*) AS n FROM runs WHERE state = 'finished' GROUP BY job) c
        LEFT JOIN jobs j ON j.name = c.job WHERE c.n > coalesce(j.keep_runs, ?)`).all(this.keepRuns) as { job: string }[];
      return jobs.reduce((removed, { job }) => removed + this.pruneLocked(job), 0);
    });
  }

  /** Files waiting to be deleted; an artifact hash is listed only if no run references it now. */
  garbage(limit = 10_000): { artifacts: string[]; consoles: string[]; referenced: string[] } {
    // Looked for after every group commit: while nothing was listed since the list was last found
    // empty, there is nothing to look for.
    if (!this.garbageMaybe) return { artifacts: [], consoles: [], referenced: [] };
    const rows = this.sql('SELECT kind, name FROM garbage LIMIT ?').all(limit) as { kind: 'artifact' | 'console'; name: string }[];
    if (rows.length === 0) this.garbageMaybe = false;
    const isReferenced = this.sql('SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1');
    const artifacts: string[] = [];
    const referenced: string[] = [];
    const consoles: string[] = [];
    for (const row of rows) {
      if (row.kind === 'console') consoles.push(row.name);
      else if (isReferenced.get(row.name) === undefined) artifacts.push(row.name);
      else referenced.push(row.name);
    }
    return { artifacts, consoles, referenced };
  }

  /** Lists files to delete once no run references them (artifacts of an upload that was refused). */
  addGarbage(kind: 'artifact' | 'console', names: string[]): void {
    this.atomically(() => this.listGarbage(kind, names));
  }

  /** Lists files for collectGarbage() inside the caller's transaction (and so tells garbage() to look). */
  private listGarbage(kind: 'artifact' | 'console', names: string[]): void {
    if (names.length === 0) return;
    this.garbageMaybe = true;
    const insert = this.sql('INSERT OR IGNORE INTO garbage (kind, name) VALUES (?, ?)');
    for (const name of names) insert.run(kind, name);
  }

  /** Forgets garbage entries whose files are gone (or, for a hash in use again, were kept). */
  clearGarbage(kind: 'artifact' | 'console', names: string[]): void {
    const remove = this.sql('DELETE FROM garbage WHERE kind = ? AND name = ?');
    this.atomically(() => { for (const name of names) remove.run(kind, name); });
  }

  /** Copies what the WAL holds into the database, as far as it can without waiting. */
  checkpoint(): void {
    this.sql('PRAGMA wal_checkpoint(PASSIVE)').get();
  }

  /** Returns free pages to the file system (the database is in incremental auto-vacuum mode). */
  vacuum(): { freedPages: number } {
    const before = this.db.pragma('freelist_count', { simple: true }) as number;
    this.db.pragma('incremental_vacuum');
    return { freedPages: before - (this.db.pragma('freelist_count', { simple: true }) as number) };
  }

  /**
   * A running run whose worker was lost: recorded as failed, and the job queued again at the front of
   * its queue (if it still exists and its platform is not dropped). A job whose last `limit` runs all
   * lost their worker (it kills workers, or exhausts their memory) is not queued again, so that it
   * cannot block its platform forever; its schedule or `execute` queue it next. Returns the new run.
   */
  loseRun(uuid: string, message: string, now: number, consoleLines: number, limit = Infinity): Enqueued | null {
    return this.atomically(() => {
      const run = this.getRun(uuid);
      if (run === null || run.state !== 'running') return null;
      const previous = Number.isFinite(limit)
        ? (this.sql(`SELECT outcome FROM runs WHERE job = ? AND state = 'finished' AND uuid != ?
            ORDER BY finished_at DESC, rowid DESC LIMIT ?`).all(run.job, uuid, limit - 1) as { outcome: string }[])
        : [];
      const giveUp = Number.isFinite(limit) && previous.length === limit - 1
        && previous.every((row) => (JSON.parse(row.outcome) as Outcome).kind === 'worker-lost');
      const text = giveUp ? `not queued again, its last ${limit} runs all lost their worker (execute it to try again): ${message}` : message;
      this.finishLocked(uuid, { kind: 'worker-lost', message: limitMessage(text) }, now, consoleLines);
      const job = this.getJob(run.job);
      if (giveUp || job === null || this.isDropped(job.platform)) return null;
      return this.enqueueLocked(job.name, job.platform, true, now);
    });
  }

  /** Cancels a queued run. Returns false if it was not queued. */
  cancelQueued(uuid: string, message: string, now: number): boolean {
    return this.atomically(() => {
      if (this.sql(`SELECT 1 FROM runs WHERE uuid = ? AND state = 'queued'`).get(uuid) === undefined) return false;
      this.finishLocked(uuid, { kind: 'cancelled', message }, now);
      return true;
    });
  }

  getRun(uuid: string): RunSummary | null {
    const row = this.sql('SELECT * FROM runs WHERE uuid = ?').get(uuid) as RunRow | undefined;
    return row === undefined ? null : toRun(row);
  }

  runDetail(uuid: string): RunDetail | null {
    const row = this.sql('SELECT * FROM runs WHERE uuid = ?').get(uuid) as RunRow | undefined;
    if (row === undefined) return null;
    return {
      ...toRun(row),
      script: row.script,
      source: row.source === null ? null : (JSON.parse(row.source) as JobSource),
      consoleLines: row.console_lines,
      artifacts: this.artifactsOf(uuid),
      env: row.env === null ? {} : (JSON.parse(row.env) as Env),
      secretKeys: row.secret_keys === null ? [] : (JSON.parse(row.secret_keys) as string[]),
      deliveries: this.deliveriesOf(uuid),
    };
  }

  // ---- webhook deliveries ---------------------------------------------------------------------------

  /** Records deliveries of one event (called from onRunEvent, inside the event's transaction). */
  addDeliveries(uuid: string, event: RunEvent, urls: string[], body: string, now: number): void {
    const insert = this.sql(`INSERT INTO deliveries (run_uuid, event, url, body, next_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`);
    for (const url of urls) insert.run(uuid, event, url, body, now, now);
  }

  /**
   * The deliveries to try next: per URL, its oldest pending one (a URL's events go out in order),
   * each with the time it is due.
   */
  deliveryHeads(limit = 1000): PendingDelivery[] {
    return (this.sql(`SELECT * FROM deliveries WHERE id IN (SELECT MIN(id) FROM deliveries WHERE state = 'pending' GROUP BY url)
      ORDER BY next_at, id LIMIT ?`).all(limit) as DeliveryRow[])
      .map((row) => ({ id: row.id, run: row.run_uuid, event: row.event, url: row.url, body: row.body, attempts: row.attempts, nextAt: row.next_at }));
  }

  /** The result of one attempt: delivered, failed for good, or to be tried again at `retryAt`. */
  deliveryAttempt(id: number, result: { state: Delivery['state']; error: string | null; retryAt: number }, now: number): void {
    this.sql(`UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?, next_at = ?, updated_at = ? WHERE id = ?`)
      .run(result.state, result.error, result.retryAt, now, id);
  }

  deliveriesOf(uuid: string): Delivery[] {
    return (this.sql('SELECT * FROM deliveries WHERE run_uuid = ? ORDER BY id').all(uuid) as DeliveryRow[])
      .map((row) => ({ url: row.url, event: row.event, state: row.state, attempts: row.attempts, lastError: row.last_error, updatedAt: row.updated_at }));
  }

  runsOfJob(name: string, limit: number): RunSummary[] {
    return (this.sql('SELECT * FROM runs WHERE job = ? ORDER BY queued_at DESC, rowid DESC LIMIT ?').all(name, limit) as RunRow[]).map(toRun);
  }

  /** The newest run, optionally of one job and/or platform. */
  latestRun(job: string | null, platform: string | null): RunSummary | null {
    const row = this.sql(`SELECT * FROM runs WHERE (@job IS NULL OR job = @job) AND (@platform IS NULL OR platform = @platform)
      ORDER BY queued_at DESC, rowid DESC LIMIT 1`).get({ job, platform }) as RunRow | undefined;
    return row === undefined ? null : toRun(row);
  }

  /** One page of a job's runs, newest first; `failedOnly` keeps finished runs that did not succeed. */
  runsOfJobPage(name: string, limit: number, offset: number, failedOnly: boolean): { runs: RunSummary[]; total: number } {
    const where = `job = @name${failedOnly ? ` AND state = 'finished' AND NOT ${SUCCESS_SQL}` : ''}`;
    const total = (this.sql(`SELECT count(*) AS n FROM runs WHERE ${where}`).get({ name }) as { n: number }).n;
    const rows = this.sql(`SELECT * FROM runs WHERE ${where} ORDER BY queued_at DESC, rowid DESC LIMIT @limit OFFSET @offset`)
      .all({ name, limit, offset }) as RunRow[];
    return { runs: rows.map(toRun), total };
  }

  /** The newest finished run of a job, or its newest successful one (optionally on one platform). */
  latestFinished(job: string, successOnly: boolean, platform: string | null = null): RunSummary | null {
    const row = this.sql(`SELECT * FROM runs WHERE job = @job AND state = 'finished' ${successOnly ? `AND ${SUCCESS_SQL}` : ''}
      AND (@platform IS NULL OR platform = @platform) ORDER BY finished_at DESC, rowid DESC LIMIT 1`).get({ job, platform }) as RunRow | undefined;
    return row === undefined ? null : toRun(row);
  }

  /** Every artifact with this SHA-256, with the run that produced it, newest first. */
  artifactsWithHash(sha256: string): { run: RunSummary; path: string; size: number }[] {
    const rows = this.sql(`SELECT r.*, a.path AS artifact_path, a.size AS artifact_size FROM artifacts a JOIN runs r ON r.uuid = a.run_uuid
      WHERE a.sha256 = ? ORDER BY r.finished_at DESC, r.rowid DESC LIMIT 1000`).all(sha256) as (RunRow & { artifact_path: string; artifact_size: number })[];
    return rows.map((row) => ({ run: toRun(row), path: row.artifact_path, size: row.artifact_size }));
  }

  artifact(uuid: string, path: string): Artifact | null {
    return (this.sql('SELECT path, size, sha256 FROM artifacts WHERE run_uuid = ? AND path = ?').get(uuid, path) as Artifact | undefined) ?? null;
  }

  runsInState(state: RunState): RunSummary[] {
    // The state is written into the SQL, not bound: SQLite uses a partial index (runs_queue,
    // runs_running) only when the query states its condition, and a probe of the few queued or
    // running runs is what info and every start need, not a scan of the whole history.
    return (this.sql(RUNS_IN_STATE[state]).all() as RunRow[]).map(toRun);
  }

  artifactsOf(uuid: string): Artifact[] {
    return this.sql('SELECT path, size, sha256 FROM artifacts WHERE run_uuid = ? ORDER BY path').all(uuid) as Artifact[];
  }

  // ---- platforms --------------------------------------------------------------------------------------

  isDropped(platform: string): boolean {
    return this.sql('SELECT 1 FROM dropped_platforms WHERE platform = ?').get(platform) !== undefined;
  }

  droppedPlatforms(): string[] {
    return (this.sql('SELECT platform FROM dropped_platforms ORDER BY platform').all() as { platform: string }[]).map((row) => row.platform);
  }

  /** Stops queuing for a platform; what was waiting in its queue is recorded as cancelled. */
  dropPlatform(platform: string, now: number): { already: boolean; cancelled: string[] } {
    return this.atomically(() => {
      const already = this.isDropped(platform);
      this.sql('INSERT OR IGNORE INTO dropped_platforms (platform) VALUES (?)').run(platform);
      const waiting = (this.sql(`SELECT uuid FROM runs WHERE platform = ? AND state = 'queued' ORDER BY position`).all(platform) as { uuid: string }[])
        .map((row) => row.uuid);
      for (const uuid of waiting) this.finishLocked(uuid, { kind: 'cancelled', message: `platform ${platform} dropped` }, now);
      return { already, cancelled: waiting };
    });
  }

  undropPlatform(platform: string): boolean {
    return this.sql('DELETE FROM dropped_platforms WHERE platform = ?').run(platform).changes > 0;
  }
}

/** A refusal the user can act on (unknown job, duplicate name, ...): its message is shown as is. */
export class StoreError extends Error {}
