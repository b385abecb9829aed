/**
 * Retention end to end: a server with --keep-runs removes old runs with their console and artifact
 * files (a file only when no kept run shares its hash), a job's own --keep-runs wins, a restart
 * with a smaller limit applies it, free database pages are handed back, and the web view and the
 * CLI answer "not found" for a removed run, cleanly.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type ServerHandle, client, killAll, ok, scheduleScript, sha256, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

describe('retention', () => {
  let dir: string;
  let state: string;
  let server: ServerHandle;
  const runs: string[] = [];

  const consoleFile = (uuid: string): string => path.join(state, 'console', uuid.slice(0, 2), `${uuid}.log`);
  const artifactFile = (hash: string): string => path.join(state, 'artifacts', hash.slice(0, 2), hash);

  beforeAll(async () => {
    dir = tempDir();
    state = path.join(dir, 'state');
    server = await startServer(state, ['--keep-runs', '2', '--vacuum-every', '1s', '--http', '127.0.0.1:0']);
    startWorker(server, ['--loop'], PLATFORM, dir);
    // Each run: a console line (a run that prints nothing has no console file), one file shared by
    // all runs, one of its own (the run's uuid), and a large script so that removed runs free pages.
    const script = `echo "run $BUILDER_UUID"\necho shared > shared.txt\necho "$BUILDER_UUID" > own.txt\n: '${'x'.repeat(60_000)}'\n`;
    runs.push(await scheduleScript(server, dir, 'kept', script, ['--period', 'never']));
    await waitForState(server, runs[0] ?? '', 'finished');
    for (let i = 1; i < 4; i++) {
      runs.push((await ok(server, ['execute', 'kept'])).trim());
      await waitForState(server, runs[i] ?? '', 'finished');
    }
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the newest runs and removes the others with their files', async () => {
    const left = JSON.parse(await ok(server, ['results', 'kept', '--json'])) as { uuid: string }[];
    expect(left.map((run) => run.uuid)).toEqual([runs[3], runs[2]]);
    await waitFor('the removed runs\' files to go', () => !fs.existsSync(consoleFile(runs[0] ?? '')) && !fs.existsSync(consoleFile(runs[1] ?? '')) || null);
    for (const gone of runs.slice(0, 2)) expect(fs.existsSync(artifactFile(sha256(`${gone}\n`))), gone).toBe(false);
    for (const kept of runs.slice(2)) {
      expect(fs.existsSync(consoleFile(kept))).toBe(true);
      expect(fs.existsSync(artifactFile(sha256(`${kept}\n`)))).toBe(true);
    }
    // Shared by the kept runs: stays.
    expect(fs.existsSync(artifactFile(sha256('shared\n')))).toBe(true);
    await waitFor('the garbage line', () => /garbage artifacts=1 consoles=1 kept=1/.test(server.proc.stderr) || null);
  });

  it('hands free pages back to the file system on schedule', async () => {
    await waitFor('a vacuum', () => /vacuum freedPages=(\d+)/.exec(server.proc.stderr)?.[1], 10_000)
      .then((pages) => expect(Number(pages)).toBeGreaterThan(0));
  });

  it('answers "not found" for a removed run, in the CLI and the web view', async () => {
    const removed = runs[0] ?? '';
    const shown = await client(server, ['show', removed]);
    expect([shown.code, shown.stderr]).toEqual([2, `builder-client: unknown run ${removed}\n`]);
    const fetched = await client(server, ['fetch', removed, '-o', path.join(dir, 'nothing')]);
    expect(fetched.code).toBe(2);
    const page = await fetch(`${server.web}/run/${removed}`);
    expect(page.status).toBe(404);
    expect(await page.text()).toContain(`no run ${removed} (it may have been removed by retention)`);
    expect((await fetch(`${server.web}/run/${removed}/artifact/own.txt`)).status).toBe(404);
    const compare = await fetch(`${server.web}/compare/${removed}/${runs[3]}`, { headers: { Accept: 'application/json' } });
    expect([compare.status, await compare.json()]).toEqual([404, { error: `no run ${removed} (it may have been removed by retention)` }]);
  });

  it('a job keeps its own number of runs, and a restart applies a smaller server limit', async () => {
    const own = await scheduleScript(server, dir, 'keeps-one', 'echo once\n', ['--period', 'never', '--keep-runs', '1']);
    await waitForState(server, own, 'finished');
    const again = (await ok(server, ['execute', 'keeps-one'])).trim();
    await waitForState(server, again, 'finished');
    expect((JSON.parse(await ok(server, ['results', 'keeps-one', '--json'])) as { uuid: string }[]).map((run) => run.uuid)).toEqual([again]);

    await killAll();
    server = await startServer(state, ['--keep-runs', '1'], server.address);
    expect(server.proc.stderr).toMatch(/retention removed=1 reason=start/);
    expect((JSON.parse(await ok(server, ['results', 'kept', '--json'])) as { uuid: string }[]).map((run) => run.uuid)).toEqual([runs[3]]);
    expect(fs.existsSync(consoleFile(runs[2] ?? ''))).toBe(false);
    expect(fs.existsSync(artifactFile(sha256('shared\n')))).toBe(true);
    expect((await client(server, ['schedule', 'bad', PLATFORM, path.join(dir, 'kept.sh'), '--keep-runs', '0'])).stderr)
      .toBe("builder-client: --keep-runs: '0' is not a whole number from 1 to 1000000\n");
  });
});
