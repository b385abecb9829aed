/**
 * What every benchmark shares: the result record, starting real builder processes from dist/, and
 * reading a process's CPU time and memory from /proc (Linux only, like the rest of the suite).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * One figure. `ratio` is always "higher is better" and the figure meets its target when
 * ratio ≥ target: for a speed, ours / baseline's; for a time, baseline's / ours. A figure with an
 * absolute limit (a latency, a CPU share, a memory growth) has that limit as its baseline, the ratio
 * limit / value and the target 1.
 */
export interface Result {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  ratio: number;
  target: number;
}

export interface BenchOptions {
  quick: boolean;
  /** Where a benchmark may write (removed afterwards by the benchmark itself). */
  tmp: string;
}

export const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Compiled entry points (dist/bin). */
export const BIN = path.resolve(HERE, '..', 'bin');

export function round(n: number, digits = 3): number {
  const scale = 10 ** digits;
  return Math.round(n * scale) / scale;
}

/** A rate (higher is better) against its baseline's rate. */
export function rate(name: string, value: number, unit: string, baseline: number, target: number): Result {
  return { name, value: round(value), unit, baseline: round(baseline), ratio: round(value / baseline), target };
}

/** A time or size (lower is better) against its baseline's. */
export function cost(name: string, value: number, unit: string, baseline: number, target: number): Result {
  return { name, value: round(value), unit, baseline: round(baseline), ratio: round(baseline / value), target };
}

/** A figure with an absolute upper limit: met when value ≤ limit. */
export function limit(name: string, value: number, unit: string, max: number): Result {
  return { name, value: round(value), unit, baseline: max, ratio: round(value <= 0 ? 1000 : max / value), target: 1 };
}

/** A figure that is only reported (no target): ratio and target are 0. */
export function report(name: string, value: number, unit: string): Result {
  return { name, value: round(value), unit, baseline: 0, ratio: 0, target: 0 };
}

export function formatResult(r: Result): string {
  if (r.target === 0 && r.baseline > 0) return `${r.name}: ${r.value} ${r.unit} (baseline ${r.baseline} ${r.unit}, ratio ${r.ratio}, reported)`;
  if (r.target === 0) return `${r.name}: ${r.value} ${r.unit}`;
  const met = r.ratio >= r.target ? 'met' : 'MISSED';
  return `${r.name}: ${r.value} ${r.unit} (baseline ${r.baseline} ${r.unit}, ratio ${r.ratio}, target ≥ ${r.target}: ${met})`;
}

export interface NodeProcess {
  child: ChildProcess;
  /** The last 100 kB of its stderr. */
  stderr(): string;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

/** Starts one of builder's programs (dist/bin/NAME.js) with node; stdout is discarded. */
export function startProgram(script: string, args: string[], env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = []): NodeProcess {
  const child = spawn(process.execPath, [...nodeArgs, path.join(BIN, script), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, BUILDER_CONFIG_DIRS: '', ...env },
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-100_000); });
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return { child, stderr: () => stderr, exited };
}

export interface BenchServer extends NodeProcess {
  address: string;
  stateDir: string;
  stop(): Promise<void>;
}

/** Node options for the workers a benchmark starts, from BENCH_WORKER_NODE_ARGS (e.g. '--cpu-prof'). */
export function workerNodeArgs(): string[] {
  return (process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter((arg) => arg !== '');
}

/**
 * Starts a builder-server on 127.0.0.1 on a free port and waits until it listens. BENCH_SERVER_NODE_ARGS
 * adds node options to every server a benchmark starts, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'.
 */
export async function startServer(stateDir: string, args: string[] = [], nodeArgs: string[] = []): Promise<BenchServer> {
  nodeArgs = [...(process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter((arg) => arg !== ''), ...nodeArgs];
  const server = startProgram('builder-server.js', ['--listen', '127.0.0.1:0', '--state-dir', stateDir, ...args], {}, nodeArgs);
  const address = await until(() => {
    if (server.child.exitCode !== null) throw new Error(`the server exited: ${server.stderr()}`);
    return /listening address=(\S+)/.exec(server.stderr())?.[1] ?? null;
  }, 'the server to listen', 120_000);
  return {
    ...server, address, stateDir,
    stop: async () => {
      // SIGTERM lets a --cpu-prof / --heap-prof run write its profile.
      if (server.child.exitCode === null) server.child.kill('SIGTERM');
      const timer = setTimeout(() => server.child.kill('SIGKILL'), 10_000);
      await server.exited;
      clearTimeout(timer);
    },
  };
}

export async function until<T>(probe: () => T | null | Promise<T | null>, what: string, timeoutMs = 600_000, everyMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Runs node with `args` to its end; resolves with the elapsed ms, rejects if it fails. */
export function timedNode(args: string[]): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: 'ignore', env: { ...process.env, BUILDER_CONFIG_DIRS: '' } });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`${args.join(' ')} exited ${code}`))));
  });
}

export function median(values: number[]): number {
  return percentile(values, 50);
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

/** Resident and peak resident memory of a process, in MB (from /proc/PID/status). */
export function memoryOf(pid: number): { rssMb: number; peakMb: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 };
}

/** CPU time (user + system) a process has used so far, in ms (from /proc/PID/stat). */
export function cpuMsOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / clockTicks;
}

// USER_HZ is 100 on every Linux Node runs on.
const clockTicks = 100;

/** A TCP port nobody listens on right now (for programs that need a port number up front). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `builder-bench-${prefix}-`));
}
