/**
 * Webhooks end to end: a real HTTP receiver on 127.0.0.1, the real server, worker and client. The
 * receiver may answer, fail, or not be listening at all (and come back later).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type ServerHandle, client, json, killAll, ok, scheduleScript, sha256, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

interface Received { path: string; headers: http.IncomingHttpHeaders; raw: string; body: Record<string, unknown> }

/** A webhook receiver: records every POST, answers with `status`. */
class Receiver {
  requests: Received[] = [];
  status = 200;
  private server: http.Server | null = null;
  port = 0;

  async start(port = 0): Promise<this> {
    this.server = http.createServer((req, res) => {
      let raw = '';
      req.setEncoding('utf8').on('data', (chunk: string) => { raw += chunk; }).on('end', () => {
        this.requests.push({ path: req.url ?? '', headers: req.headers, raw, body: JSON.parse(raw) as Record<string, unknown> });
        res.writeHead(this.status).end();
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(port, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  url(route: string): string {
    return `http://127.0.0.1:${this.port}${route}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server === null ? resolve() : this.server.close(() => resolve())));
    this.server = null;
  }

  events(route: string, run?: string): string[] {
    return this.requests.filter((r) => r.path === route && (run === undefined || r.body.run === run)).map((r) => r.body.event as string);
  }
}

/** A port nothing listens on (for now): taken from the OS, then released. */
async function freePort(): Promise<number> {
  const probe = await new Receiver().start();
  const { port } = probe;
  await probe.stop();
  return port;
}

interface DeliveryJson { url: string; event: string; state: string; attempts: number; lastError: string | null }

let dir: string;
const receivers: Receiver[] = [];

beforeAll(() => {
  dir = tempDir();
});

afterAll(async () => {
  await killAll();
  for (const receiver of receivers) await receiver.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function receiver(port = 0): Promise<Receiver> {
  const r = await new Receiver().start(port);
  receivers.push(r);
  return r;
}

describe('webhooks', () => {
  it("POSTs queued, started and finished to the server's and the job's URLs, in order, signed, with links to the console and artifacts", async () => {
    const hooks = await receiver();
    const secretFile = path.join(dir, 'notify.key');
    fs.writeFileSync(secretFile, 'shared-signing-key\n');
    const server = await startServer(path.join(dir, 'state-1'), [
      '--http', '127.0.0.1:0', '--notify', hooks.url('/all'), '--notify-secret-file', secretFile,
    ]);
    const uuid = await scheduleScript(server, dir, 'hooked', 'echo built > out.txt\necho done\n', ['--notify', hooks.url('/job'), '--period', 'never']);
    startWorker(server, [], PLATFORM, dir);
    await waitForState(server, uuid, 'finished');
    await waitFor('six deliveries', () => (hooks.requests.length >= 6 ? true : null));
    expect(hooks.events('/all', uuid)).toEqual(['queued', 'started', 'finished']);
    expect(hooks.events('/job', uuid)).toEqual(['queued', 'started', 'finished']);
    for (const request of hooks.requests) {
      expect(request.headers['content-type']).toBe('application/json');
      expect(request.headers['x-builder-event']).toBe(request.body.event);
      expect(request.headers['x-builder-delivery']).toMatch(/^\d+$/);
      const expected = `sha256=${crypto.createHmac('sha256', 'shared-signing-key').update(request.raw).digest('hex')}`;
      expect(request.headers['x-builder-signature-256']).toBe(expected);
    }
    const queued = hooks.requests.find((r) => r.path === '/job' && r.body.event === 'queued')?.body;
    expect(queued).toEqual(expect.objectContaining({ job: 'hooked', run: uuid, platform: PLATFORM, status: 'queued', outcome: null, startedAt: null, artifacts: [] }));
    const finished = hooks.requests.find((r) => r.path === '/job' && r.body.event === 'finished')?.body;
    expect(finished).toEqual({
      event: 'finished', job: 'hooked', run: uuid, platform: PLATFORM, status: 'success',
      outcome: { kind: 'exited', code: 0 }, outcomeText: 'exited 0', worker: expect.any(String),
      queuedAt: expect.stringMatching(/Z$/), startedAt: expect.stringMatching(/Z$/), finishedAt: expect.stringMatching(/Z$/),
      links: { run: `${server.web}/run/${uuid}`, console: `${server.web}/run/${uuid}/console`, job: `${server.web}/job/hooked` },
      artifacts: [{ path: 'out.txt', size: 6, sha256: sha256('built\n'), url: `${server.web}/run/${uuid}/artifact/out.txt` }],
    });
    // The links work.
    const links = finished?.links as { console: string };
    expect(await (await fetch(links.console)).text()).toMatch(/^\d+\.\d{3} \| done\n$/);
    const artifact = Buffer.from(await (await fetch((finished?.artifacts as { url: string }[])[0]?.url ?? '')).arrayBuffer());
    expect(sha256(artifact)).toBe(sha256('built\n'));
    // show lists every delivery.
    const run = await json<{ deliveries: DeliveryJson[] }>(server, ['show', uuid]);
    expect(run.deliveries.map((d) => [d.url, d.event, d.state, d.attempts])).toEqual([
      [hooks.url('/all'), 'queued', 'delivered', 1], [hooks.url('/job'), 'queued', 'delivered', 1],
      [hooks.url('/all'), 'started', 'delivered', 1], [hooks.url('/job'), 'started', 'delivered', 1],
      [hooks.url('/all'), 'finished', 'delivered', 1], [hooks.url('/job'), 'finished', 'delivered', 1],
    ]);
    expect(await ok(server, ['show', uuid])).toContain(`notify: finished → ${hooks.url('/job')}: delivered\n`);
  });

  it('a receiver that is down gets every event, in order, once it is back; the run is never held up', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/hook`;
    const server = await startServer(path.join(dir, 'state-2'), ['--notify-backoff', '300ms', '--notify-attempts', '20']);
    const uuid = await scheduleScript(server, dir, 'while-down', 'echo hi\n', ['--notify', url, '--period', 'never']);
    startWorker(server, [], PLATFORM, dir);
    // The run finishes while nothing listens.
    expect((await waitForState(server, uuid, 'finished')).outcome).toEqual({ kind: 'exited', code: 0 });
    await waitFor('a failed attempt in the log', () => server.proc.stderr.includes(`url=${url} attempt=1/20 result=retry problem=ECONNREFUSED retryInMs=300`));
    const pending = await json<{ deliveries: DeliveryJson[] }>(server, ['show', uuid]);
    expect(pending.deliveries[0]).toEqual(expect.objectContaining({ event: 'queued', state: 'pending', lastError: 'ECONNREFUSED' }));
    expect(pending.deliveries.slice(1).map((d) => [d.event, d.state, d.attempts])).toEqual([['started', 'pending', 0], ['finished', 'pending', 0]]);
    expect(await ok(server, ['show', uuid])).toMatch(/notify: queued → \S+: pending after \d+ attempts \(last error: ECONNREFUSED\)/);

    const back = await receiver(port);
    await waitFor('three deliveries', () => (back.requests.length >= 3 ? true : null), 30_000);
    expect(back.events('/hook')).toEqual(['queued', 'started', 'finished']);
    const delivered = await waitFor('all delivered', async () => {
      const run = await json<{ deliveries: DeliveryJson[] }>(server, ['show', uuid]);
      return run.deliveries.every((d) => d.state === 'delivered') ? run.deliveries : null;
    });
    expect(delivered[0]?.attempts).toBeGreaterThanOrEqual(2);
    expect(delivered.slice(1).map((d) => d.attempts)).toEqual([1, 1]);
  });

  it('gives up after --notify-attempts, says so in the log and in show, and goes on with the next event', async () => {
    const failing = await receiver();
    failing.status = 500;
    const server = await startServer(path.join(dir, 'state-3'), ['--notify-backoff', '100ms', '--notify-attempts', '3']);
    const uuid = await scheduleScript(server, dir, 'refused', 'true\n', ['--notify', failing.url('/h'), '--period', 'never']);
    startWorker(server, [], PLATFORM, dir);
    await waitForState(server, uuid, 'finished');
    const deliveries = await waitFor('every delivery to fail', async () => {
      const run = await json<{ deliveries: DeliveryJson[] }>(server, ['show', uuid]);
      return run.deliveries.length === 3 && run.deliveries.every((d) => d.state === 'failed') ? run.deliveries : null;
    }, 30_000);
    expect(deliveries.map((d) => [d.event, d.attempts, d.lastError])).toEqual([
      ['queued', 3, 'HTTP 500 Internal Server Error'], ['started', 3, 'HTTP 500 Internal Server Error'], ['finished', 3, 'HTTP 500 Internal Server Error'],
    ]);
    expect(failing.events('/h')).toEqual(['queued', 'queued', 'queued', 'started', 'started', 'started', 'finished', 'finished', 'finished']);
    expect(await ok(server, ['show', uuid])).toContain(`notify: finished → ${failing.url('/h')}: failed after 3 attempts (last error: HTTP 500 Internal Server Error)\n`);
    expect(server.proc.stderr).toContain(`event=queued url=${failing.url('/h')} attempt=3/3 result=failed problem="HTTP 500 Internal Server Error" note="no more attempts"`);
  });

  it('refuses a webhook URL that is not http(s) or holds a password, in one line, on the client and the server', async () => {
    const server = await startServer(path.join(dir, 'state-5'));
    fs.writeFileSync(path.join(dir, 'plain.sh'), 'true\n');
    const bad = await client(server, ['schedule', 'x', PLATFORM, path.join(dir, 'plain.sh'), '--notify', 'ftp://example.org/h']);
    expect(bad).toEqual({ code: 1, stdout: '', stderr: "builder-client: --notify: 'ftp://example.org/h' is not an http:// or https:// URL\n" });
    const secret = await client(server, ['schedule', 'x', PLATFORM, path.join(dir, 'plain.sh'), '--notify', 'https://me:pw@example.org/h']);
    expect(secret).toEqual({ code: 1, stdout: '', stderr: 'builder-client: --notify: a URL must not hold a user name or password (they would show in logs and in show); '
      + "sign deliveries with the server's --notify-secret-file instead\n" });
    const serverBad = startProcess('builder-server.js', ['--state-dir', path.join(dir, 'state-6'), '--notify', 'mailto:me@example.org']);
    expect([(await serverBad.exit).code, serverBad.stderr]).toEqual([1, "builder-server: --notify: 'mailto:me@example.org' is not an http:// or https:// URL\n"]);
  });

  it('a delivery pending when the server is killed (SIGKILL) is sent by the next server, when it is due', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/later`;
    const stateDir = path.join(dir, 'state-4');
    const first: ServerHandle = await startServer(stateDir, ['--notify', url, '--notify-backoff', '2s']);
    const uuid = await scheduleScript(first, dir, 'survivor', 'true\n', ['--period', 'never']);
    await waitFor('a failed attempt', () => first.proc.stderr.includes('result=retry problem=ECONNREFUSED retryInMs=2000'));
    first.proc.kill('SIGKILL');
    await first.proc.exit;
    const back = await receiver(port);
    const second = await startServer(stateDir, ['--notify', url, '--notify-backoff', '2s']);
    await waitFor('the delivery', () => (back.requests.length >= 1 ? true : null), 20_000);
    expect(back.requests.map((r) => [r.path, r.body.event, r.body.run])).toEqual([['/later', 'queued', uuid]]);
    const run = await json<{ deliveries: DeliveryJson[] }>(second, ['show', uuid]);
    expect(run.deliveries).toEqual([expect.objectContaining({ event: 'queued', state: 'delivered', attempts: 2, lastError: null })]);
  });
});
