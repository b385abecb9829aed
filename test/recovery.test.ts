/**
 * Nothing is lost: a worker killed mid-run, a worker that goes silent, and a server killed with
 * SIGKILL while runs are queued and running. Each scenario has its own server and state directory.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Proc, type RunJson, type ServerHandle, PLATFORM, json, killAll, ok, scheduleScript, show, startProcess, startServer, startWorker, tempDir, waitFor,
  waitForState,
} from './harness.js';

const dirs: string[] = [];
function scratch(): string {
  const dir = tempDir();
  dirs.push(dir);
  return dir;
}

afterEach(async () => {
  await killAll();
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

/** A script that hangs the first time it runs (until killed) and succeeds the second time. */
function hangOnce(dir: string, name: string): string {
  const marker = path.join(dir, `${name}.ran-once`);
  return `echo "attempt"\nif [ ! -e ${marker} ]; then touch ${marker}; exec sleep 60; fi\necho "second attempt succeeds"\n`;
}

/** Schedules a hangOnce job, starts a worker, and returns once the job is hanging in its first run. */
async function startHanging(server: ServerHandle, dir: string, name: string): Promise<{ first: string; worker: Proc }> {
  const first = await scheduleScript(server, dir, name, hangOnce(dir, name));
  const worker = startWorker(server, [], PLATFORM, dir);
  await waitForState(server, first, 'running');
  await waitFor('the job to start', () => fs.existsSync(path.join(dir, `${name}.ran-once`)));
  return { first, worker };
}

describe('lost workers', () => {
  it('a worker killed with SIGKILL mid-run: recorded as worker lost, the job runs again and succeeds', async () => {
    const dir = scratch();
    const server = await startServer(path.join(dir, 'state'));
    const { first, worker } = await startHanging(server, dir, 'victim');
    worker.kill('SIGKILL');

    const lost = await waitForState(server, first, 'finished');
    expect(lost.outcome?.kind).toBe('worker-lost');
    expect(lost.outcome?.message).toMatch(/^worker \S+ disconnected/);
    const runs = await json<RunJson[]>(server, ['results', 'victim']);
    expect(runs).toHaveLength(2);
    const again = runs[0] as RunJson;
    expect(again.uuid).not.toBe(first);
    expect(again.state).toBe('queued');

    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const done = await show(server, again.uuid);
    expect(done.status).toBe('success');
    expect(await ok(server, ['observe', again.uuid, '--raw'])).toBe('attempt\nsecond attempt succeeds\n');
  });

  it('a worker that stops sending heartbeats (SIGSTOP) is lost after three missed beats', async () => {
    const dir = scratch();
    const server = await startServer(path.join(dir, 'state'));
    const { first, worker } = await startHanging(server, dir, 'frozen');
    worker.kill('SIGSTOP');
    const lost = await waitForState(server, first, 'finished', 20_000);
    expect(lost.outcome).toEqual({ kind: 'worker-lost', message: expect.stringMatching(/^no heartbeat from \S+ for 3s$/) });
    worker.kill('SIGKILL');
    const runs = await json<RunJson[]>(server, ['results', 'frozen']);
    expect(runs[0]?.state).toBe('queued');
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    expect((await show(server, runs[0]?.uuid ?? '')).status).toBe('success');
  });
});

