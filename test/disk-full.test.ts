/**
 * A full disk: the state directory is a small tmpfs that the test fills. The server says so and
 * refuses new work (schedule, execute, dispatch) cleanly, keeps and still serves what it had, and
 * goes on by itself once space returns. Needs root (mount); CI runs as root.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type ServerHandle, client, killAll, ok, scheduleScript, show, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI === 'true') throw new Error('CI=true: the disk-full test needs root to mount a tmpfs');
const MIN_FREE = 4 * 1024 * 1024;

describe.runIf(isRoot)('a full disk', () => {
  let dir: string;
  let state: string;
  let server: ServerHandle;

  beforeAll(async () => {
    dir = tempDir();
    state = path.join(dir, 'state');
    fs.mkdirSync(state);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', state]);
    server = await startServer(state, ['--min-free-bytes', String(MIN_FREE)]);
  });
  afterAll(async () => {
    await killAll();
    execFileSync('umount', [state]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses new work while full, keeps what it had, and goes on when space returns', async () => {
    const before = await scheduleScript(server, dir, 'before', 'echo kept > kept.txt\n', ['--period', 'never']);
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    expect((await show(server, before)).outcome).toEqual({ kind: 'exited', code: 0 });
    const waiting = (await ok(server, ['schedule', 'waiting', 'later-platform', path.join(dir, 'before.sh'), '--period', 'never'])).trim();

    // Fill the disk to below the limit.
    const { bavail, bsize } = fs.statfsSync(state);
    const filler = path.join(state, 'filler.bin');
    fs.writeFileSync(filler, Buffer.alloc(bavail * bsize - MIN_FREE / 2));

    const refused = await client(server, ['schedule', 'new-job', PLATFORM, path.join(dir, 'before.sh')]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(new RegExp(`^builder-client: the disk holding ${state} is full \\(\\d+ bytes free, at least ${MIN_FREE} needed, --min-free-bytes\\): `
      + 'no new work is accepted until space is freed; nothing stored was lost\n$'));
    expect((await client(server, ['execute', 'before'])).stderr).toContain('is full');
    // What it had, it still serves.
    expect((await show(server, before)).artifacts?.map((a) => a.path)).toEqual(['kept.txt']);
    expect((await client(server, ['fetch', before, '-o', path.join(dir, 'fetched')])).code).toBe(0);
    expect(fs.readFileSync(path.join(dir, 'fetched', 'kept.txt'), 'utf8')).toBe('kept\n');
    // A worker that asks now gets nothing: the queued run waits.
    const later = startWorker(server, [], 'later-platform', dir);
    await waitFor('the server to hold the run back', () => /disk-full platform=later-platform/.test(server.proc.stderr) || null);
    expect((await show(server, waiting)).state).toBe('queued');

    fs.rmSync(filler);
    // Space is back: the held run is dispatched by itself, and new work is accepted again.
    expect((await later.exit).code).toBe(0);
    expect((await waitForState(server, waiting, 'finished')).outcome).toEqual({ kind: 'exited', code: 0 });
    expect((await client(server, ['schedule', 'new-job', 'later-platform', path.join(dir, 'before.sh')])).code).toBe(0);

    server.proc.kill('SIGKILL');
    await server.proc.exit;
    const db = new Database(path.join(state, 'builder.sqlite'), { readonly: true });
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    expect((db.prepare('SELECT count(*) AS n FROM jobs').get() as { n: number }).n).toBe(3);
    db.close();
  }, 120_000);
});
