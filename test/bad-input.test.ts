/**
 * Bad input gets a clear error and changes nothing: malformed frames, wrong protocol versions,
 * invalid requests, path-escaping artifacts, and every client error path, while other clients and
 * workers keep working.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Header } from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrame } from '../protocol/frame.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import {
  type ServerHandle, PLATFORM, client, json, killAll, ok, scheduleScript, show, startProcess, startServer, startWorker, tempDir,
  waitFor, waitForState,
} from './harness.js';
import { RawPeer } from './raw-peer.js';

let dir: string;
let server: ServerHandle;

beforeAll(async () => {
  dir = tempDir();
  const templates = path.join(dir, 'templates');
  fs.mkdirSync(path.join(templates, 'greet'), { recursive: true });
  fs.writeFileSync(path.join(templates, 'greet', `${PLATFORM}.sh.hbs`), 'echo "hello {{who}} from {{job}}"\n');
  fs.writeFileSync(path.join(templates, 'greet', 'other-platform.sh.hbs'), 'echo other\n');
  fs.writeFileSync(path.join(templates, 'README.md'), 'a stray file beside the templates\n');
  // A template "file" that cannot be read: a directory where the file should be.
  fs.mkdirSync(path.join(templates, 'broken', `${PLATFORM}.sh.hbs`), { recursive: true });
  server = await startServer(path.join(dir, 'state'), ['--templates', templates]);
});

afterAll(async () => {
  await killAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

const clientHello = { type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'raw test peer' };

describe('malformed frames and hellos', () => {
  it('answers garbage, a 1 GiB length prefix, undecodable msgpack and a wrong version with one error each, while others keep working', async () => {
    const cases: { bytes: Buffer; error: RegExp }[] = [
      { bytes: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), error: /^protocol error: frame of 1195725856 bytes is over the maximum of 16777216 bytes$/ },
      { bytes: Buffer.from([0x40, 0, 0, 0]), error: /^protocol error: frame of 1073741824 bytes is over the maximum of 16777216 bytes$/ },
      { bytes: Buffer.from([0, 0, 0, 2, 0x92, 0x01]), error: /^protocol error: undecodable frame: not valid msgpack/ },
      { bytes: Buffer.from([0, 0, 0, 2, 0x01, 0x02]), error: /^protocol error: frame holds 2 msgpack values, expected exactly one$/ },
      { bytes: encodeFrame({ ...clientHello, version: 99 }), error: new RegExp(`^protocol version mismatch: this server \\(builder [^)]+\\) speaks protocol version ${PROTOCOL_VERSION}, the client \\(raw test peer\\) speaks 99; use matching builder versions$`) },
      { bytes: encodeFrame({ type: 'info', id: 1 }), error: /^invalid 'info' message: .* \(the first message must be a valid hello\)$/ },
      { bytes: encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'x' }), error: /a worker hello must name its platform and hostname/ },
      { bytes: encodeFrame('just a string'), error: /^invalid message: .*hello/ },
      { bytes: encodeFrame({ type: 'hello', version: 99, role: { toString: 1 }, software: { toString: 1 } }), error: /^protocol version mismatch: .* the peer \(unknown software\) speaks 99; use matching builder versions$/ },
    ];
    const uuid = await scheduleScript(server, dir, 'meanwhile', 'echo still working\n');
    const peers = cases.map(({ bytes }) => {
      const peer = new RawPeer(server.address);
      peer.socket.write(bytes);
      return peer;
    });
    const worker = startWorker(server, [], PLATFORM, dir);
    for (const [i, peer] of peers.entries()) {
      const reply = await peer.next();
      expect(reply.type).toBe('error');
      expect(reply.message).toMatch((cases[i] as { error: RegExp }).error);
      await peer.closed;
    }
    expect((await worker.exit).code).toBe(0);
    expect((await show(server, uuid)).status).toBe('success');
    expect(server.proc.exited).toBeNull();
  });

  it('an invalid request after the hello gets a failure naming the field; the connection stays usable', async () => {
    const peer = new RawPeer(server.address);
    peer.send(clientHello);
    expect((await peer.next()).type).toBe('welcome');
    peer.send({ type: 'schedule', id: 7, name: 'bad name', platform: PLATFORM, source: { kind: 'script', script: 'true' }, period: { kind: 'every', seconds: 0 }, replace: false, timeoutSeconds: null });
    const failure = await peer.next();
    expect(failure).toMatchObject({ type: 'failure', id: 7 });
    expect(failure.message).toMatch(/^invalid 'schedule' message: name: must be 1-128 characters.*; period.seconds: /);
    peer.send({ type: 'frobnicate', id: 8 });
    expect(await peer.next()).toMatchObject({ type: 'failure', id: 8, message: expect.stringContaining("invalid 'frobnicate' message") });
    peer.send({ type: 'info', id: 9 });
    expect(await peer.next()).toMatchObject({ type: 'info-result', id: 9 });
    peer.socket.destroy();
    const info = await json<{ jobs: { name: string }[] }>(server, ['info']);
    expect(info.jobs.map((job) => job.name)).not.toContain('bad name');
  });

  it('refuses bad labels, variables, secrets and webhook URLs in a schedule, naming the field, and stores nothing', async () => {
    const peer = new RawPeer(server.address);
    peer.send(clientHello);
    expect((await peer.next()).type).toBe('welcome');
    const base = { type: 'schedule', name: 'bad-extras', platform: PLATFORM, source: { kind: 'script', script: 'true' }, period: { kind: 'never' }, replace: false, timeoutSeconds: null };
    const cases: [Record<string, unknown>, string][] = [
      [{ requires: ['ok', 'not ok'] }, "invalid 'schedule' message: requires.1: labels are 1-64 characters of A-Z a-z 0-9 . _ : = -"],
      [{ env: { BUILDER_UUID: 'x' } }, "invalid 'schedule' message: env.BUILDER_UUID: environment variable names are identifiers (A-Z a-z 0-9 _, not starting with a digit), and BUILDER_* is reserved"],
      [{ env: { A: 1 } }, "invalid 'schedule' message: env.A: Invalid input: expected string, received number"],
      [{ secretEnv: { '9X': 'x' } }, "invalid 'schedule' message: secretEnv.9X: environment variable names are identifiers (A-Z a-z 0-9 _, not starting with a digit), and BUILDER_* is reserved"],
      [{ env: { TOKEN: 'a' }, secretEnv: { TOKEN: 'b' } }, "invalid 'schedule' message: secretEnv.TOKEN: TOKEN is given both as a variable and as a secret"],
      [{ notify: ['ftp://example.org/hook'] }, "invalid 'schedule' message: notify.0: must be an http:// or https:// URL"],
      [{ notify: ['not a url'] }, "invalid 'schedule' message: notify.0: must be an http:// or https:// URL"],
      [{ notify: ['https://user:pw@example.org/hook'] }, "invalid 'schedule' message: notify.0: must not hold a user name or password (they would show in logs and in show): sign deliveries with --notify-secret-file instead"],
    ];
    let id = 100;
    for (const [extra, message] of cases) {
      peer.send({ ...base, id: ++id, ...extra });
      expect(await peer.next(), JSON.stringify(extra)).toEqual({ type: 'failure', id, message });
    }
    peer.socket.destroy();
    const info = await json<{ jobs: { name: string }[] }>(server, ['info']);
    expect(info.jobs.map((job) => job.name)).not.toContain('bad-extras');
  });

  it('a worker reporting progress for a run it is not running, or an invalid progress, is cut off with the reason', async () => {
    const workerHello = { type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'raw test worker', platform: 'raw-progress', hostname: 'raw' };
    const welcomed = async (): Promise<RawPeer> => {
      const peer = new RawPeer(server.address);
      peer.send(workerHello);
      expect(await peer.next()).toEqual(expect.objectContaining({ type: 'welcome', features: ['progress', 'request-after-finished'] }));
      return peer;
    };
    const stray = await welcomed();
    stray.send({ type: 'progress', uuid: '00000000-0000-0000-0000-000000000001', percent: 10, message: 'x' });
    expect(await stray.next()).toEqual({ type: 'error', message: 'progress for run 00000000-0000-0000-0000-000000000001, which is not the run this worker is running (none)' });
    await stray.closed;
    const invalid = await welcomed();
    invalid.send({ type: 'progress', uuid: '00000000-0000-0000-0000-000000000001', percent: 150, message: 'x' });
    expect(await invalid.next()).toEqual({ type: 'error', message: "invalid 'progress' message: percent: Too big: expected number to be <=100" });
    await invalid.closed;
    // The server goes on serving.
    expect((await json<{ workers: number }>(server, ['info'])).workers).toBeGreaterThanOrEqual(0);
  });
});

/** A server that speaks another protocol version, to see what the client and worker say. */
async function futureServer(): Promise<{ address: string; close: () => void }> {
  const srv = net.createServer((socket) => {
    const decoder = new FrameDecoder();
    socket.on('data', (data) => {
      for (const value of decoder.push(data)) {
        const hello = value as { version: number; role: string };
        socket.end(encodeFrame({ type: 'error', message: `protocol version mismatch: this server (builder 9.0.0) speaks protocol version ${PROTOCOL_VERSION + 1}, the ${hello.role} speaks ${hello.version}; use matching builder versions` }));
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  return { address: `127.0.0.1:${(srv.address() as net.AddressInfo).port}`, close: () => srv.close() };
}

describe('slow observers', () => {
  it('an observer that stops reading falls back to the console file and still gets every line; the run and other observers are not slowed', async () => {
    const uuid = await scheduleScript(server, dir, 'chatty', 'yes 0123456789012345678901234567890123456789012345678901234567 | head -n 600000\necho last line\n');
    const slow = new RawPeer(server.address);
    slow.send(clientHello);
    expect((await slow.next()).type).toBe('welcome');
    slow.send({ type: 'observe', id: 1, uuid });
    expect(await slow.next()).toMatchObject({ type: 'observing', id: 1 });
    slow.socket.pause();
    const fast = client(server, ['observe', uuid, '--raw']);
    // The job prints 36 MB while the slow observer reads nothing: far past the 8 MiB backlog.
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    const observed = await fast;
    expect(observed.code).toBe(0);
    const lines = observed.stdout.split('\n');
    expect(lines).toHaveLength(600002);
    expect(lines.at(-2)).toBe('last line');
    slow.socket.resume();
    const texts: string[] = [];
    const last = await (async () => {
      for (;;) {
        const frame = await slow.next();
        if (frame.type === 'console') for (const chunk of frame.chunks as { text: string }[]) texts.push(...chunk.text.split('\n'));
        else if (frame.type !== 'run-update') return frame;
      }
    })();
    expect(last).toMatchObject({ type: 'run-end', id: 1, run: { uuid, state: 'finished' } });
    expect(texts).toHaveLength(600001);
    expect(texts.slice(0, 600000).every((text) => text === '0123456789012345678901234567890123456789012345678901234567')).toBe(true);
    expect(texts.at(-1)).toBe('last line');
    slow.socket.destroy();
    expect((await show(server, uuid)).status).toBe('success');
  });
});

describe('version mismatch seen from the client and the worker', () => {
  it('both print which versions are spoken and exit 2', async () => {
    const future = await futureServer();
    try {
      const result = await client(future, ['info']);
      expect(result.code).toBe(2);
      expect(result.stderr).toBe(`builder-client: the server refused the connection: protocol version mismatch: this server (builder 9.0.0) speaks protocol version ${PROTOCOL_VERSION + 1}, the client speaks ${PROTOCOL_VERSION}; use matching builder versions\n`);
      const worker = startWorker(future);
      expect((await worker.exit).code).toBe(2);
      expect(worker.stderr).toContain(`speaks protocol version ${PROTOCOL_VERSION + 1}, the worker speaks ${PROTOCOL_VERSION}`);
    } finally {
      future.close();
    }
  });
});

describe('artifacts that try to escape', () => {
  it('a worker uploading ../ paths gets its run recorded as an error and nothing is written outside the store', async () => {
    const uuid = await scheduleScript(server, dir, 'escape', 'true\n');
    const peer = new RawPeer(server.address);
    peer.send({ type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'evil worker', platform: PLATFORM, hostname: 'evil', labels: [] });
    expect((await peer.next()).type).toBe('welcome');
    peer.send({ type: 'request-job' });
    const job = await peer.next();
    expect(job).toMatchObject({ type: 'job', uuid, name: 'escape' });
    const header = new Header({ path: '../../escaped.txt', mode: 0o644, size: 5, mtime: new Date(0), type: 'File' });
    header.encode();
    const tar = Buffer.concat([header.block as Buffer, Buffer.from('evil\n'), Buffer.alloc(507), Buffer.alloc(1024)]);
    peer.send({ type: 'upload', uuid, chunk: tar });
    peer.send({ type: 'finished', uuid, outcome: { kind: 'exited', code: 0 } });
    expect(await peer.next()).toEqual({ type: 'finished-ack', uuid });
    peer.socket.destroy();
    const run = await show(server, uuid);
    expect(run.outcome).toEqual({ kind: 'error', message: 'exited 0, but its artifacts were refused: artifact "../../escaped.txt" refused: path contains \'..\'' });
    expect(run.artifacts).toEqual([]);
    expect(fs.existsSync(path.join(dir, 'escaped.txt'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'state', 'escaped.txt'))).toBe(false);
    const observed = await client(server, ['observe', uuid]);
    expect(observed.code).toBe(3);
    expect(observed.stdout).toContain('# artifacts refused: artifact "../../escaped.txt" refused');
  });
});

describe('a worker asking for its next job before the previous one is confirmed', () => {
  const platform = 'early-platform';
  const queue = async (name: string): Promise<string> => {
    fs.writeFileSync(path.join(dir, `${name}.sh`), 'true\n');
    return (await ok(server, ['schedule', name, platform, path.join(dir, `${name}.sh`)])).trim();
  };
  const rawWorker = async (): Promise<RawPeer> => {
    const peer = new RawPeer(server.address);
    peer.send({ type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'raw worker', platform, hostname: 'raw', labels: [] });
    const welcome = await peer.next();
    expect(welcome).toMatchObject({ type: 'welcome', features: ['progress', 'request-after-finished'] });
    return peer;
  };

  it('right after finished: the server confirms the outcome, then hands it the next run, both in one write', async () => {
    const first = await queue('early-1');
    const second = await queue('early-2');
    const peer = await rawWorker();
    peer.send({ type: 'request-job' });
    expect(await peer.next()).toMatchObject({ type: 'job', uuid: first });
    peer.socket.write(Buffer.concat([
      encodeFrame({ type: 'finished', uuid: first, outcome: { kind: 'exited', code: 0 } }),
      encodeFrame({ type: 'request-job' }),
    ]));
    expect(await peer.next()).toEqual({ type: 'finished-ack', uuid: first });
    const ackRead = peer.lastRead;
    expect(await peer.next()).toMatchObject({ type: 'job', uuid: second });
    // The next run started in the outcome's commit, and left with its acknowledgement.
    expect(peer.lastRead).toBe(ackRead);
    peer.send({ type: 'finished', uuid: second, outcome: { kind: 'exited', code: 1 } });
    expect(await peer.next()).toEqual({ type: 'finished-ack', uuid: second });
    peer.socket.destroy();
    expect((await show(server, first)).outcome).toEqual({ kind: 'exited', code: 0 });
    expect((await show(server, second)).outcome).toEqual({ kind: 'exited', code: 1 });
  });

  it('a worker waiting for a run it may take still waits, and one given its next run with its acknowledgement waits no more', async () => {
    const platform2 = 'early-labels';
    const queueOn = async (name: string, requires: string[] = []): Promise<string> => {
      fs.writeFileSync(path.join(dir, `${name}.sh`), 'true\n');
      return (await ok(server, ['schedule', name, platform2, path.join(dir, `${name}.sh`), ...requires.flatMap((label) => ['--requires', label])])).trim();
    };
    const join = async (hostname: string, labels: string[]): Promise<RawPeer> => {
      const peer = new RawPeer(server.address);
      peer.send({ type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'raw worker', platform: platform2, hostname, labels });
      expect((await peer.next()).type).toBe('welcome');
      return peer;
    };
    const first = await queueOn('labels-1');
    const gpu = await join('gpu', ['gpu']);
    gpu.send({ type: 'request-job' });
    expect(await gpu.next()).toMatchObject({ type: 'job', uuid: first });
    // Asks while nothing is queued that it may run; the run queued next needs a label it lacks.
    const plain = await join('plain', []);
    plain.send({ type: 'request-job' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const needsGpu = await queueOn('labels-gpu', ['gpu']);
    gpu.socket.write(Buffer.concat([
      encodeFrame({ type: 'finished', uuid: first, outcome: { kind: 'exited', code: 0 } }),
      encodeFrame({ type: 'request-job' }),
    ]));
    expect(await gpu.next()).toEqual({ type: 'finished-ack', uuid: first });
    expect(await gpu.next()).toMatchObject({ type: 'job', uuid: needsGpu });
    // The plain worker asked first and still waits; the gpu worker, busy again, gets nothing more.
    const second = await queueOn('labels-2');
    expect(await plain.next()).toMatchObject({ type: 'job', uuid: second });
    const third = await queueOn('labels-3');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(gpu.frames).toEqual([]);
    expect(plain.frames).toEqual([]);
    expect((await show(server, third)).status).toBe('queued');
    gpu.socket.destroy();
    plain.socket.destroy();
  });

  /**
   * A scripted server for a real builder-worker: it lists `features`, hands out `jobs` jobs, confirms
   * each outcome `ackMs` late, and records in order what it receives and sends (heartbeats aside).
   */
  const scriptedServer = async (features: string[] | undefined, jobs: number, ackMs: number) => {
    const seen: string[] = [];
    /** The messages that arrived in one read, for each read that brought more than one. */
    const together: string[] = [];
    let given = 0;
    const sockets = new Set<net.Socket>();
    const srv = net.createServer((socket) => {
      sockets.add(socket);
      const decoder = new FrameDecoder();
      const send = (message: Record<string, unknown>): void => {
        if (socket.destroyed) return;
        seen.push(`> ${message.type as string}`);
        socket.write(encodeFrame(message));
      };
      let acking = false;
      let waiting = false;
      const giveJob = (): void => {
        if (given >= jobs) return;
        given++;
        send({ type: 'job', uuid: `00000000-0000-4000-8000-00000000000${given}`, name: `scripted-${given}`, platform, script: 'true\n', timeoutSeconds: 60 });
      };
      socket.on('error', () => {});
      socket.on('close', () => seen.push('closed'));
      socket.on('data', (data) => {
        const values = decoder.push(data);
        const types = values.map((value) => (value as { type: string }).type).filter((type) => type !== 'heartbeat');
        if (types.length > 1) together.push(types.join('+'));
        for (const value of values) {
          const message = value as { type: string; uuid?: string };
          if (message.type === 'heartbeat') continue;
          seen.push(message.type);
          if (message.type === 'hello') {
            send({ type: 'welcome', version: PROTOCOL_VERSION, software: 'builder 0.0.9', heartbeatSeconds: 10, maxFrameBytes: 16 * 1024 * 1024, ...(features === undefined ? {} : { features }) });
          }
          // As a real server: a request that comes before the outcome is confirmed waits for that.
          if (message.type === 'request-job') {
            if (acking) waiting = true;
            else giveJob();
          }
          if (message.type === 'finished') {
            acking = true;
            setTimeout(() => {
              send({ type: 'finished-ack', uuid: message.uuid });
              acking = false;
              if (waiting) giveJob();
              waiting = false;
            }, ackMs);
          }
        }
      });
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
    return {
      seen, together, address: `127.0.0.1:${(srv.address() as net.AddressInfo).port}`, close: () => srv.close(),
      /** Closes every connection it has. */
      drop: () => { for (const socket of sockets) socket.destroy(); },
    };
  };
  const count = (seen: string[], type: string): number => seen.filter((entry) => entry === type).length;

  it('builder-worker asks a server without request-after-finished only once the outcome is confirmed; stopped idle, it exits 143', async () => {
    const older = await scriptedServer(undefined, 2, 300);
    const worker = startWorker(older, ['--loop'], platform, dir);
    try {
      await waitFor('the third request-job', async () => (count(older.seen, 'request-job') === 3 ? true : null));
      expect(older.seen).toEqual([
        'hello', '> welcome', 'request-job', '> job', 'finished', '> finished-ack',
        'request-job', '> job', 'finished', '> finished-ack', 'request-job',
      ]);
      // Idle now: a service stop closes the connection and exits 128 + SIGTERM.
      worker.kill('SIGTERM');
      expect((await worker.exit).code).toBe(143);
      await waitFor('the connection to close', async () => (older.seen.includes('closed') ? true : null));
    } finally {
      worker.kill('SIGKILL');
      older.close();
    }
  });

  it('builder-worker stopped while it waits to reconnect exits 143 at once, and so when the server goes away as it is stopped', async () => {
    const gone = await scriptedServer(['progress', 'request-after-finished'], 0, 0);
    gone.close();
    const waiting = startWorker(gone, ['--loop'], platform, dir);
    await waitFor('a failed dial', async () => (waiting.stderr.includes('cannot reach the server') ? true : null));
    waiting.kill('SIGTERM');
    expect((await waiting.exit).code).toBe(143);
    // The server closes the idle worker's connection just as the worker is stopped (a local
    // `npm start` stopping both): the stop is not lost between waiting and reconnecting.
    const closing = await scriptedServer(['progress', 'request-after-finished'], 0, 0);
    const worker = startWorker(closing, ['--loop'], platform, dir);
    try {
      await waitFor('the request-job', async () => (count(closing.seen, 'request-job') === 1 ? true : null));
      closing.close();
      closing.drop();
      worker.kill('SIGTERM');
      expect((await worker.exit).code).toBe(143);
    } finally {
      worker.kill('SIGKILL');
    }
  });

  it('builder-worker stopped after asking early leaves before the server can hand it a job', async () => {
    // The outcome is confirmed 2 s late; the worker has asked for its next job long before.
    const slow = await scriptedServer(['progress', 'request-after-finished'], 2, 2000);
    const worker = startWorker(slow, ['--loop'], platform, dir);
    try {
      await waitFor('the early request-job', async () => (count(slow.seen, 'request-job') === 2 ? true : null));
      expect(slow.seen).toEqual(['hello', '> welcome', 'request-job', '> job', 'finished', 'request-job']);
      // Its job directory removed at once, it asked in the same write as it reported.
      expect(slow.together).toEqual(['finished+request-job']);
      worker.kill('SIGTERM');
      expect((await worker.exit).code).toBe(143);
      expect(worker.stderr).toContain('SIGTERM: stopping after run 00000000-0000-4000-8000-000000000001 of scripted-1, which is reported');
      await waitFor('the connection to close', async () => (slow.seen.includes('closed') ? true : null));
      // It closed before the acknowledgement, so no second job was handed to it.
      expect(slow.seen).toEqual(['hello', '> welcome', 'request-job', '> job', 'finished', 'request-job', 'closed']);
    } finally {
      worker.kill('SIGKILL');
      slow.close();
    }
  });

  it('before finished: a protocol violation, and the run is recorded lost and queued again', async () => {
    const uuid = await queue('early-3');
    const peer = await rawWorker();
    peer.send({ type: 'request-job' });
    expect(await peer.next()).toMatchObject({ type: 'job', uuid });
    peer.send({ type: 'request-job' });
    expect(await peer.next()).toEqual({ type: 'error', message: `request-job while run ${uuid} is not finished` });
    await peer.closed;
    const run = await show(server, uuid);
    expect(run.state).toBe('finished');
    expect(run.outcome).toMatchObject({ kind: 'worker-lost', message: expect.stringMatching(/sent an invalid message: request-job while run .* is not finished$/) });
    // The job is queued again: a well-behaved worker runs it.
    const again = await rawWorker();
    again.send({ type: 'request-job' });
    const job = await again.next();
    expect(job).toMatchObject({ type: 'job', name: 'early-3' });
    expect(job.uuid).not.toBe(uuid);
    again.send({ type: 'finished', uuid: job.uuid, outcome: { kind: 'exited', code: 0 } });
    expect(await again.next()).toEqual({ type: 'finished-ack', uuid: job.uuid });
    again.socket.destroy();
  });
});

describe('client errors: one line on stderr, a non-zero exit, nothing changed', () => {
  const unknownUuid = '00000000-1111-2222-3333-444444444444';
  const cases: { args: string[]; code: number; stderr: RegExp }[] = [
    { args: ['execute', 'no-such-job'], code: 2, stderr: /^builder-client: unknown job no-such-job\n$/ },
    { args: ['unschedule', 'no-such-job'], code: 2, stderr: /^builder-client: unknown job no-such-job\n$/ },
    { args: ['results', 'no-such-job'], code: 2, stderr: /^builder-client: unknown job no-such-job\n$/ },
    { args: ['reschedule', 'no-such-job', 'now'], code: 2, stderr: /^builder-client: unknown job no-such-job\n$/ },
    { args: ['show', unknownUuid], code: 2, stderr: new RegExp(`^builder-client: unknown run ${unknownUuid}\\n$`) },
    { args: ['observe', unknownUuid], code: 2, stderr: new RegExp(`^builder-client: unknown run ${unknownUuid}\\n$`) },
    { args: ['cancel', unknownUuid], code: 2, stderr: new RegExp(`^builder-client: unknown run ${unknownUuid}\\n$`) },
    { args: ['fetch', unknownUuid], code: 2, stderr: new RegExp(`^builder-client: unknown run ${unknownUuid}\\n$`) },
    { args: ['undrop-platform', 'never-dropped'], code: 2, stderr: /^builder-client: platform never-dropped is not dropped\n$/ },
    { args: ['show', 'not-a-uuid'], code: 1, stderr: /^builder-client: invalid run UUID 'not-a-uuid': expected 8-4-4-4-12 lowercase hex digits\n$/ },
    { args: ['schedule', 'x', PLATFORM, '/nonexistent/script.sh'], code: 1, stderr: /^builder-client: cannot read script file \/nonexistent\/script.sh: ENOENT\n$/ },
    { args: ['schedule', 'bad/name', PLATFORM, '/dev/null'], code: 1, stderr: /^builder-client: invalid job name 'bad\/name'/ },
    { args: ['schedule', 'x', PLATFORM, '/dev/null', '--every', '5x'], code: 1, stderr: /^builder-client: invalid duration '5x': use a number and a unit s, m, h, d or w, e\.g\. 30m, 6h, 1d or 1d12h\n$/ },
    { args: ['schedule', 'x', PLATFORM, '/dev/null', '--cron', 'every tuesday'], code: 1, stderr: /^builder-client: invalid cron expression 'every tuesday': / },
    { args: ['schedule', 'x', PLATFORM, '/dev/null', '--every', '1d', '--cron', '0 3 * * *'], code: 1, stderr: /^builder-client: give at most one of --every, --cron and --period\n$/ },
    { args: ['schedule', 'x', PLATFORM, '/dev/null', '--timeout', 'soon'], code: 1, stderr: /^builder-client: --timeout: invalid duration 'soon'/ },
    { args: ['schedule', 'x', PLATFORM, '/dev/null', '--timeout', '25d'], code: 1, stderr: /^builder-client: --timeout: 25d is longer than the maximum of 3w3d\n$/ },
    { args: ['reschedule', 'x', 'tomorrow-ish'], code: 1, stderr: /^builder-client: invalid time 'tomorrow-ish': use an ISO 8601 time/ },
    { args: ['schedule-template', 'x', PLATFORM, 'no-such-template'], code: 2, stderr: /^builder-client: unknown template no-such-template; known templates: broken, greet\n$/ },
    { args: ['schedule-template', 'x', PLATFORM, 'broken'], code: 2, stderr: new RegExp(`^builder-client: template broken for ${PLATFORM}: cannot read .*/broken/${PLATFORM}\\.sh\\.hbs: EISDIR\\n$`) },
    { args: ['schedule-template', 'x', 'third-platform', 'greet', '--var', 'who=me'], code: 2, stderr: /^builder-client: template greet has no variant for platform third-platform; platforms that have one: other-platform, test-platform\n$/ },
    { args: ['schedule-template', 'x', PLATFORM, 'greet'], code: 2, stderr: new RegExp(`^builder-client: template greet for ${PLATFORM} needs variable 'who': give it with --var who=VALUE\\n$`) },
    { args: ['schedule-template', 'x', PLATFORM, 'greet', '--var', 'not an identifier=1'], code: 1, stderr: /^builder-client: invalid --var 'not an identifier=1'/ },
    { args: [], code: 1, stderr: /^builder-client: give a command; --help lists them\n$/ },
    { args: ['frobnicate'], code: 1, stderr: /^builder-client: Unknown argument: frobnicate\n$/ },
  ];
  for (const { args, code, stderr } of cases) {
    it(`builder-client ${args.join(' ') || '(no command)'} → exit ${code}`, async () => {
      const result = await client(server, args);
      expect(result.stderr).toMatch(stderr);
      expect(result.code).toBe(code);
      expect(result.stdout).toBe('');
    });
  }

  it('builder-worker and builder-server refuse a bad address with exit 1', async () => {
    const worker = startWorker({ address: 'bogus' });
    expect((await worker.exit).code).toBe(1);
    expect(worker.stderr).toBe("builder-worker: --remote: invalid address 'bogus': expected HOST:PORT, for example 127.0.0.1:1234\n");
    const cli = await client(null, ['info'], { BUILDER_REMOTE: 'no-port-here' });
    expect(cli.code).toBe(1);
    expect(cli.stderr).toBe("builder-client: invalid address 'no-port-here': expected HOST:PORT, for example 127.0.0.1:1234\n");
    const srv = startProcess('builder-server.js', ['--listen', 'bogus', '--state-dir', path.join(dir, 'unused')]);
    expect((await srv.exit).code).toBe(1);
    expect(srv.stderr).toBe("builder-server: --listen: invalid address 'bogus': expected HOST:PORT, for example 127.0.0.1:1234\n");
  });

  it('says which address it could not reach and how to set it', async () => {
    const result = await client(null, ['info'], { BUILDER_REMOTE: '127.0.0.1:1' });
    expect(result.code).toBe(2);
    expect(result.stderr).toBe('builder-client: cannot reach the server at 127.0.0.1:1 (ECONNREFUSED): is builder-server running there? '
      + '--remote HOST:PORT or the environment variable BUILDER_REMOTE sets the address\n');
  });

  it('refuses a duplicate job name unless --replace is given, and a template job renders at dispatch', async () => {
    const file = path.join(dir, 'dup.sh');
    fs.writeFileSync(file, 'echo first\n');
    const first = (await ok(server, ['schedule', 'dup', 'dup-platform', file])).trim();
    const again = await client(server, ['schedule', 'dup', 'dup-platform', file]);
    expect(again.code).toBe(2);
    expect(again.stderr).toBe('builder-client: job dup already exists; give --replace to replace it\n');
    const replaced = await client(server, ['schedule-template', 'dup', 'dup-platform', 'greet', '--var', 'who=x', '--replace']);
    expect(replaced.code).toBe(2);
    expect(replaced.stderr).toContain('template greet has no variant for platform dup-platform');

    const templated = (await ok(server, ['schedule-template', 'greeting', PLATFORM, 'greet', '--var', 'who=world'])).trim();
    expect((await startWorker(server, [], PLATFORM, dir).exit).code).toBe(0);
    await waitForState(server, templated, 'finished');
    expect(await ok(server, ['observe', templated, '--raw'])).toBe('hello world from greeting\n');
    expect(await ok(server, ['show', templated, '--script'])).toBe('echo "hello world from greeting"\n');
    const fetchQueued = await client(server, ['fetch', first]);
    expect(fetchQueued.code).toBe(2);
    expect(fetchQueued.stderr).toBe(`builder-client: run ${first} is queued; its artifacts can be fetched once it has finished\n`);
  });
});
