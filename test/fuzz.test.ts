/**
 * A fuzz run against a live server: many connections send random bytes, random frames and mutated
 * valid messages (as clients and as workers) while a real client schedules jobs and a real worker
 * runs them. Afterwards every job ran correctly, the server still answers, and the database passes
 * PRAGMA integrity_check. The number of fuzz frames sent is printed.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame } from '../protocol/frame.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import {
  PLATFORM, type ServerHandle, json, killAll, ok, scheduleScript, sha256, startServer, startWorker, tempDir, waitForState,
} from './harness.js';

const CONNECTIONS = 200;
const FRAMES_PER_CONNECTION = 25;
const UUID = '0b5e9c1e-51f2-4a66-9d3b-3f1f8c1d2e4a';

const clientHello = { type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'fuzz' };
const workerHello = { type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'fuzz', platform: PLATFORM, hostname: 'fuzz', labels: [] };
const SEEDS: unknown[] = [
  { type: 'schedule', id: 1, name: 'fuzzed', platform: PLATFORM, source: { kind: 'script', script: 'echo fuzz' }, period: { kind: 'never' }, replace: false, timeoutSeconds: null },
  { type: 'execute', id: 2, name: 'real-0' },
  { type: 'cancel', id: 3, uuid: UUID },
  { type: 'drop-platform', id: 4, platform: 'fuzz-platform' },
  { type: 'info', id: 5 },
  { type: 'observe', id: 6, uuid: UUID },
  { type: 'request-job' },
  { type: 'output', uuid: UUID, chunks: [{ at: 1, stream: 'out', text: 'x' }] },
  { type: 'upload', uuid: UUID, chunk: new Uint8Array(512) },
  { type: 'finished', uuid: UUID, outcome: { kind: 'exited', code: 0 } },
  { type: 'heartbeat', uuid: UUID },
];

/** Fuzz input: raw bytes, a frame of an arbitrary value, or a seed message with one field changed. */
const fuzzInput = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
  fc.anything({ withTypedArray: true, maxDepth: 3 }).map((value) => encodeFrame(value)),
  fc.tuple(fc.nat(SEEDS.length - 1), fc.string({ maxLength: 12 }), fc.anything({ maxDepth: 2 })).map(([which, key, value]) => {
    const seed = SEEDS[which] as Record<string, unknown>;
    const keys = Object.keys(seed);
    const field = keys[key.length % keys.length] ?? 'type';
    return encodeFrame({ ...seed, [key.length % 3 === 0 ? key : field]: value });
  }),
);

describe('fuzzing a live server', () => {
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

  it('survives random and mutated frames from many connections while real jobs run correctly', async () => {
    startWorker(server, ['--loop'], PLATFORM, dir);
    const inputs = fc.sample(fuzzInput, { numRuns: CONNECTIONS * FRAMES_PER_CONNECTION, seed: 42 });
    let sent = 0;
    const fuzzers = Array.from({ length: CONNECTIONS }, (_, index) => new Promise<void>((resolve) => {
      const [host, port] = server.address.split(':') as [string, string];
      const socket = net.connect({ host, port: Number(port) }, () => {
        // Half say hello first (so their frames reach the request handlers), half do not.
        if (index % 4 === 1) socket.write(encodeFrame(clientHello));
        if (index % 4 === 3) socket.write(encodeFrame(workerHello));
        for (const input of inputs.slice(index * FRAMES_PER_CONNECTION, (index + 1) * FRAMES_PER_CONNECTION)) {
          if (socket.destroyed) break;
          socket.write(input);
          sent += 1;
        }
        setTimeout(() => socket.destroy(), 200);
      });
      socket.on('data', () => {});
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
    }));

    // Meanwhile, the real work.
    const runs: { uuid: string; expected: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const expected = `job ${i} output\n`;
      runs.push({ uuid: await scheduleScript(server, dir, `real-${i}`, `printf '${expected.replace('\n', '\\n')}' > out.txt\n`, ['--period', 'never']), expected });
    }
    await Promise.all(fuzzers);
    for (const run of runs) {
      const done = await waitForState(server, run.uuid, 'finished', 60_000);
      expect(done.outcome).toEqual({ kind: 'exited', code: 0 });
      expect(done.artifacts).toEqual([{ path: 'out.txt', size: run.expected.length, sha256: sha256(run.expected) }]);
    }
    expect(server.proc.exited).toBeNull();
    const info = await json<{ jobs: { name: string }[] }>(server, ['info']);
    // The fuzzers could only add jobs through a valid schedule message, which the seed provides.
    expect(info.jobs.map((job) => job.name).filter((name) => name.startsWith('real-'))).toEqual(runs.map((_, i) => `real-${i}`));
    expect(await ok(server, ['workers'])).toContain(PLATFORM);

    server.proc.kill('SIGKILL');
    await server.proc.exit;
    const db = new Database(path.join(dir, 'state', 'builder.sqlite'), { readonly: true });
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    db.close();
    // Rejections: logged errors and refusals, and connections ended for a bad frame or hello.
    const rejected = server.proc.stderr.split('\n').filter((line) => / (error|refuse) /.test(line)
      || / disconnect .*reason="(?!connection closed|read ECONNRESET)/.test(line)).length;
    process.stdout.write(`fuzz run: ${sent} fuzz inputs over ${CONNECTIONS} connections, ${rejected} rejected with a logged reason; `
      + `${runs.length} real jobs correct; integrity_check ok\n`);
  }, 180_000);
});
