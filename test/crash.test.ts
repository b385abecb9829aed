/**
 * The crash proof: while jobs are queued, scheduled and running, the server is killed with SIGKILL
 * at random moments and started again, round after round. At the end every job has run to
 * completion, each completed run is recorded exactly once (one success per job, no run twice), no
 * schedule is lost, and the database passes PRAGMA integrity_check. The figures are printed.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type Proc, type ServerHandle, json, killAll, ok, startServer, startWorker, tempDir, waitFor,
} from './harness.js';
import { prng } from './unit-helpers.js';

const ROUNDS = Number(process.env.BUILDER_CRASH_ROUNDS ?? 50);
const JOBS = 12;

interface RunRow { uuid: string; job: string; state: string; status: string; outcome: { kind: string } | null }

describe('SIGKILL at random moments', () => {
  let dir: string;
  let state: string;
  let server: ServerHandle;
  let address = '127.0.0.1:0';
  const workers: Proc[] = [];
  const seed = Number(process.env.BUILDER_CRASH_SEED ?? Date.now() % 1_000_000);
  const random = prng(seed);

  beforeAll(() => {
    dir = tempDir();
    state = path.join(dir, 'state');
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const restartWorkers = (): void => {
    for (let i = 0; i < 2; i++) {
      const current = workers[i];
      // A worker whose server died mid-job exits 3; an idle one keeps dialling.
      if (current === undefined || current.exited !== null) workers[i] = startWorker(server, ['--loop'], PLATFORM, dir);
    }
  };

  it(`loses no job, run or schedule over ${ROUNDS} rounds`, async () => {
    server = await startServer(state);
    address = server.address;
    const script = path.join(dir, 'job.sh');
    fs.writeFileSync(script, 'echo "start $BUILDER_JOB"\nsleep 0.3\necho "end $BUILDER_JOB" > done.txt\n');
    const periods: Record<string, string> = {};
    for (let i = 0; i < JOBS; i++) {
      // A third scheduled hourly, the rest run once: both kinds must survive.
      const args = i % 3 === 0 ? ['--every', '1h'] : ['--period', 'never'];
      periods[`job-${i}`] = i % 3 === 0 ? 'every 1h' : 'never';
      await ok(server, ['schedule', `job-${i}`, PLATFORM, script, ...args]);
    }
    restartWorkers();

    let killedWhileRunning = 0;
    for (let round = 0; round < ROUNDS; round++) {
      await new Promise((resolve) => setTimeout(resolve, 30 + Math.floor(random() * 400)));
      const info = await json<{ running: unknown[] }>(server, ['info']).catch(() => ({ running: [] }));
      if (info.running.length > 0) killedWhileRunning += 1;
      server.proc.kill('SIGKILL');
      await server.proc.exit;
      server = await startServer(state, [], address);
      restartWorkers();
    }

    // Let everything finish. Jobs that lost five runs in a row are not queued again by themselves
    // (so that a worker-killing job cannot block its platform): execute those, as a user would.
    const runsOf = async (job: string): Promise<RunRow[]> => json<RunRow[]>(server, ['results', job, '--limit', '1000']);
    const done = await waitFor('every job to succeed once', async () => {
      let all = true;
      for (let i = 0; i < JOBS; i++) {
        const runs = await runsOf(`job-${i}`);
        if (runs.some((run) => run.status === 'success')) continue;
        all = false;
        if (!runs.some((run) => run.state !== 'finished')) await ok(server, ['execute', `job-${i}`]);
      }
      return all || null;
    }, 120_000);
    expect(done).toBe(true);

    let runs = 0;
    let lost = 0;
    const seen = new Set<string>();
    for (let i = 0; i < JOBS; i++) {
      const list = await runsOf(`job-${i}`);
      runs += list.length;
      lost += list.filter((run) => run.outcome?.kind === 'worker-lost').length;
      for (const run of list) {
        expect(seen.has(run.uuid), `run ${run.uuid} listed twice`).toBe(false);
        seen.add(run.uuid);
      }
      expect(list.filter((run) => run.status === 'success'), `job-${i} succeeded exactly once`).toHaveLength(1);
      expect(list.every((run) => run.status === 'success' || run.outcome?.kind === 'worker-lost' || run.state !== 'finished'),
        `job-${i}: every other run was lost to a crash`).toBe(true);
    }
    const info = await json<{ jobs: { name: string; period: { kind: string; seconds?: number } }[] }>(server, ['info']);
    expect(Object.fromEntries(info.jobs.map((job) => [job.name, job.period.kind === 'never' ? 'never' : `every ${(job.period.seconds ?? 0) / 3600}h`])))
      .toEqual(periods);

    server.proc.kill('SIGKILL');
    await server.proc.exit;
    const db = new Database(path.join(state, 'builder.sqlite'), { readonly: true });
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    const duplicates = db.prepare('SELECT uuid, count(*) AS n FROM runs GROUP BY uuid HAVING n > 1').all();
    db.close();
    expect(duplicates).toEqual([]);
    process.stdout.write(`crash test (seed ${seed}): ${ROUNDS} SIGKILL rounds survived (${killedWhileRunning} with runs in flight); `
      + `${JOBS} jobs each succeeded exactly once over ${runs} runs, ${lost} lost to crashes and queued again; integrity_check ok\n`);
  }, 600_000);
});