describe('a server that stops answering (a partition)', () => {
  it('makes the worker stop its job after three unanswered heartbeats; the job runs again later', async () => {
    const dir = scratch();
    const server = await startServer(path.join(dir, 'state'));
    const { first, worker } = await startHanging(server, dir, 'partitioned');
    server.proc.kill('SIGSTOP');
    const exited = await worker.exit;
    server.proc.kill('SIGCONT');
    expect(exited.code).toBe(3);
    expect(worker.stderr).toContain('no answer from the server for 3s; stopping partitioned');
    const lost = await waitForState(server, first, 'finished');
    expect(lost.outcome?.kind).toBe('worker-lost');
    const runs = await json<RunJson[]>(server, ['results', 'partitioned']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    expect((await show(server, runs[0]?.uuid ?? '')).status).toBe('success');
  });
});

describe('a worker started before its server', () => {
  it('keeps retrying with backoff, says why, and runs the job once the server is up', async () => {
    const dir = scratch();
    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    const worker = startWorker({ address }, [], PLATFORM, dir);
    await waitFor('the worker to report that it cannot connect', () => worker.stderr.includes('retrying in 1.0s'));
    expect(worker.stderr).toContain(`builder-worker: cannot reach the server at ${address} (ECONNREFUSED); retrying in 0.5s (--remote or BUILDER_REMOTE sets the address)\n`);
    const server = await startServer(path.join(dir, 'state'), [], address);
    const uuid = await scheduleScript(server, dir, 'late-server', 'echo finally\n');
    expect((await worker.exit).code).toBe(0);
    expect((await show(server, uuid)).status).toBe('success');
    // One line per event on the server's stderr.
    for (const event of ['connect', 'hello', 'schedule', 'queue', 'dispatch', 'finish', 'disconnect']) {
      expect(server.proc.stderr).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z ${event} `, 'm'));
    }
    expect(server.proc.stderr).toMatch(new RegExp(`Z finish run=${uuid} job=late-server worker=\\S+ outcome="exited 0" artifacts=0 lines=1$`, 'm'));
  });
});

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

describe('one server per state directory', () => {
  it('a second server on the same state directory refuses to start and changes nothing', async () => {
    const dir = scratch();
    const state = path.join(dir, 'state');
    const server = await startServer(state);
    const uuid = await scheduleScript(server, dir, 'busy', 'sleep 2\necho done\n');
    const worker = startWorker(server, [], PLATFORM, dir);
    await waitForState(server, uuid, 'running');
    const second = startProcess('builder-server.js', ['--listen', '127.0.0.1:0', '--state-dir', state]);
    expect((await second.exit).code).toBe(2);
    expect(second.stderr).toBe(`builder-server: the state database ${path.join(state, 'builder.sqlite')} is in use by another builder-server; stop it, or give this one another --state-dir\n`);
    expect((await worker.exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    expect(await json<RunJson[]>(server, ['results', 'busy'])).toHaveLength(1);
  });
});

describe('a job that keeps killing its worker', () => {
  it('is not queued again after five lost runs in a row', async () => {
    const dir = scratch();
    const server = await startServer(path.join(dir, 'state'));
    await scheduleScript(server, dir, 'killer', 'kill -KILL $PPID\nsleep 5\n');
    for (let i = 1; i <= 5; i++) {
      const worker = startWorker(server, [], PLATFORM, dir);
      expect((await worker.exit).signal).toBe('SIGKILL');
      await waitFor(`lost run ${i} to be recorded`, async () => {
        const runs = await json<RunJson[]>(server, ['results', 'killer']);
        return runs.filter((run) => run.outcome?.kind === 'worker-lost').length === i ? runs : null;
      });
    }
    const runs = await json<RunJson[]>(server, ['results', 'killer']);
    expect(runs).toHaveLength(5);
    expect(runs[0]?.outcome?.message).toMatch(/^not queued again, its last 5 runs all lost their worker \(execute it to try again\): worker \S+ disconnected/);
    expect(runs.slice(1).every((run) => !run.outcome?.message?.startsWith('not queued again'))).toBe(true);
    const info = await json<{ queues: Record<string, unknown[]> }>(server, ['info']);
    expect(info.queues[PLATFORM]).toBeUndefined();
  });
});

describe('server killed with SIGKILL', () => {
  it('loses no job, no schedule and no queued run; the interrupted run is queued again and completes', async () => {
    const dir = scratch();
    const state = path.join(dir, 'state');
    let server = await startServer(state);
    const running = await scheduleScript(server, dir, 'long', hangOnce(dir, 'long'), ['--every', '1d']);
    const queuedB = await scheduleScript(server, dir, 'job-b', 'echo b > b.txt\n', ['--cron', '0 3 * * *']);
    const queuedC = await scheduleScript(server, dir, 'job-c', 'echo c\n', ['--period', 'never']);
    const worker = startWorker(server, [], PLATFORM, dir);
    await waitForState(server, running, 'running');
    await waitFor('the job to start', () => fs.existsSync(path.join(dir, 'long.ran-once')));
    const before = await json<{ jobs: unknown[] }>(server, ['info']);

    server.proc.kill('SIGKILL');
    await server.proc.exit;
    // The worker notices the lost connection, kills its job and exits non-zero.
    expect((await worker.exit).code).toBe(3);

    server = await startServer(state, [], server.address);
    expect(server.proc.stderr).toMatch(new RegExp(`recover run=${running} job=long requeued=`));
    const after = await json<{ jobs: unknown[]; queues: Record<string, { uuid: string; job: string }[]> }>(server, ['info']);
    expect(after.jobs).toEqual(before.jobs);
    const queue = after.queues[PLATFORM] ?? [];
    expect(queue.map((entry) => entry.job)).toEqual(['long', 'job-b', 'job-c']);
    expect(queue.slice(1).map((entry) => entry.uuid)).toEqual([queuedB, queuedC]);
    const interrupted = await show(server, running);
    expect(interrupted.outcome).toEqual({ kind: 'worker-lost', message: 'the server stopped while the run was in progress' });

    const loop = startWorker(server, ['--loop'], PLATFORM, dir);
    await waitForState(server, queuedC, 'finished');
    loop.kill('SIGTERM');
    for (const name of ['long', 'job-b', 'job-c']) {
      const runs = await json<RunJson[]>(server, ['results', name]);
      const successes = runs.filter((run) => run.status === 'success');
      expect(successes, `${name} completed exactly once`).toHaveLength(1);
    }
    const b = await show(server, queuedB);
    expect(b.artifacts).toEqual([{ path: 'b.txt', size: 2, sha256: expect.any(String) }]);
  });
});
