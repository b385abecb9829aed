/**
 * Limits, each with its flag and a clear message when hit: console line length, console bytes per
 * run, artifact bytes per run, connections per address, the hello timeout, and bad limit values.
 * (Frame size, artifact size per file and slow observers are in bad-input and artifact-attacks.)
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import {
  PLATFORM, type Proc, type ServerHandle, json, killAll, ok, scheduleScript, show, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';
import { RawPeer } from './raw-peer.js';
import { consoleOf } from './sandbox-conformance.js';

describe('limits', () => {
  let dir: string;
  let server: ServerHandle;
  let worker: Proc;

  beforeAll(async () => {
    dir = tempDir();
    server = await startServer(path.join(dir, 'state'), [
      '--max-line-bytes', '1024', '--max-console-bytes', '8192', '--max-run-artifact-bytes', '100000',
      '--max-connections-per-address', '4', '--hello-timeout', '1s',
    ]);
    worker = startWorker(server, ['--loop'], PLATFORM, dir);
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('cuts a console line over --max-line-bytes, saying so', async () => {
    const uuid = await scheduleScript(server, dir, 'long-line', "head -c 5000 /dev/zero | tr '\\0' x; echo\necho next\n");
    expect((await waitForState(server, uuid, 'finished')).outcome).toEqual({ kind: 'exited', code: 0 });
    expect(await consoleOf(server, uuid)).toEqual([
      { stream: '|', text: `${'x'.repeat(1024)}… (line cut at 1024 bytes, --max-line-bytes)` },
      { stream: '|', text: 'next' },
    ]);
  });

  it('keeps at most --max-console-bytes of a run\'s console, says so once, and lets the job finish', async () => {
    const uuid = await scheduleScript(server, dir, 'chatty', 'seq 1 5000\necho finished > done.txt\n');
    const run = await waitForState(server, uuid, 'finished');
    expect(run.outcome).toEqual({ kind: 'exited', code: 0 });
    expect(run.artifacts?.map((artifact) => artifact.path)).toEqual(['done.txt']);
    const lines = await consoleOf(server, uuid);
    const last = lines.at(-1);
    expect(last).toEqual({ stream: '#', text: 'console limit of 8192 bytes reached: the rest of this run\'s output is not kept (--max-console-bytes)' });
    expect(lines.slice(0, -1).map((line) => line.text)).toEqual(Array.from({ length: lines.length - 1 }, (_, i) => String(i + 1)));
    expect(lines.length).toBeGreaterThan(100);
    expect(fs.statSync(path.join(dir, 'state', 'console', uuid.slice(0, 2), `${uuid}.log`)).size).toBeLessThanOrEqual(8192 + 200);
  });

  it('counts a console\'s bytes exactly near --max-console-bytes, multi-byte characters and all', async () => {
    // 1,000 lines of 14 bytes (9 characters, 5 of them two bytes long) at once. Each line counts its
    // bytes and 16 more (at most 30); counted as 3 bytes per character (43), fewer than 191 would be kept.
    const uuid = await scheduleScript(server, dir, 'accents', "i=1000; while [ $i -lt 2000 ]; do echo \"ééééé$i\"; i=$((i+1)); done\n");
    expect((await waitForState(server, uuid, 'finished')).outcome).toEqual({ kind: 'exited', code: 0 });
    const lines = await consoleOf(server, uuid);
    expect(lines.at(-1)).toEqual({ stream: '#', text: 'console limit of 8192 bytes reached: the rest of this run\'s output is not kept (--max-console-bytes)' });
    const kept = lines.slice(0, -1).map((line) => line.text);
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => `ééééé${1000 + i}`));
    expect(kept.length).toBeGreaterThanOrEqual(200);
    expect(fs.statSync(path.join(dir, 'state', 'console', uuid.slice(0, 2), `${uuid}.log`)).size).toBeLessThanOrEqual(8192 + 200);
  });

  it('refuses a run\'s artifacts over --max-run-artifact-bytes in all', async () => {
    const uuid = await scheduleScript(server, dir, 'big-artifacts', 'head -c 60000 /dev/zero > a.bin\nhead -c 60000 /dev/zero > b.bin\n');
    const run = await waitForState(server, uuid, 'finished');
    expect(run.outcome).toEqual({ kind: 'error', message: 'exited 0, but its artifacts were refused: the run\'s artifacts exceed the limit of 100000 bytes in all (--max-run-artifact-bytes)' });
    expect(run.artifacts).toEqual([]);
  });

  it('closes a connection that says no hello within --hello-timeout', async () => {
    const silent = new RawPeer(server.address);
    await silent.closed;
    expect(silent.frames).toEqual([{ type: 'error', message: 'no hello within 1s: the first message on a connection must be a hello' }]);
  });

  it('refuses connections over --max-connections-per-address from one address, and takes them again once some close', async () => {
    worker.kill('SIGKILL');
    await worker.exit;
    await waitFor('the worker to be gone', async () => (await json<{ status: string }[]>(server, ['workers'])).every((w) => w.status === 'gone') || null);
    const hello = { type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'limit test' };
    const peers = Array.from({ length: 4 }, () => new RawPeer(server.address));
    for (const peer of peers) peer.send(hello);
    for (const peer of peers) expect((await peer.next()).type).toBe('welcome');
    const fifth = new RawPeer(server.address);
    await fifth.closed;
    expect(fifth.frames).toEqual([{ type: 'error', message: 'too many connections from 127.0.0.1: at most 4 at once (--max-connections-per-address)' }]);
    peers[0]?.socket.destroy();
    await peers[0]?.closed;
    await waitFor('a slot to free', async () => {
      const again = new RawPeer(server.address);
      again.send(hello);
      const first = await again.next().catch(() => null);
      again.socket.destroy();
      return first?.type === 'welcome' || null;
    });
    for (const peer of peers) peer.socket.destroy();
  });

  it('refuses a bad limit in one line', async () => {
    const bad = startProcess('builder-server.js', ['--max-line-bytes', '10', '--state-dir', path.join(dir, 'never')]);
    expect([(await bad.exit).code, bad.stderr]).toEqual([1, "builder-server: --max-line-bytes: '10' must be a whole number, at least 1024\n"]);
    const run = await show(server, (await ok(server, ['results', 'long-line', '--json'])).match(/"uuid": "([^"]+)"/)?.[1] ?? '');
    expect(run.state).toBe('finished');
  });
});
