/**
 * scheduler — a real server holding N schedules (100,000; quick: 10,000) and nothing queued: an
 * established farm between runs.
 *
 * (a) Idle cost: the server's CPU time over an idle window (30 s; quick: 5 s) in which nothing falls
 *     due, as a share of one core. Target: under 1 % — one timer armed for the earliest due time,
 *     no polling, so an idle server should use next to nothing whatever the number of schedules.
 * (b) Lateness: right after the idle window, 1 % of the schedules fall due one by one (spread over 2
 *     s; full: 10 s, so 100 a second, a hundred times what 100,000 mostly daily schedules average)
 *     and 1 % more all at the same instant (a cron line many jobs share), half of each `every`, half
 *     cron. For each, two delays after its due time: until its run's queued_at (the time the
 *     scheduler stamps when it wakes, read from the database once the server has stopped), and until
 *     the server's `queue` log line for the run, written once the transaction that queued it has
 *     committed and just before the dispatcher may hand it out. Target for the p99 of both: under
 *     50 ms. Reported too: the second delay for the schedules due one by one, and for the last run of
 *     the burst; the server's CPU time in the due window per run queued.
 * (c) The server's resident memory with the N schedules loaded, and its peak (reported).
 *
 * The state directory is prepared before the server starts, through the Store class (so the schema
 * and its migrations are the server's own) and then plain INSERTs in one transaction. Not through
 * the protocol: a `schedule` request queues the job's first run at once, so N requests would leave N
 * runs queued (not the idle farm we want to measure) and every due schedule would find its job
 * "already queued"; they would also fix each due time at "now + period", while this benchmark needs
 * due times to the millisecond. It takes a fraction of a second instead of tens of seconds.
 */
import Database from 'better-sqlite3';
import path from 'node:path';
import fs from 'node:fs';
import type { JobSource, Period } from '../protocol/types.js';
import { Store, summariseSource } from '../lib/store.js';
import { type BenchOptions, type BenchServer, type Result, cpuMsOf, limit, memoryOf, percentile, report, startServer } from './common.js';

export const PLATFORMS = ['linux-x64', 'linux-arm64', 'freebsd-x64', 'macos-arm64', 'windows-x64'];

/** Periods as a farm has them: mostly daily, some hourly or weekly, a third cron lines. */
const FAR_PERIODS: Period[] = [
  { kind: 'every', seconds: 86400 }, { kind: 'every', seconds: 86400 }, { kind: 'every', seconds: 3600 },
  { kind: 'every', seconds: 7 * 86400 }, { kind: 'cron', expression: '0 3 * * *' }, { kind: 'cron', expression: '*/15 * * * *' },
  { kind: 'cron', expression: '30 2 * * 1-5' },
];

export interface ScheduleSpec {
  nextDue: number;
  period: Period;
}

export function jobName(i: number): string {
  return `job-${String(i).padStart(7, '0')}`;
}

/**
 * Writes `count` jobs into an open database that has the server's schema, in one transaction: a mix
 * of scripts and templates over five platforms, some with required labels, an environment or secrets,
 * as `schedule` would have stored them. `spec(i)` gives each its due time and period.
 */
export function insertSchedules(db: Database.Database, count: number, createdAt: number, spec: (i: number) => ScheduleSpec): void {
  const job = db.prepare(`INSERT INTO jobs (name, platform, source, source_summary, period, next_due, timeout_s, keep_runs, owner, requires, env, notify, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
  const secret = db.prepare('INSERT INTO job_secrets (job, key, value) VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 0; i < count; i++) {
      const name = jobName(i);
      const { nextDue, period } = spec(i);
      const source: JobSource = i % 10 === 0
        ? { kind: 'template', template: 'debian-package', vars: { repo: `https://git.example.org/project-${i % 700}.git`, branch: 'main' } }
        : { kind: 'script', script: `git clone --depth 1 https://git.example.org/project-${i % 700}.git src\ncd src\nmake -j4 test\n` };
      job.run(name, PLATFORMS[i % PLATFORMS.length], JSON.stringify(source), JSON.stringify(summariseSource(source)), JSON.stringify(period), nextDue,
        i % 4 === 0 ? 7200 : null, i % 20 === 0 ? 5000 : null, i % 3 === 0 ? 'ci-admin' : null,
        i % 10 === 3 ? '["docker"]' : null, i % 5 === 1 ? '{"CI":"1","LANG":"C.UTF-8"}' : null, null, createdAt);
      if (i % 20 === 7) secret.run(name, 'DEPLOY_KEY', `secret-${i}`);
    }
  })();
}

/** Creates a state directory holding only the server's empty schema; returns its database, open. */
export function freshState(stateDir: string): Database.Database {
  fs.mkdirSync(stateDir, { recursive: true });
  const file = path.join(stateDir, 'builder.sqlite');
  new Store(file).close();
  const db = new Database(file);
  // The data is scratch until the benchmark starts the server: no need to wait for the disk.
  db.pragma('synchronous = OFF');
  db.pragma('cache_size = -262144');
  return db;
}

/** Collects the time of each `queue` log line (job name → ms), as the server writes them. */
function queueLogTimes(server: BenchServer): Map<string, number> {
  const times = new Map<string, number>();
  let partial = '';
  server.child.stderr?.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const match = /^(\S+) queue run=\S+ job=(\S+)/.exec(line);
      if (match !== null) times.set(match[2]!, Date.parse(match[1]!));
    }
  });
  return times;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

