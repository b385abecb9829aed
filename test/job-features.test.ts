/**
 * Jobs that talk back and fit in (issue 7), end to end through the real server, workers and client:
 * labels, environment and secrets, progress, and worker health. Webhooks are in webhooks.test.ts.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, ROOT, type ServerHandle, client, json, killAll, ok, scheduleScript, show, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

interface QueueJson { uuid: string; job: string; blocked?: string | null }
interface InfoJson {
  jobs: { name: string; requires?: string[]; env?: Record<string, string>; secretKeys?: string[] }[];
  queues: Record<string, QueueJson[]>;
  running: { uuid: string; progress?: { percent: number | null; message: string } | null }[];
}
interface WorkerJson {
  id: string; status: string; labels: string[]; run: string | null; reason?: string | null;
  progress?: { percent: number | null; message: string } | null;
}

let dir: string;

beforeAll(() => {
  dir = tempDir();
});

afterAll(async () => {
  await killAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function getJson<T>(url: string): Promise<T> {
  const response = await fetch(url, { headers: { accept: 'application/json' } });
  if (response.status !== 200) throw new Error(`GET ${url}: ${response.status}`);
  return (await response.json()) as T;
}

describe('labels', () => {
  let server: ServerHandle;
  beforeAll(async () => {
    server = await startServer(path.join(dir, 'labels-state'), ['--http', '127.0.0.1:0']);
  });

  it('a job goes only to a worker with all its labels; info says why it waits, and it holds up no other job', async () => {
    const needs = await scheduleScript(server, dir, 'needs-docker', 'echo on a docker host\n', ['--requires', 'docker,big-disk', '--period', 'never']);
    const plain = await scheduleScript(server, dir, 'plain', 'echo plain\n', ['--period', 'never']);
    const other = await scheduleScript(server, dir, 'elsewhere', 'true\n', ['--period', 'never']);
    await ok(server, ['schedule', 'elsewhere', 'other-platform', path.join(dir, 'elsewhere.sh'), '--replace', '--period', 'never']);
    expect(other).toMatch(/^[0-9a-f-]{36}$/);

    // A worker without labels takes the plain job, queued behind the one it cannot take.
    startWorker(server, ['--loop'], PLATFORM, dir);
    expect((await waitForState(server, plain, 'finished')).outcome).toEqual({ kind: 'exited', code: 0 });
    const [unlabelled] = await json<WorkerJson[]>(server, ['workers']);
    const info = await json<InfoJson>(server, ['info']);
    expect(info.jobs.find((job) => job.name === 'needs-docker')?.requires).toEqual(['big-disk', 'docker']);
    expect(info.queues[PLATFORM]).toEqual([expect.objectContaining({
      uuid: needs, job: 'needs-docker', blocked: `no connected ${PLATFORM} worker has all of the labels big-disk,docker (${unlabelled?.id} lacks big-disk,docker)`,
    })]);
    expect(info.queues['other-platform']).toEqual([expect.objectContaining({ job: 'elsewhere', blocked: 'no other-platform worker is connected' })]);
    const text = await ok(server, ['info']);
    expect(text).toContain(`blocked: no connected ${PLATFORM} worker has all of the labels big-disk,docker (${unlabelled?.id} lacks big-disk,docker)`);
    expect(text).toMatch(/needs-docker\s+test-platform\s+big-disk,docker\s+never/);
    // The web view's queue says the same.
    const queue = await getJson<{ queues: Record<string, QueueJson[]> }>(`${server.web}/queue`);
    expect(queue.queues[PLATFORM]?.[0]?.blocked).toBe(info.queues[PLATFORM]?.[0]?.blocked);
    const page = await (await fetch(`${server.web}/queue`)).text();
    expect(page).toContain('blocked</span> no connected test-platform worker has all of the labels big-disk,docker');

    // One of the two labels is not enough.
    startWorker(server, ['--loop', '--labels', 'docker'], PLATFORM, dir);
    const half = await waitFor('the second worker', async () => (await json<WorkerJson[]>(server, ['workers'])).find((w) => w.labels.join() === 'docker'));
    const again = await json<InfoJson>(server, ['info']);
    expect(again.queues[PLATFORM]?.[0]?.blocked).toBe(`no connected ${PLATFORM} worker has all of the labels big-disk,docker `
      + `(${unlabelled?.id} lacks big-disk,docker; ${half.id} lacks big-disk)`);
    expect((await show(server, needs)).state).toBe('queued');

    // A worker with both (and more) takes it.
    startWorker(server, ['--loop', '--labels', 'fast,big-disk,docker'], PLATFORM, dir);
    const run = await waitForState(server, needs, 'finished');
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    const workers = await json<WorkerJson[]>(server, ['workers']);
    expect(workers.find((w) => w.id === run.worker)?.labels).toEqual(['fast', 'big-disk', 'docker']);
  });

  it('refuses an invalid label in one line, changing nothing', async () => {
    fs.writeFileSync(path.join(dir, 'bad.sh'), 'true\n');
    const result = await client(server, ['schedule', 'bad-label', PLATFORM, path.join(dir, 'bad.sh'), '--requires', 'ok,not ok']);
    expect(result).toEqual({ code: 1, stdout: '', stderr: "builder-client: --requires: invalid label 'not ok': labels are 1-64 characters of A-Z a-z 0-9 . _ : = -\n" });
    expect((await json<InfoJson>(server, ['info'])).jobs.map((job) => job.name)).not.toContain('bad-label');
  });
});

describe('environment and secrets', () => {
  let server: ServerHandle;
  const SECRET = 'hunter2-Very-Secret';
  const SECOND_LINE = 'second-line-of-the-key';
  beforeAll(async () => {
    server = await startServer(path.join(dir, 'env-state'), ['--http', '127.0.0.1:0']);
    startWorker(server, ['--loop'], PLATFORM, dir);
  });

  it('sets --env-file, --env and --secret-env for the job; shows the variables, never the secret', async () => {
    const envFile = path.join(dir, 'job.env');
    fs.writeFileSync(envFile, '# deployment settings\nSTAGE=staging\n\nexport REGION=eu-west\nGREETING=from the file\n');
    const secretFile = path.join(dir, 'api.key');
    fs.writeFileSync(secretFile, `${SECRET}\n`);
    const multiFile = path.join(dir, 'multi.key');
    fs.writeFileSync(multiFile, `first-line-of-the-key\n${SECOND_LINE}\n`);
    const uuid = await scheduleScript(server, dir, 'deploy', [
      'echo "$STAGE $REGION $GREETING"',
      'echo "the key is $API_KEY, twice: $API_KEY"',
      'echo "$MULTI" | tail -n 1',
      // Both lines in one write, so in one console chunk: each line is masked, none is lost.
      'printf "%s\\n" "$MULTI" "after"',
      'echo "$API_KEY" >&2',
      'builder-progress 10 "using $API_KEY"',
      '',
    ].join('\n'), ['--env-file', envFile, '--env', 'GREETING=from the flag', '--secret-env', `API_KEY=@${secretFile}`, '--secret-env', `MULTI=@${multiFile}`]);
    const run = await waitForState(server, uuid, 'finished');
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    const consoleText = await ok(server, ['show', uuid, '--console']);
    expect(consoleText.split('\n').map((line) => line.replace(/^\s*\d+\.\d+ /, '')).filter((line) => line !== '')).toEqual([
      '| staging eu-west from the flag', '| the key is ***, twice: ***', '| ***', '| ***', '| ***', '| after', '! ***',
    ]);
    const detail = await ok(server, ['show', uuid]);
    expect(detail).toMatch(/^env:\s+STAGE=staging$/m);
    expect(detail).toMatch(/^env:\s+REGION=eu-west$/m);
    expect(detail).toMatch(/^env:\s+GREETING=from the flag$/m);
    expect(detail).toMatch(/^env:\s+API_KEY=\*\*\* \(secret\)$/m);
    expect(detail).toMatch(/^env:\s+MULTI=\*\*\* \(secret\)$/m);
    expect(detail).toMatch(/^progress:\s+10% using \*\*\*$/m);
    const info = await json<InfoJson>(server, ['info']);
    expect(info.jobs.find((job) => job.name === 'deploy')).toEqual(expect.objectContaining({
      env: { GREETING: 'from the flag', REGION: 'eu-west', STAGE: 'staging' }, secretKeys: ['API_KEY', 'MULTI'],
    }));
    // Nowhere a client or a browser can look: show, info, the console replay, the web view, the log.
    const places = [
      detail, consoleText, await ok(server, ['show', uuid, '--json']), await ok(server, ['info', '--json']), await ok(server, ['info']),
      await ok(server, ['results', 'deploy', '--json']), await ok(server, ['observe', uuid]),
      await (await fetch(`${server.web}/run/${uuid}`)).text(), await (await fetch(`${server.web}/run/${uuid}/console`)).text(),
      await (await fetch(`${server.web}/run/${uuid}`, { headers: { accept: 'application/json' } })).text(),
      await (await fetch(`${server.web}/job/deploy`)).text(), server.proc.stderr,
    ];
    for (const text of places) {
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(SECOND_LINE);
    }
    const page = await (await fetch(`${server.web}/run/${uuid}`)).text();
    expect(page).toContain('<li class="mono">STAGE=staging</li>');
    expect(page).toContain('API_KEY=<span class="muted" title="a secret: its value is never shown">***</span>');
  });

  it('refuses bad variables in one line each, and schedules nothing', async () => {
    const script = path.join(dir, 'env-bad.sh');
    fs.writeFileSync(script, 'true\n');
    const badFile = path.join(dir, 'bad.env');
    fs.writeFileSync(badFile, 'GOOD=1\nthis line has no equals sign\n');
    const cases: [string[], string][] = [
      [['--env', '1ABC=x'], "--env '1ABC=x': '1ABC' is not a variable name (letters, digits and _, not starting with a digit)"],
      [['--env', 'NOVALUE'], "--env 'NOVALUE': expected KEY=VALUE"],
      [['--env', 'BUILDER_UUID=x'], "--env 'BUILDER_UUID=x': BUILDER_UUID is reserved (BUILDER_* variables are set by builder itself)"],
      [['--env-file', badFile], `--env-file ${badFile}:2: expected KEY=VALUE, found 'this line has no equals sign'`],
      [['--secret-env', 'TOKEN=plain-text-secret'], "--secret-env 'TOKEN…': expected KEY=@FILE (the value is read from FILE, never given on the command line)"],
      [['--secret-env', `TOKEN=@${path.join(dir, 'nope')}`], `--secret-env TOKEN: cannot read ${path.join(dir, 'nope')}: ENOENT`],
      [['--env', 'TOKEN=a', '--secret-env', `TOKEN=@${script}`], 'TOKEN is given both as --secret-env and as --env/--env-file; give it once'],
    ];
    for (const [args, message] of cases) {
      const result = await client(server, ['schedule', 'env-bad', PLATFORM, script, ...args]);
      expect(result, args.join(' ')).toEqual({ code: 1, stdout: '', stderr: `builder-client: ${message}\n` });
    }
    // Node itself looks at an --env-file argument, even one meant for the script (nodejs/node#54232),
    // and stops with its own message when the file cannot be read; either way: not 0, naming the file.
    const missing = await client(server, ['schedule', 'env-bad', PLATFORM, script, '--env-file', path.join(dir, 'missing.env')]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain(path.join(dir, 'missing.env'));
    expect((await json<InfoJson>(server, ['info'])).jobs.map((job) => job.name)).not.toContain('env-bad');
  });
});

describe('progress', () => {
  it('is shown by info, workers, observe and the web view while the run goes on, and kept with the run', async () => {
    const server = await startServer(path.join(dir, 'progress-state'), ['--http', '127.0.0.1:0']);
    const gate1 = path.join(dir, 'gate1');
    const gate2 = path.join(dir, 'gate2');
    const uuid = await scheduleScript(server, dir, 'long-build', [
      'builder-progress 40 compiling',
      `while [ ! -e ${gate1} ]; do sleep 0.05; done`,
      'echo "75% linking" >> "$BUILDER_PROGRESS"',
      `while [ ! -e ${gate2} ]; do sleep 0.05; done`,
      'builder-progress packaging',
      '',
    ].join('\n'), ['--period', 'never']);
    const observer = startProcess('builder-client.js', ['--remote', server.address, 'observe', uuid]);
    // The same on a terminal (script(1) gives it a pseudo-terminal): one status line, redrawn.
    const tty = spawn('script', ['-q', '-e', '-c', `${process.execPath} ${path.join(ROOT, 'dist', 'bin', 'builder-client.js')} --remote ${server.address} observe ${uuid}`, '/dev/null'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BUILDER_CONFIG_DIRS: '' } });
    let ttyOutput = '';
    tty.stdout.setEncoding('utf8').on('data', (chunk: string) => { ttyOutput += chunk; });
    const ttyExit = new Promise<number | null>((resolve) => tty.on('close', resolve));
    startWorker(server, ['--loop'], PLATFORM, dir);
    const forty = await waitFor('progress 40', async () => {
      const info = await json<InfoJson>(server, ['info']);
      return info.running[0]?.progress?.percent === 40 ? info : null;
    });
    expect(forty.running[0]?.progress).toEqual(expect.objectContaining({ percent: 40, message: 'compiling' }));
    expect(await ok(server, ['info'])).toMatch(new RegExp(`long-build\\s+${uuid}\\s+test-platform\\s+on \\S+\\s+for \\S+\\s+\\[40% compiling\\]`));
    const [worker] = await json<WorkerJson[]>(server, ['workers']);
    expect(worker).toEqual(expect.objectContaining({ run: uuid, progress: expect.objectContaining({ percent: 40, message: 'compiling' }) }));
    expect(await ok(server, ['workers'])).toContain(`${uuid} [40% compiling]`);
    const page = await (await fetch(`${server.web}/run/${uuid}`)).text();
    expect(page).toContain('<dd id="progress"><progress max="100" value="40"></progress> <span class="text">40% compiling</span></dd>');
    expect(await (await fetch(`${server.web}/workers`)).text()).toContain('<span class="muted">40% compiling</span>');

    fs.writeFileSync(gate1, '');
    await waitFor('progress 75', async () => ((await json<InfoJson>(server, ['info'])).running[0]?.progress?.percent === 75 ? true : null));
    fs.writeFileSync(gate2, '');
    await waitForState(server, uuid, 'finished');
    expect((await observer.exit).code).toBe(0);
    expect(observer.stderr.split('\n').filter((line) => line.startsWith('progress: '))).toEqual([
      'progress: 40% compiling', 'progress: 75% linking', 'progress: packaging',
    ]);
    expect(await ttyExit).toBe(0);
    expect(ttyOutput).not.toContain('progress: ');
    const drawn = ['[40% compiling]', '\r\x1b[K[75% linking]', '\r\x1b[K[packaging]', `\r\x1b[Krun ${uuid} of long-build: exited 0`].map((part) => ttyOutput.indexOf(part));
    expect(drawn.every((at) => at >= 0), JSON.stringify(ttyOutput)).toBe(true);
    expect([...drawn].sort((a, b) => a - b)).toEqual(drawn);
    const kept = await json<{ progress: { percent: number | null; message: string; at: string } }>(server, ['show', uuid]);
    expect(kept.progress).toEqual({ percent: null, message: 'packaging', at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
    // Kept across a restart of the server.
    server.proc.kill('SIGKILL');
    await server.proc.exit;
    const again = await startServer(server.stateDir);
    expect(await ok(again, ['show', uuid])).toMatch(/^progress:\s+packaging$/m);
  });
});

describe('worker health', () => {
  it('a silent worker is late, then gone (its run queued again), then forgotten; workers shows each with last-seen times', async () => {
    const server = await startServer(path.join(dir, 'health-state'), ['--http', '127.0.0.1:0', '--forget-workers-after', '4s']);
    const pidFile = path.join(dir, 'job.pid');
    const uuid = await scheduleScript(server, dir, 'sleeper', `echo $$ > ${pidFile}\nsleep 30\n`, ['--period', 'never']);
    const busy = startWorker(server, ['--loop', '--hostname', 'busy-host'], PLATFORM, dir);
    await waitForState(server, uuid, 'running');
    const idle = startWorker(server, ['--loop', '--hostname', 'idle-host'], PLATFORM, dir);
    type WebWorkers = { workers: WorkerJson[] };
    await waitFor('two active workers', async () => {
      const { workers } = await getJson<WebWorkers>(`${server.web}/workers`);
      return workers.length === 2 && workers.every((w) => w.status === 'active');
    });
    // Stopped processes send no heartbeats (their TCP connections stay open).
    busy.child.kill('SIGSTOP');
    idle.child.kill('SIGSTOP');
    try {
      const late = await waitFor('both late', async () => {
        const { workers } = await getJson<WebWorkers>(`${server.web}/workers`);
        return workers.filter((w) => w.status === 'late').length === 2 ? workers : null;
      });
      expect(late.map((w) => w.id.split('/')[0]).sort()).toEqual(['busy-host', 'idle-host']);
      const gone = await waitFor('both gone', async () => {
        const { workers } = await getJson<WebWorkers>(`${server.web}/workers`);
        return workers.filter((w) => w.status === 'gone').length === 2 ? workers : null;
      });
      expect(gone.map((w) => w.reason)).toEqual(['no heartbeat for 3s', 'no heartbeat for 3s']);
      const text = await ok(server, ['workers']);
      expect(text).toMatch(/^busy-host\/\S+\s+gone\s+test-platform\s+-\s+busy-host\s+\S+\s+\d+\.\ds ago\s+gone \d+\.\ds ago: no heartbeat for 3s$/m);
      expect(text).toMatch(/^WORKER\s+STATUS\s+PLATFORM\s+LABELS\s+HOST\s+ADDRESS\s+LAST SEEN\s+RUN$/m);
      // The busy worker's run was lost and its job queued again.
      const lost = await show(server, uuid);
      expect(lost.outcome).toEqual({ kind: 'worker-lost', message: expect.stringMatching(/^no heartbeat from busy-host\/\S+ for 3s$/) });
      expect((await json<InfoJson>(server, ['info'])).queues[PLATFORM]).toEqual([expect.objectContaining({ job: 'sleeper', blocked: `no ${PLATFORM} worker is connected` })]);
      // After --forget-workers-after, they are no longer listed.
      await waitFor('the gone workers to be forgotten', async () => ((await getJson<WebWorkers>(`${server.web}/workers`)).workers.length === 0 ? true : null), 15_000);
      expect(await ok(server, ['workers'])).toBe('no workers connected, and none gone recently\n');
    } finally {
      busy.child.kill('SIGKILL');
      idle.child.kill('SIGKILL');
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
});
