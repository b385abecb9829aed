/**
 * The builder loop end to end: a real server process, real workers running real /bin/sh jobs, the
 * real client CLI, a real SQLite file, real TCP.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RunJson, type ServerHandle, PLATFORM, client, json, killAll, ok, scheduleScript, sha256, show, startServer,
  startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

let dir: string;
let server: ServerHandle;

beforeAll(async () => {
  dir = tempDir();
  server = await startServer(path.join(dir, 'state'));
});

afterAll(async () => {
  await killAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('schedule → run → observe → fetch', () => {
  it('shows the exact console lines and gives byte-identical artifacts', async () => {
    const uuid = await scheduleScript(server, dir, 'hello', [
      'echo "hello from $BUILDER_JOB on $BUILDER_PLATFORM"',
      'echo "uuid $BUILDER_UUID"',
      'echo "to stderr" >&2',
      'mkdir -p out/nested',
      'head -c 300000 /dev/urandom > out/nested/random.bin',
      'printf "exact\\ncontent\\n" > notes.txt',
      'sha256sum out/nested/random.bin notes.txt',
    ].join('\n'), ['--every', '1d']);
    expect(uuid).toMatch(/^[0-9a-f-]{36}$/);

    const worker = startWorker(server, [], PLATFORM, dir);
    expect((await worker.exit).code).toBe(0);

    const observed = await client(server, ['observe', uuid]);
    expect(observed.code).toBe(0);
    const lines = observed.stdout.trimEnd().split('\n');
    // Each line: seconds since start, a stream marker (| stdout, ! stderr), the text.
    expect(lines[0]).toMatch(/^ +\d+\.\d{3} \| hello from hello on test-platform$/);
    expect(lines[1]).toMatch(new RegExp(`^ +\\d+\\.\\d{3} \\| uuid ${uuid}$`));
    expect(lines[2]).toMatch(/^ +\d+\.\d{3} ! to stderr$/);
    expect(lines.at(-1)).toMatch(new RegExp(`^run ${uuid} of hello: exited 0, took \\d+\\.\\ds$`));

    const raw = await client(server, ['observe', uuid, '--raw']);
    const sums = raw.stdout.split('\n').filter((line) => /^[0-9a-f]{64}  /.test(line));
    expect(sums).toHaveLength(2);
    expect(raw.stderr).toContain('to stderr\n');

    const out = path.join(dir, 'fetched');
    const fetched = await client(server, ['fetch', uuid, '-o', out]);
    expect(fetched.code).toBe(0);
    for (const line of sums) {
      const [hash, file] = line.split(/\s+/) as [string, string];
      expect(sha256(fs.readFileSync(path.join(out, file)))).toBe(hash);
    }
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('exact\ncontent\n');
    expect(fs.readdirSync(out).sort()).toEqual(['notes.txt', 'out']);

    const run = await show(server, uuid);
    expect(run.status).toBe('success');
    expect(run.artifacts?.map((a) => a.path)).toEqual(['notes.txt', 'out/nested/random.bin']);
    expect(run.artifacts?.find((a) => a.path === 'notes.txt')?.sha256).toBe(sha256('exact\ncontent\n'));
    const script = await ok(server, ['show', uuid, '--script']);
    expect(script).toContain('head -c 300000 /dev/urandom');
  });

  it('stores and fetches small, boundary-sized, big and repeated files byte for byte, each content once', async () => {
    // Around the size up to which a file is taken in whole (64 KiB), one bigger than what is written
    // at once (4 MiB), many small ones, and repeated contents (stored once, fetched everywhere).
    const uuid = await scheduleScript(server, dir, 'sizes', [
      'mkdir -p many twice',
      ': > empty.bin',
      'head -c 65536 /dev/urandom > at-limit.bin',
      'head -c 65537 /dev/urandom > over-limit.bin',
      'head -c 9000000 /dev/urandom > big.bin',
      'cp big.bin twice/big-again.bin',
      'cp at-limit.bin twice/at-limit-again.bin',
      'i=0; while [ $i -lt 300 ]; do echo "file $i" > many/$i.txt; i=$((i+1)); done',
      'echo "file 7" > twice/seven.txt',
      'find . -type f ! -path "./.builder*" -exec sha256sum {} + | sed "s| \\./| |"',
    ].join('\n'), ['--every', '1d']);
    const worker = startWorker(server, [], PLATFORM, dir);
    expect((await worker.exit).code).toBe(0);
    const raw = await client(server, ['observe', uuid, '--raw']);
    const sums = new Map(raw.stdout.split('\n').filter((line) => /^[0-9a-f]{64}  /.test(line)).map((line) => {
      const [hash, file] = line.split(/\s+/) as [string, string];
      return [file, hash];
    }));
    expect(sums.size).toBe(307);
    const run = await show(server, uuid);
    expect(run.status).toBe('success');
    expect(new Map(run.artifacts?.map((a) => [a.path, a.sha256]))).toEqual(sums);
    // Content-addressed: the three repeated contents are stored once each.
    const stored = fs.readdirSync(path.join(dir, 'state', 'artifacts')).filter((name) => name !== 'tmp')
      .flatMap((sub) => fs.readdirSync(path.join(dir, 'state', 'artifacts', sub)));
    for (const hash of sums.values()) expect(stored).toContain(hash);
    expect(fs.readdirSync(path.join(dir, 'state', 'artifacts', 'tmp'))).toEqual([]);

    // Fetched twice into the same directory: the second fetch replaces every file.
    const out = path.join(dir, 'fetched-sizes');
    for (let round = 0; round < 2; round++) {
      const fetched = await client(server, ['fetch', uuid, '-o', out]);
      expect(fetched.code).toBe(0);
      for (const [file, hash] of sums) expect(sha256(fs.readFileSync(path.join(out, file)))).toBe(hash);
    }
    expect(fs.readdirSync(out).sort()).toEqual(['at-limit.bin', 'big.bin', 'empty.bin', 'many', 'over-limit.bin', 'twice']);
    expect(fs.readdirSync(path.join(out, 'many'))).toHaveLength(300);
  });

  it('records a job killed by a signal as signalled, and observe exits 3', async () => {
    const uuid = await scheduleScript(server, dir, 'signalled', 'echo before\nkill -KILL $$\necho after\n');
    const worker = startWorker(server, [], PLATFORM, dir);
    expect((await worker.exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'signalled', signal: 9 });
    const observed = await client(server, ['observe', uuid]);
    expect(observed.code).toBe(3);
    expect(observed.stdout).toContain('| before\n');
    expect(observed.stdout).not.toContain('after');
    expect(observed.stdout).toContain(`run ${uuid} of signalled: signalled 9`);
  });

  it('records a job whose shell stays stopped as stopped', async () => {
    const uuid = await scheduleScript(server, dir, 'stops', 'echo before\nkill -STOP $$\necho after\n');
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'stopped', signal: 19 });
    const observed = await client(server, ['observe', uuid]);
    expect(observed.code).toBe(3);
    expect(observed.stdout).toMatch(/\| before\n.*# the job's shell has been stopped for 3s; ending it\n.*: stopped 19, took/s);
    expect(observed.stdout).not.toContain('after');
  });

  it('records a non-zero exit and stops at the first failing command (sh -e)', async () => {
    const uuid = await scheduleScript(server, dir, 'fails', 'echo one\nfalse\necho two\n');
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'exited', code: 1 });
    expect(run.status).toBe('failed');
    const raw = await client(server, ['observe', uuid, '--raw']);
    expect(raw.stdout).toBe('one\n');
    expect(raw.code).toBe(3);
  });

  it('schedules a script read from stdin with -, before or after the options', async () => {
    for (const [name, args] of [['from-stdin', ['-', '--period', 'never']], ['from-stdin-2', ['--period', 'never', '-']]] as const) {
      const scheduled = await client(server, ['schedule', name, PLATFORM, ...args], {}, `echo "read from stdin by ${name}"\n`);
      expect(scheduled.code).toBe(0);
      const uuid = scheduled.stdout.trim();
      expect(scheduled.stderr).toBe(`scheduled ${name} (never); queued run ${uuid}\n`);
      expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
      expect((await show(server, uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect((await client(server, ['observe', uuid, '--raw'])).stdout).toBe(`read from stdin by ${name}\n`);
    }
    // An empty file name (an unset variable) is not taken for stdin.
    const empty = await client(server, ['schedule', 'empty-name', PLATFORM, ''], {}, 'echo never\n');
    expect(empty).toEqual({ code: 1, stdout: '', stderr: 'builder-client: the script file name is empty: give a file, or - to read the script from stdin\n' });
    expect((await json<{ jobs: { name: string }[] }>(server, ['info'])).jobs.map((job) => job.name)).not.toContain('empty-name');
  });

  it('kills a job that runs over its timeout, whole process group included', async () => {
    const marker = path.join(dir, 'timeout-child-survived');
    const uuid = await scheduleScript(server, dir, 'slow', `(sleep 3; touch ${marker}) &\necho started\nsleep 30\n`, ['--timeout', '1s']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'timeout', seconds: 1 });
    await new Promise((resolve) => setTimeout(resolve, 3500));
    expect(fs.existsSync(marker)).toBe(false);
  });

  it('cancels a running run (SIGTERM to the group) and a queued one', async () => {
    const uuid = await scheduleScript(server, dir, 'to-cancel', 'echo started\nsleep 30\n');
    const worker = startWorker(server, [], PLATFORM, dir);
    await waitForState(server, uuid, 'running');
    expect((await client(server, ['cancel', uuid])).code).toBe(0);
    expect((await worker.exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome?.kind).toBe('cancelled');

    const queued = await scheduleScript(server, dir, 'queued-cancel', 'echo never\n');
    expect((await show(server, queued)).state).toBe('queued');
    const cancelled = await client(server, ['cancel', queued]);
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout).toContain(`cancelled queued run ${queued}`);
    expect((await show(server, queued)).outcome).toEqual({ kind: 'cancelled', message: 'cancelled while queued' });
    const again = await client(server, ['cancel', queued]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('already finished');
  });

  it('an observer that starts late sees the full console, and two observers see the same', async () => {
    const expected = Array.from({ length: 200 }, (_, i) => `line ${i + 1}`);
    const uuid = await scheduleScript(server, dir, 'counting', 'i=1\nwhile [ $i -le 200 ]; do echo "line $i"; if [ $i = 100 ]; then sleep 1; fi; i=$((i+1)); done\n');
    const early = client(server, ['observe', uuid, '--raw']);
    const worker = startWorker(server, [], PLATFORM, dir);
    await waitForState(server, uuid, 'running');
    const during = client(server, ['observe', uuid, '--raw']);
    expect((await worker.exit).code).toBe(0);
    const late = await client(server, ['observe', uuid, '--raw']);
    for (const result of [await early, await during, late]) {
      expect(result.code).toBe(0);
      expect(result.stdout.trimEnd().split('\n')).toEqual(expected);
    }
  });

  it('a job whose files cannot be written fails with that reason', async () => {
    const uuid = await scheduleScript(server, dir, 'unwritable', 'echo never\n');
    const worker = startWorker(server, ['--tmp-dir', path.join(dir, 'does', 'not', 'exist')], PLATFORM);
    expect((await worker.exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome?.kind).toBe('error');
    expect(run.outcome?.message).toMatch(/^cannot write the job's files in .*does\/not\/exist: ENOENT/);
  });

  it('a job that leaves a tree deeper than PATH_MAX still finishes, and its directory is removed', async () => {
    const tmp = path.join(dir, 'deep-tmp');
    fs.mkdirSync(tmp);
    const uuid = await scheduleScript(server, dir, 'deep', 'echo top > top.txt\npython3 -c "import os\nfor _ in range(250): os.mkdir(20 * \'a\'); os.chdir(20 * \'a\')\nopen(\'f\', \'w\').write(\'deep\')"\n');
    expect((await startWorker(server, [], PLATFORM, tmp).exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    expect(run.artifacts?.map((a) => a.path)).toEqual(['top.txt']);
    expect((await client(server, ['observe', uuid])).stdout).toMatch(/# not an artifact: a{20}\/.*…: ENAMETOOLONG/);
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it('removes what a job leaves however it protects it, small tree or big, and follows no link out', async () => {
    const outside = path.join(dir, 'outside-target');
    fs.mkdirSync(outside, { recursive: true });
    fs.writeFileSync(path.join(outside, 'keep.txt'), 'keep\n');
    for (const [name, files] of [['small', 3], ['big', 2500]] as const) {
      const tmp = path.join(dir, `remove-${name}-tmp`);
      fs.mkdirSync(tmp);
      const uuid = await scheduleScript(server, dir, `remove-${name}`, [
        `mkdir -p locked/inner sealed many && echo x > locked/inner/f && echo y > sealed/g`,
        `i=0; while [ $i -lt ${files} ]; do : > many/f$i; i=$((i+1)); done`,
        `ln -s ${outside} link-dir && ln -s ${outside}/keep.txt link-file`,
        'chmod 500 locked/inner locked . && chmod 000 sealed',
      ].join('\n') + '\n');
      expect((await startWorker(server, [], PLATFORM, tmp).exit).code).toBe(0);
      expect((await show(server, uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect(fs.readdirSync(tmp)).toEqual([]);
    }
    expect(fs.readFileSync(path.join(outside, 'keep.txt'), 'utf8')).toBe('keep\n');
  });

  it('removes at start the job directories a killed worker left being removed, and nothing else', async () => {
    const tmp = path.join(dir, 'leftover-tmp');
    fs.mkdirSync(path.join(tmp, 'builder-Ab12Cd.removing', 'deep', 'er'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'builder-Ab12Cd.removing', 'deep', 'er', 'secret.txt'), 'left behind\n');
    fs.mkdirSync(path.join(tmp, 'builder-not-ours'));
    fs.writeFileSync(path.join(tmp, 'other.removing'), 'not a job directory\n');
    const uuid = await scheduleScript(server, dir, 'after-leftovers', 'echo fine\n');
    expect((await startWorker(server, [], PLATFORM, tmp).exit).code).toBe(0);
    expect((await show(server, uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
    expect(fs.readdirSync(tmp).sort()).toEqual(['builder-not-ours', 'other.removing']);
  });

  it('keeps carriage returns inside lines, live and replayed alike', async () => {
    const uuid = await scheduleScript(server, dir, 'progress', "printf 'dl 10\\rdl 100\\n'\nprintf 'x\\r1 b injected note\\n'\n");
    const live = client(server, ['observe', uuid, '--raw']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const replayed = await client(server, ['observe', uuid, '--raw']);
    expect((await live).stdout).toBe('dl 10\rdl 100\nx\r1 b injected note\n');
    expect(replayed.stdout).toBe('dl 10\rdl 100\nx\r1 b injected note\n');
    expect(replayed.stderr).not.toContain('injected');
  });

  it('does not wait for a process that left the process group and holds the output open', async () => {
    const uuid = await scheduleScript(server, dir, 'daemon', "setsid sh -c 'sleep 20' &\nsleep 0.5\necho started a daemon\n");
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    const observed = await client(server, ['observe', uuid]);
    expect(observed.stdout).toMatch(/\| started a daemon\n.*# a process outside the job's process group kept its output open; stopped reading it\n/s);
  });

  it('observe-latest waits for the next run of a job', async () => {
    const observer = client(server, ['observe-latest', '--job', 'latest-job', '--raw']);
    await new Promise((resolve) => setTimeout(resolve, 500));
    await scheduleScript(server, dir, 'latest-job', 'echo newest\n');
    startWorker(server, [], PLATFORM, dir);
    const result = await observer;
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('newest\n');
  });
});

describe('queues and schedules', () => {
  it('never queues a job twice; execute moves it to the front', async () => {
    const platform = 'queue-order';
    const file = path.join(dir, 'noop.sh');
    fs.writeFileSync(file, 'true\n');
    const a = (await ok(server, ['schedule', 'qa', platform, file])).trim();
    const b = (await ok(server, ['schedule', 'qb', platform, file])).trim();
    const c = (await ok(server, ['schedule', 'qc', platform, file])).trim();
    const again = (await ok(server, ['execute', 'qa'])).trim();
    expect(again).toBe(a);
    const moved = (await ok(server, ['execute', 'qc'])).trim();
    expect(moved).toBe(c);
    const info = await json<{ queues: Record<string, { uuid: string; job: string }[]> }>(server, ['info']);
    expect(info.queues[platform]?.map((entry) => entry.job)).toEqual(['qc', 'qa', 'qb']);
    expect(info.queues[platform]?.map((entry) => entry.uuid)).toEqual([c, a, b]);
  });

  it('a dropped platform queues nothing until undropped', async () => {
    const platform = 'dropme';
    const file = path.join(dir, 'noop.sh');
    fs.writeFileSync(file, 'true\n');
    await ok(server, ['schedule', 'before-drop', platform, file]);
    const dropped = await ok(server, ['drop-platform', platform]);
    expect(dropped).toContain('cancelled 1 queued run(s)');
    const scheduled = await client(server, ['schedule', 'during-drop', platform, file]);
    expect(scheduled.code).toBe(0);
    expect(scheduled.stdout).toBe('');
    expect(scheduled.stderr).toContain('is dropped, so nothing was queued');
    const executed = await client(server, ['execute', 'during-drop']);
    expect(executed.code).toBe(2);
    expect(executed.stderr).toContain(`platform ${platform} is dropped; run undrop-platform ${platform} first`);
    let info = await json<{ dropped: string[]; queues: Record<string, unknown[]> }>(server, ['info']);
    expect(info.dropped).toContain(platform);
    expect(info.queues[platform]).toBeUndefined();
    await ok(server, ['undrop-platform', platform]);
    const uuid = (await ok(server, ['execute', 'during-drop'])).trim();
    info = await json(server, ['info']);
    expect(info.dropped).not.toContain(platform);
    expect(info.queues[platform]).toEqual([expect.objectContaining({ uuid, job: 'during-drop' })]);
  });

  it('reschedule wakes the scheduler at the new due time', async () => {
    const uuid = await scheduleScript(server, dir, 'resched', 'echo tick\n', ['--period', 'never']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    expect((await show(server, uuid)).status).toBe('success');
    const reply = await ok(server, ['reschedule', 'resched', '+1s', '--every', '1h']);
    expect(reply).toContain('resched is every 1h, next due');
    const runs = await waitFor('a second run to be queued', async () => {
      const list = await json<RunJson[]>(server, ['results', 'resched']);
      return list.length === 2 ? list : null;
    }, 15_000);
    expect(runs[0]?.state).toBe('queued');
    expect(runs[1]?.uuid).toBe(uuid);
    const info = await json<{ jobs: { name: string; period: unknown; nextDue: string }[] }>(server, ['info']);
    const job = info.jobs.find((j) => j.name === 'resched');
    expect(job?.period).toEqual({ kind: 'every', seconds: 3600 });
    expect(Date.parse(job?.nextDue ?? '') - Date.now()).toBeGreaterThan(3000 * 1000);
    await ok(server, ['unschedule', 'resched']);
    expect((await show(server, runs[0]?.uuid ?? '')).outcome).toEqual({ kind: 'cancelled', message: 'job unscheduled' });
  });

  it('results lists runs newest first and workers lists connected workers', async () => {
    const first = await scheduleScript(server, dir, 'twice', 'echo $BUILDER_UUID\n', ['--period', 'never']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const second = (await ok(server, ['execute', 'twice'])).trim();
    const worker = startWorker(server, ['--labels', 'fast,big-disk', '--loop'], PLATFORM, dir);
    await waitForState(server, second, 'finished');
    const runs = await json<RunJson[]>(server, ['results', 'twice']);
    expect(runs.map((run) => run.uuid)).toEqual([second, first]);
    // Connected workers first, then those gone recently (the one-job worker above, which exited).
    const workers = await json<{ platform: string; labels: string[]; run: string | null; status: string }[]>(server, ['workers']);
    expect(workers.filter((w) => w.status !== 'gone')).toEqual([expect.objectContaining({ platform: PLATFORM, labels: ['fast', 'big-disk'], run: null, status: 'active' })]);
    expect(workers.at(-1)).toEqual(expect.objectContaining({ status: 'gone', reason: 'connection closed' }));
    const table = await ok(server, ['workers']);
    expect(table).toContain('fast,big-disk');
    worker.kill('SIGKILL');
    await worker.exit;
  });
});