export async function schedulerBench({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const count = quick ? 10_000 : 100_000;
  const idleMs = quick ? 5_000 : 30_000;
  const spread = count / 100;
  const burst = count / 100;
  const windowMs = quick ? 2_000 : 10_000;
  // Time the server may take to start and settle (its start-up garbage collected) before the idle
  // window opens; start-up itself is the startup benchmark's business.
  const startAllowanceMs = quick ? 3_000 : 5_000;
  const settleMs = 1_000;

  const stateDir = path.join(tmp, 'state');
  const db = freshState(stateDir);
  const prepared = Date.now();
  const firstDue = prepared + startAllowanceMs + settleMs + idleMs + 200;
  const lastDue = firstDue + windowMs;
  const burstAt = firstDue + Math.round(windowMs / 2);
  // Schedules 0..spread-1 fall due one by one over the window, the next `burst` all at burstAt,
  // the rest (most) from a minute after the window up to a week later.
  const due = new Map<string, number>();
  insertSchedules(db, count, prepared - 86400_000, (i) => {
    if (i < spread + burst) {
      const nextDue = i < spread ? Math.round(firstDue + ((i + Math.random()) * windowMs) / spread) : burstAt;
      due.set(jobName(i), nextDue);
      return { nextDue, period: i % 2 === 0 ? { kind: 'every', seconds: 86400 } : { kind: 'cron', expression: '0 3 * * *' } };
    }
    const period = FAR_PERIODS[i % FAR_PERIODS.length]!;
    const step = period.kind === 'every' ? period.seconds * 1000 : 3600_000;
    return { nextDue: Math.round(lastDue + 60_000 + Math.random() * step), period };
  });
  db.close();
  const prepareMs = Date.now() - prepared;

  const server = await startServer(stateDir);
  const logged = queueLogTimes(server);
  const pid = server.child.pid!;
  let idleCpuMs: number;
  let idleRssMb: number;
  let measuredIdleMs: number;
  let windowCpuMs: number;
  let peakMb: number;
  try {
    const listening = Date.now();
    if (listening + settleMs + idleMs > firstDue - 100) {
      throw new Error(`the server took ${listening - prepared - prepareMs} ms to start with ${count} schedules; this benchmark allows ${startAllowanceMs} ms`);
    }
    await sleep(settleMs);
    const idleStart = Date.now();
    const cpuBefore = cpuMsOf(pid);
    await sleep(idleMs);
    idleCpuMs = cpuMsOf(pid) - cpuBefore;
    measuredIdleMs = Date.now() - idleStart;
    idleRssMb = memoryOf(pid).rssMb;
    if (logged.size > 0) throw new Error(`${logged.size} runs were queued during the idle window, before anything was due`);
    // The due window, and a little more for the last runs to be queued.
    await sleep(lastDue + 500 - Date.now());
    windowCpuMs = cpuMsOf(pid) - cpuBefore - idleCpuMs;
    peakMb = memoryOf(pid).peakMb;
  } finally {
    await server.stop();
  }

  // queued_at of every run, from the database the server has closed.
  const check = new Database(path.join(stateDir, 'builder.sqlite'), { readonly: true });
  const runs = check.prepare('SELECT job, queued_at FROM runs').all() as { job: string; queued_at: number }[];
  check.close();
  const queuedAt = new Map<string, number>();
  for (const run of runs) {
    if (queuedAt.has(run.job)) throw new Error(`job ${run.job} was queued twice`);
    if (!due.has(run.job)) throw new Error(`job ${run.job} was queued but was not due`);
    queuedAt.set(run.job, run.queued_at);
  }
  const stamped: number[] = [];
  const committed: number[] = [];
  const alone: number[] = [];
  let burstDone = 0;
  for (const [job, at] of due) {
    const queued = queuedAt.get(job);
    const log = logged.get(job);
    if (queued === undefined || log === undefined) throw new Error(`job ${job}, due at ${new Date(at).toISOString()}, was never queued`);
    stamped.push(queued - at);
    committed.push(log - at);
    if (at === burstAt) burstDone = Math.max(burstDone, log - at);
    else alone.push(log - at);
  }
  const tag = `${count}-schedules`;
  return [
    report(`scheduler-prepare-${tag}`, prepareMs, 'ms'),
    limit(`scheduler-idle-cpu-${tag}`, (idleCpuMs / measuredIdleMs) * 100, '% of a core', 1),
    report(`scheduler-idle-rss-${tag}`, idleRssMb, 'MB'),
    limit(`scheduler-lateness-queued-at-p99-${tag}`, percentile(stamped, 99), 'ms', 50),
    report(`scheduler-lateness-queued-at-max-${tag}`, Math.max(...stamped), 'ms'),
    limit(`scheduler-lateness-committed-p99-${tag}`, percentile(committed, 99), 'ms', 50),
    report(`scheduler-lateness-committed-p99-one-at-a-time-${tag}`, percentile(alone, 99), 'ms'),
    report(`scheduler-burst-of-${burst}-all-committed-after-${tag}`, burstDone, 'ms'),
    report(`scheduler-cpu-per-queued-run-${tag}`, windowCpuMs / due.size, 'ms'),
    report(`scheduler-peak-rss-${tag}`, peakMb, 'MB'),
  ];
}
