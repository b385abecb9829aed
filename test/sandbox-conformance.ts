/**
 * The sandbox conformance suite: the same jobs through a real server and a real worker, once per
 * sandbox (plain process, docker, podman). Every sandbox must give the same console, the same
 * outcomes and the same artifacts, so each case states the one expected result for all of them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Proc, type ServerHandle, client, killAll, ok, scheduleScript, sha256, show, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

export interface ConsoleEntry { stream: '|' | '!' | '#'; text: string }

/** A run's console as `show --console` prints it, without the timestamps. */
export async function consoleOf(server: ServerHandle, uuid: string): Promise<ConsoleEntry[]> {
  const text = await ok(server, ['show', uuid, '--console']);
  return text.split('\n').filter((line) => line !== '').map((line) => {
    const match = /^\s*\d+\.\d+ ([|!#]) ?(.*)$/.exec(line);
    if (match === null) throw new Error(`not a console line: ${JSON.stringify(line)}`);
    return { stream: match[1] as ConsoleEntry['stream'], text: match[2] ?? '' };
  });
}

/** The artifacts of a run, fetched with the real client, as path → SHA-256 of the bytes received. */
export async function fetchedArtifacts(server: ServerHandle, uuid: string, dir: string): Promise<Record<string, string>> {
  const out = path.join(dir, `fetch-${uuid}`);
  await ok(server, ['fetch', uuid, '-o', out]);
  const files: Record<string, string> = {};
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(out, rel), { withFileTypes: true })) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) walk(child);
      else files[child] = sha256(fs.readFileSync(path.join(out, child)));
    }
  };
  walk('');
  return files;
}

/**
 * Runs the suite with workers started with `workerArgs` (e.g. `--sandbox docker --image …`).
 * `setup` may say the sandbox cannot run here (returns a reason), which skips the suite.
 */
