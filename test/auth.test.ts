/**
 * Tokens and roles: every client command tried with no token, a wrong token, and each role's token,
 * through the real CLI against a real server; the whole matrix is asserted. Also: job ownership
 * for operators, workers needing a worker token, revocation taking effect at the next request,
 * tokens added while the server runs, and a token-less server accepting loopback peers only.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { encode } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import {
  PLATFORM, type Proc, type ServerHandle, client, killAll, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';
import { RawPeer } from './raw-peer.js';

type Who = 'none' | 'wrong' | 'viewer' | 'operator' | 'admin' | 'worker';
const WHO: Who[] = ['none', 'wrong', 'viewer', 'operator', 'admin', 'worker'];

/** Runs `builder-server token …` to completion. */
async function tokenCommand(stateDir: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = startProcess('builder-server.js', ['token', ...args, '--state-dir', stateDir]);
  const { code } = await proc.exit;
  return { code, stdout: proc.stdout, stderr: proc.stderr };
}

describe('tokens and roles', () => {
  let dir: string;
  let state: string;
  let server: ServerHandle;
  let worker: Proc;
  const files: Partial<Record<Who, string>> = {};
  let finished: string;

  // The harness's own helpers (waitForState, …) present the admin token through BUILDER_TOKEN; each
  // command here says exactly which token it presents, or none.
  const as = (who: Who, args: string[]) => client(server, who === 'none' ? args : ['--token-file', files[who] ?? '', ...args], { BUILDER_TOKEN: undefined });

  beforeAll(async () => {
    dir = tempDir();
    state = path.join(dir, 'state');
    for (const [name, role] of [['ops', 'operator'], ['boss', 'admin'], ['reader', 'viewer'], ['runner', 'worker'], ['other-ops', 'operator']] as const) {
      const made = await tokenCommand(state, ['add', name, '--role', role]);
      expect(made.code).toBe(0);
      expect(made.stdout).toMatch(/^bt_[A-Za-z0-9_-]{43}\n$/);
      expect(made.stderr).toBe(`builder-server: token ${name} (${role}) created; it is shown only this once\n`);
      fs.writeFileSync(path.join(dir, `${name}.token`), made.stdout);
    }
    files.operator = path.join(dir, 'ops.token');
    files.admin = path.join(dir, 'boss.token');
    files.viewer = path.join(dir, 'reader.token');
    files.worker = path.join(dir, 'runner.token');
    files.wrong = path.join(dir, 'wrong.token');
    fs.writeFileSync(files.wrong, 'bt_not-a-real-token\n');
    process.env.BUILDER_TOKEN = fs.readFileSync(files.admin, 'utf8').trim();
    server = await startServer(state, ['--http', '0.0.0.0:0', '--allow-plaintext']);
    // The line after `listening` may arrive in a later chunk of the server's stderr.
    await waitFor('the auth line', () => / auth tokens=5\n/.test(server.proc.stderr) || null);
    fs.writeFileSync(path.join(dir, 'job.sh'), 'echo hello > out.txt\n');
    // Fixtures, made by the admin: a finished run to look at.
    const first = await as('admin', ['schedule', 'fixture', PLATFORM, path.join(dir, 'job.sh'), '--period', 'never']);
    expect(first.code).toBe(0);
    finished = first.stdout.trim();
    worker = startWorker(server, ['--loop', '--token-file', files.worker], PLATFORM, dir);
    await waitForState(server, finished, 'finished');
  });
  afterAll(async () => {
    delete process.env.BUILDER_TOKEN;
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('allows each role exactly its commands; no token, a wrong token and a worker token get nothing', async () => {
    const matrix: Record<string, Record<Who, string>> = {};
    const figures = { tried: 0, allowed: 0, refused: 0 };
    for (const who of WHO) {
      // Per role: a job on a platform no worker serves (its run stays queued) to act on.
      const job = `job-of-${who}`;
      const queued = (await as('admin', ['schedule', `${job}-q`, 'nowhere', path.join(dir, 'job.sh')])).stdout.trim();
      const commands: [string, string[]][] = [
        ['info', ['info']],
        ['workers', ['workers']],
        ['results', ['results', 'fixture']],
        ['show', ['show', finished]],
        ['observe', ['observe', finished]],
        ['fetch', ['fetch', finished, '-o', path.join(dir, `fetch-${who}`)]],
        ['schedule', ['schedule', job, 'nowhere', path.join(dir, 'job.sh')]],
        ['execute', ['execute', `${job}-q`]],
        ['reschedule', ['reschedule', `${job}-q`, '+1h']],
        ['cancel', ['cancel', queued]],
        ['unschedule own', ['unschedule', job]],
        ['drop-platform', ['drop-platform', `dropped-by-${who}`]],
        ['undrop-platform', ['undrop-platform', `dropped-by-${who}`]],
      ];
      for (const [name, args] of commands) {
        const result = await as(who, args);
        figures.tried += 1;
        let verdict: string;
        if (result.code === 0) verdict = 'ok';
        else if (result.stderr.startsWith('builder-client: permission denied: ')) verdict = 'denied';
        else if (result.stderr.startsWith('builder-client: the server refused the connection: ')) verdict = 'refused';
        else verdict = `exit ${result.code}: ${result.stderr.trim()}`;
        if (verdict === 'ok') figures.allowed += 1;
        else figures.refused += 1;
        (matrix[name] ??= {} as Record<Who, string>)[who] = verdict;
      }
    }
    const row = (viewer: string, operator: string, admin: string): Record<Who, string> => ({
      none: 'refused', wrong: 'refused', viewer, operator, admin, worker: 'refused',
    });
    // `unschedule own`: viewers made no job (their schedule was denied): their unschedule is denied
    // before the job is looked up.
    expect(matrix).toEqual({
      info: row('ok', 'ok', 'ok'),
      workers: row('ok', 'ok', 'ok'),
      results: row('ok', 'ok', 'ok'),
      show: row('ok', 'ok', 'ok'),
      observe: row('ok', 'ok', 'ok'),
      fetch: row('ok', 'ok', 'ok'),
      schedule: row('denied', 'ok', 'ok'),
      execute: row('denied', 'ok', 'ok'),
      reschedule: row('denied', 'ok', 'ok'),
      cancel: row('denied', 'ok', 'ok'),
      'unschedule own': row('denied', 'ok', 'ok'),
      'drop-platform': row('denied', 'denied', 'ok'),
      'undrop-platform': row('denied', 'denied', 'ok'),
    });
    process.stdout.write(`auth matrix: ${figures.tried} commands tried, ${figures.allowed} allowed, ${figures.refused} refused\n`);
  }, 300_000);

  it('says which role a refused command needs, and why a hello was refused', async () => {
    expect((await as('viewer', ['execute', 'fixture'])).stderr)
      .toBe('builder-client: permission denied: execute needs the operator role or higher; token reader has the viewer role\n');
    expect((await as('operator', ['drop-platform', 'x'])).stderr)
      .toBe('builder-client: permission denied: drop-platform needs the admin role or higher; token ops has the operator role\n');
    expect((await as('none', ['info'])).stderr)
      .toBe('builder-client: the server refused the connection: this server requires a token: give --token-file FILE or set BUILDER_TOKEN\n');
    expect((await as('wrong', ['info'])).stderr).toBe('builder-client: the server refused the connection: invalid token\n');
    expect((await as('worker', ['info'])).stderr)
      .toBe('builder-client: the server refused the connection: token runner is a worker token; clients need a viewer, operator or admin token\n');
    await waitFor('the refusal to be logged', () => /refuse peer=\S+ token=reader request=execute reason="permission denied: execute needs the operator role/.test(server.proc.stderr) || null);
    const missing = await client(server, ['--token-file', path.join(dir, 'absent.token'), 'info']);
    expect([missing.code, missing.stderr]).toEqual([1, `builder-client: --token-file: cannot read ${path.join(dir, 'absent.token')}: ENOENT\n`]);
  });

  it('lets an operator change only its own jobs; an admin any', async () => {
    const mine = await as('operator', ['schedule', 'ops-job', 'nowhere', path.join(dir, 'job.sh')]);
    expect(mine.code).toBe(0);
    const otherOps = path.join(dir, 'other-ops.token');
    const stranger = await client(server, ['--token-file', otherOps, 'unschedule', 'ops-job'], { BUILDER_TOKEN: undefined });
    expect([stranger.code, stranger.stderr]).toEqual([2,
      'builder-client: permission denied: job ops-job belongs to token ops; only its owner (an operator) or an admin may unschedule it\n']);
    const replace = await client(server, ['--token-file', otherOps, 'schedule', 'ops-job', 'nowhere', path.join(dir, 'job.sh'), '--replace']);
    expect(replace.stderr).toBe('builder-client: permission denied: job ops-job belongs to token ops; only its owner (an operator) or an admin may replace it\n');
    // Anyone with the operator role may run, reschedule or cancel it.
    expect((await client(server, ['--token-file', otherOps, 'execute', 'ops-job'])).code).toBe(0);
    expect((await as('operator', ['schedule', 'ops-job', 'nowhere', path.join(dir, 'job.sh'), '--replace'])).code).toBe(0);
    expect((await as('admin', ['unschedule', 'ops-job'])).code).toBe(0);
  });

  it('asks for a viewer token in the web view when it listens beyond loopback', async () => {
    const base = (server.web ?? '').replace('0.0.0.0', '127.0.0.1');
    const token = (who: Who): string => fs.readFileSync(files[who] ?? '', 'utf8').trim();
    const anonymous = await fetch(`${base}/`, { headers: { Accept: 'application/json' } });
    expect([anonymous.status, anonymous.headers.get('www-authenticate'), await anonymous.json()])
      .toEqual([401, 'Basic realm="builder", charset="UTF-8"', { error: 'a viewer token is needed: give it as the password (any user name)' }]);
    const basic = await fetch(`${base}/job/fixture`, { headers: { Authorization: `Basic ${Buffer.from(`me:${token('viewer')}`).toString('base64')}` } });
    expect(basic.status).toBe(200);
    expect(await basic.text()).toContain('<h1>Job fixture');
    const bearer = await fetch(`${base}/run/${finished}/artifact/out.txt`, { headers: { Authorization: `Bearer ${token('operator')}` } });
    expect([bearer.status, await bearer.text()]).toEqual([200, 'hello\n']);
    for (const who of ['wrong', 'worker'] as const) {
      const refused = await fetch(`${base}/`, { headers: { Authorization: `Bearer ${token(who)}`, Accept: 'application/json' } });
      expect([who, refused.status, await refused.json()]).toEqual([who, 401, { error: 'invalid token' }]);
    }
  });

  it('workers need a worker token', async () => {
    expect(worker.exited).toBeNull();
    const viewerWorker = startWorker(server, ['--token-file', files.viewer ?? ''], PLATFORM, dir);
    expect((await viewerWorker.exit).code).toBe(2);
    expect(viewerWorker.stderr).toContain('the server refused the connection: token reader has the viewer role; a worker needs a worker token');
    const anonymous = startProcess('builder-worker.js', [PLATFORM, '--remote', server.address], { BUILDER_TOKEN: undefined });
    expect((await anonymous.exit).code).toBe(2);
    expect(anonymous.stderr).toContain('this server requires a token');
  });

  it('takes tokens added and revoked while the server runs', async () => {
    const made = await tokenCommand(state, ['add', 'late', '--role', 'viewer']);
    expect(made.code).toBe(0);
    const late = path.join(dir, 'late.token');
    fs.writeFileSync(late, made.stdout);
    expect((await client(server, ['--token-file', late, 'info'])).code).toBe(0);
    expect((await tokenCommand(state, ['revoke', 'late'])).stderr).toBe('builder-server: token late revoked\n');
    expect((await client(server, ['--token-file', late, 'info'])).stderr).toBe('builder-client: the server refused the connection: invalid token\n');
    const list = await tokenCommand(state, ['list']);
    expect(list.stdout.split('\n').filter(Boolean).map((line) => line.split('\t').slice(0, 2).join(' '))).toEqual([
      'boss admin', 'ops operator', 'other-ops operator', 'reader viewer', 'runner worker',
    ]);
    expect((await tokenCommand(state, ['revoke', 'nobody'])).stderr).toBe('builder-server: no token named nobody\n');
    expect(fs.readFileSync(path.join(state, 'auth.sqlite')).includes(Buffer.from(made.stdout.trim()))).toBe(false);
  });
});

describe('a server without tokens', () => {
  let dir: string;
  let server: ServerHandle;
  beforeAll(async () => {
    dir = tempDir();
    server = await startServer(path.join(dir, 'state'), ['--allow-plaintext'], '0.0.0.0:0');
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('says so at start and serves loopback peers', async () => {
    await waitFor('the open line', () => server.proc.stderr.includes(
      'open note="no tokens: every loopback connection may do anything, others are refused; add one with builder-server token add"') || null);
    const port = server.address.split(':').at(-1);
    expect((await client({ address: `127.0.0.1:${port}` }, ['info'])).code).toBe(0);
  });

  it('a connection made before the first token needs one from then on', async () => {
    const peer = new RawPeer(server.address.replace('0.0.0.0', '127.0.0.1'));
    peer.send({ type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'early' });
    expect((await peer.next()).type).toBe('welcome');
    peer.send({ type: 'info', id: 1 });
    expect((await peer.next()).type).toBe('info-result');
    expect((await tokenCommand(path.join(dir, 'state'), ['add', 'first', '--role', 'admin'])).code).toBe(0);
    peer.send({ type: 'info', id: 2 });
    expect(await peer.next()).toEqual({ type: 'error', message: 'this server now requires a token: reconnect with --token-file FILE or BUILDER_TOKEN' });
    await peer.closed;
    expect((await tokenCommand(path.join(dir, 'state'), ['revoke', 'first'])).code).toBe(0);
  });

  it('refuses a peer that is not on loopback, saying how to make tokens', async () => {
    const external = Object.values(os.networkInterfaces()).flat().find((i) => i !== undefined && i.family === 'IPv4' && !i.internal);
    if (external === undefined) throw new Error('this machine has no non-loopback IPv4 address to test from');
    const port = Number(server.address.split(':').at(-1));
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect({ host: external.address, port, localAddress: external.address }, () => {
        const body = encode({ type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'test' });
        const frame = Buffer.alloc(4 + body.length);
        frame.writeUInt32BE(body.length);
        body.copy(frame, 4);
        socket.write(frame);
      });
      let data = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => { data = Buffer.concat([data, chunk]); });
      socket.on('close', () => resolve(data.subarray(4).toString('latin1')));
      socket.on('error', reject);
    });
    expect(reply).toContain('this server has no tokens yet, so it accepts loopback connections only; create one on the server with builder-server token add NAME --role ROLE');
  });
});
