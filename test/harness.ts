/**
 * Test harness: real builder processes (from dist/, built by `npm test`) on ephemeral ports with
 * temporary state directories. Everything is bounded in time and cleaned up after each test file.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'dist', 'bin');
export const PLATFORM = 'test-platform';

export function tempDir(prefix = 'builder-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function sha256(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

export async function waitFor<T>(what: string, probe: () => T | null | undefined | false | Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null && value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A child process whose output is collected as it comes. */
export class Proc {
  stdout = '';
  stderr = '';
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => { this.stdout += d; });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { this.stderr += d; });
    this.exit = new Promise((resolve) => child.on('close', (code, signal) => {
      this.exited = { code, signal };
      resolve(this.exited);
    }));
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.exited === null) this.child.kill(signal);
  }
}

const running = new Set<Proc>();

/** Starts one of builder's programs; `input`, when given, is its whole stdin (otherwise it has none). */
export function startProcess(script: string, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Proc {
  // No config file of this machine's (/etc/builder, ~/.config/builder) reaches the tests.
  const child = spawn(process.execPath, [path.join(BIN, script), ...args], {
    env: { ...process.env, BUILDER_REMOTE: undefined, BUILDER_CONFIG: undefined, BUILDER_CONFIG_DIRS: '', ...env },
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  child.stdin?.end(input);
  const proc = new Proc(child);
  running.add(proc);
  void proc.exit.then(() => running.delete(proc));
  return proc;
}

/** Kills every process the harness started (call in afterAll/afterEach). */
export async function killAll(): Promise<void> {
  const procs = [...running];
  for (const proc of procs) proc.kill('SIGKILL');
  await Promise.all(procs.map((proc) => proc.exit));
}

export interface ServerHandle {
  proc: Proc;
  address: string;
  stateDir: string;
  /** The web view's base URL (http://HOST:PORT) when started with --http. */
  web: string | null;
}

/** Starts builder-server and waits for its `listening` line. */
export async function startServer(stateDir: string, extra: string[] = [], listen = '127.0.0.1:0'): Promise<ServerHandle> {
  const proc = startProcess('builder-server.js', ['--listen', listen, '--state-dir', stateDir, '--heartbeat', '1s', ...extra]);
  const address = await waitFor('the server to listen', () => {
    if (proc.exited !== null) throw new Error(`builder-server exited ${proc.exited.code}: ${proc.stderr}`);
    return /listening address=(\S+)/.exec(proc.stderr)?.[1];
  }, 20_000);
  const web = extra.includes('--http')
    ? await waitFor('the web view to listen', () => /web address=(https?:\/\/\S+?)\/?\n/.exec(proc.stderr)?.[1], 20_000)
    : null;
  return { proc, address, stateDir, web };
}

export function startWorker(server: { address: string }, extra: string[] = [], platform = PLATFORM, tmpDir?: string): Proc {
  return startProcess('builder-worker.js', [platform, '--remote', server.address, ...(tmpDir ? ['--tmp-dir', tmpDir] : []), ...extra]);
}

export interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs builder-client to completion (with `input` as its stdin, if given). */
export async function client(server: { address: string } | null, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Promise<Result> {
  const proc = startProcess('builder-client.js', server === null ? args : ['--remote', server.address, ...args], env, input);
  const { code } = await proc.exit;
  return { code, stdout: proc.stdout, stderr: proc.stderr };
}

/** Runs builder-client and fails the test with its stderr if it does not exit 0. */
export async function ok(server: { address: string }, args: string[]): Promise<string> {
  const result = await client(server, args);
  if (result.code !== 0) throw new Error(`builder-client ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

export async function json<T = unknown>(server: { address: string }, args: string[]): Promise<T> {
  return JSON.parse(await ok(server, [...args, '--json'])) as T;
}

export interface RunJson {
  uuid: string;
  job: string;
  state: string;
  status: string;
  worker: string | null;
  outcome: { kind: string; code?: number; signal?: number; message?: string; seconds?: number } | null;
  artifacts?: { path: string; size: number; sha256: string }[];
  script?: string | null;
}

export function show(server: { address: string }, uuid: string): Promise<RunJson> {
  return json<RunJson>(server, ['show', uuid]);
}

/** Writes a script file in `dir` and schedules it; returns the queued run's UUID. */
export async function scheduleScript(server: { address: string }, dir: string, name: string, script: string, extra: string[] = []): Promise<string> {
  const file = path.join(dir, `${name}.sh`);
  fs.writeFileSync(file, script);
  return (await ok(server, ['schedule', name, PLATFORM, file, ...extra])).trim();
}

export async function waitForState(server: { address: string }, uuid: string, state: string, timeoutMs = 30_000): Promise<RunJson> {
  return waitFor(`run ${uuid} to be ${state}`, async () => {
    const run = await show(server, uuid);
    return run.state === state ? run : null;
  }, timeoutMs);
}