export function conformanceSuite(label: string, workerArgs: string[]): void {
  describe(`sandbox conformance: ${label}`, () => {
    let dir: string;
    let server: ServerHandle;
    let worker: Proc;

    beforeAll(async () => {
      dir = tempDir();
      server = await startServer(path.join(dir, 'state'));
      worker = startWorker(server, ['--loop', ...workerArgs], undefined, dir);
    });
    afterAll(async () => {
      await killAll();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    const finished = async (uuid: string): Promise<Awaited<ReturnType<typeof show>>> => {
      const run = await waitForState(server, uuid, 'finished', 60_000).catch((error: Error) => {
        throw new Error(`${error.message}; worker said:\n${worker.stderr}`);
      });
      return run;
    };

    it('streams stdout and stderr line by line, a last line without newline included', async () => {
      const uuid = await scheduleScript(server, dir, 'streams',
        "echo one\necho 'two  spaced'\nsleep 0.3\necho 'to stderr' >&2\nsleep 0.3\nprintf 'ünïcode ✓\\n'\nprintf 'no newline'\n");
      expect((await finished(uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect(await consoleOf(server, uuid)).toEqual([
        { stream: '|', text: 'one' }, { stream: '|', text: 'two  spaced' }, { stream: '!', text: 'to stderr' },
        { stream: '|', text: 'ünïcode ✓' }, { stream: '|', text: 'no newline' },
      ]);
    });

    it('reports exit codes, and that the script runs with sh -e', async () => {
      const three = await scheduleScript(server, dir, 'exit-three', 'echo before\nexit 3\n');
      const failing = await scheduleScript(server, dir, 'set-e', 'echo before\nfalse\necho not reached\n');
      expect((await finished(three)).outcome).toEqual({ kind: 'exited', code: 3 });
      expect((await finished(failing)).outcome).toEqual({ kind: 'exited', code: 1 });
      expect(await consoleOf(server, failing)).toEqual([{ stream: '|', text: 'before' }]);
    });

    it('reports the signal that killed the script', async () => {
      const term = await scheduleScript(server, dir, 'self-term', 'echo bye\nkill -TERM $$\nsleep 10\n');
      const kill = await scheduleScript(server, dir, 'self-kill', 'kill -KILL $$\n');
      expect((await finished(term)).outcome).toEqual({ kind: 'signalled', signal: 15 });
      expect((await finished(kill)).outcome).toEqual({ kind: 'signalled', signal: 9 });
      expect(await consoleOf(server, term)).toEqual([{ stream: '|', text: 'bye' }]);
    });

    it('gives the job its run, name and platform, and an empty stdin', async () => {
      const uuid = await scheduleScript(server, dir, 'env-job',
        'echo "$BUILDER_UUID $BUILDER_JOB $BUILDER_PLATFORM"\nif read -r line; then echo "stdin: $line"; else echo "stdin empty"; fi\n');
      expect((await finished(uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect(await consoleOf(server, uuid)).toEqual([
        { stream: '|', text: `${uuid} env-job test-platform` }, { stream: '|', text: 'stdin empty' },
      ]);
    });

    it('gives the job its variables and secrets exactly, masks the secret in the console, and puts builder-progress on its PATH', async () => {
      const secretFile = path.join(dir, 'token.secret');
      fs.writeFileSync(secretFile, "s3cr3t 'value'\n");
      const uuid = await scheduleScript(server, dir, 'env-secret-progress', [
        'echo "greeting: $GREETING"',
        'echo "quote: $QUOTE"',
        'echo "token: $TOKEN"',
        'printf %s "$TOKEN" > token.txt',
        'if [ -e .builder-env ]; then echo "env file left behind"; fi',
        'builder-progress 50 half way',
        'echo "75 three quarters" >> "$BUILDER_PROGRESS"',
        '',
      ].join('\n'), ['--env', 'GREETING=hello world', '--env', `QUOTE=it's "q" $HOME`, '--secret-env', `TOKEN=@${secretFile}`]);
      const run = await finished(uuid);
      expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
      expect(await consoleOf(server, uuid)).toEqual([
        { stream: '|', text: 'greeting: hello world' }, { stream: '|', text: `quote: it's "q" $HOME` }, { stream: '|', text: 'token: ***' },
      ]);
      // The job got the secret byte for byte (without the file's trailing newline); builder's own
      // files (script, progress, tools, env) are not artifacts.
      expect(Object.fromEntries((run.artifacts ?? []).map((a) => [a.path, a.sha256]))).toEqual({ 'token.txt': sha256("s3cr3t 'value'") });
      const detail = await show(server, uuid) as unknown as { progress: { percent: number; message: string }; env: Record<string, string>; secretKeys: string[] };
      expect(detail.progress).toEqual(expect.objectContaining({ percent: 75, message: 'three quarters' }));
      expect(detail.env).toEqual({ GREETING: 'hello world', QUOTE: `it's "q" $HOME` });
      expect(detail.secretKeys).toEqual(['TOKEN']);
    });

    it('uploads every file the job left, byte-identical; links are noted, not followed', async () => {
      const uuid = await scheduleScript(server, dir, 'artifacts', [
        'mkdir -p out/deep empty',
        "printf 'bin\\000ary\\377' > out/deep/b.bin",
        'echo top > top.sh && chmod 755 top.sh',
        'head -c 300000 /dev/zero | tr "\\0" x > big.txt',
        'ln -s /etc/passwd link',
        '',
      ].join('\n'));
      const run = await finished(uuid);
      expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
      const expected = {
        'big.txt': sha256('x'.repeat(300_000)),
        'out/deep/b.bin': sha256(Buffer.from('bin\0ary\xff', 'latin1')),
        'top.sh': sha256('top\n'),
      };
      expect(Object.fromEntries((run.artifacts ?? []).map((a) => [a.path, a.sha256]))).toEqual(expected);
      expect(await fetchedArtifacts(server, uuid, dir)).toEqual(expected);
      expect(await consoleOf(server, uuid)).toEqual([{ stream: '#', text: 'not an artifact: link is a symbolic link (links are not followed)' }]);
    });

    it('keeps every line of a long console, in order', async () => {
      const uuid = await scheduleScript(server, dir, 'long', 'seq 1 20000\n');
      expect((await finished(uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      const lines = await consoleOf(server, uuid);
      expect(lines.length).toBe(20_000);
      expect(lines.every((line, index) => line.stream === '|' && line.text === String(index + 1))).toBe(true);
    });

    it('ends the job when its shell exits, even with a process left in the background', async () => {
      const uuid = await scheduleScript(server, dir, 'background', 'sleep 300 &\necho left one behind\n');
      const run = await finished(uuid);
      expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
      expect(await consoleOf(server, uuid)).toEqual([{ stream: '|', text: 'left one behind' }]);
    });

    it('kills a job that runs over its timeout', async () => {
      const uuid = await scheduleScript(server, dir, 'slow', 'echo started\nsleep 60\n', ['--timeout', '2s']);
      expect((await finished(uuid)).outcome).toEqual({ kind: 'timeout', seconds: 2 });
      expect(await consoleOf(server, uuid)).toEqual([{ stream: '|', text: 'started' }]);
    });

    it('cancels a running job with SIGTERM, which the job may trap', async () => {
      const uuid = await scheduleScript(server, dir, 'trapping', "trap 'echo caught TERM; exit 5' TERM\necho ready\nsleep 300 &\nwait\n");
      // `observe` follows the console live: the job has set its trap once it says ready.
      const observer = startProcess('builder-client.js', ['--remote', server.address, 'observe', uuid, '--raw']);
      await waitFor('the job to be ready', () => observer.stdout.includes('ready\n') || null, 60_000);
      expect((await client(server, ['cancel', uuid])).code).toBe(0);
      expect((await finished(uuid)).outcome).toEqual({ kind: 'cancelled', message: 'cancelled by a client' });
      expect(await consoleOf(server, uuid)).toEqual([{ stream: '|', text: 'ready' }, { stream: '|', text: 'caught TERM' }]);
      expect((await observer.exit).code).toBe(3);
      expect(observer.stdout).toBe('ready\ncaught TERM\n');
    });

    it('ends a job whose shell stops itself, as stopped', async () => {
      const uuid = await scheduleScript(server, dir, 'stops', 'echo stopping\nkill -STOP $$\necho never\n');
      expect((await finished(uuid)).outcome).toEqual({ kind: 'stopped', signal: 19 });
      expect(await consoleOf(server, uuid)).toEqual([
        { stream: '|', text: 'stopping' }, { stream: '#', text: 'the job\'s shell has been stopped for 3s; ending it' },
      ]);
    });

    it('the worker is still serving after all of it', async () => {
      const uuid = await scheduleScript(server, dir, 'last', 'echo still here\n');
      expect((await finished(uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect(worker.exited).toBeNull();
    });

    it('a worker stopped with SIGTERM mid-job stops the job, reports nothing, and the server queues it again', async () => {
      const uuid = await scheduleScript(server, dir, 'interrupted', 'echo up\nsleep 300\n');
      const observer = startProcess('builder-client.js', ['--remote', server.address, 'observe', uuid, '--raw']);
      await waitFor('the job to be up', () => observer.stdout.includes('up\n') || null, 60_000);
      worker.kill('SIGTERM');
      expect(await worker.exit).toEqual({ code: 128 + 15, signal: null });
      expect(worker.stderr).toContain(`SIGTERM: stopping interrupted (run ${uuid}); the server queues it again`);
      const run = await finished(uuid);
      expect(run.outcome?.kind).toBe('worker-lost');
      const runs = JSON.parse(await ok(server, ['results', 'interrupted', '--json'])) as { uuid: string; state: string }[];
      expect(runs.map((entry) => entry.state)).toEqual(['queued', 'finished']);
    });
  });
}
