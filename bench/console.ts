/**
 * console — one real /bin/sh job printing N lines of 60 bytes (59 characters and a newline), run by
 * a real worker process through a real server, with 0 and then with 20 live observers. The time is
 * the server's own: from its `dispatch` log line to its `finish` line for the run, which it writes
 * only after the last console line is in the console file and the run's end is committed. Each run is
 * then checked: the console file holds exactly N lines, the database says N lines, and every
 * observer saw the whole console and the run's end.
 *
 * Baseline: the same command run by /bin/sh from Node, its stdout a pipe that Node reads and
 * discards (the cheapest thing a worker could possibly do with the output), in the same run.
 *
 * The 20 observers are 20 real `builder-client observe --raw` processes, each counted to print the
 * whole console. They share this machine's cores with the server: 20 clients each decoding every
 * line cost far more CPU than the server does, so on a small machine this figure measures them as
 * much as the server. (One process holding 20 connections would be cheaper to start, but then the
 * observers get one core's time in all, fall more than the backlog limit behind, and are cut off,
 * as the server is designed to do with slow observers.)
 *
 * Memory: the server's RSS just before the first job, its peak RSS (VmHWM) after both, and the growth
 * between the two, which must stay under 100 MB however big the console: a console streams to its
 * file and from there to observers, never through the server's memory.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Client } from '../lib/client.js';
import {
  BIN, type BenchOptions, type BenchServer, type Result, cost, cpuMsOf, limit, median, memoryOf, report, startProgram, startServer, until, workerNodeArgs,
} from './common.js';

const TEXT = 'builder console benchmark: 0123456789 abcdefghijklmnopqrstu';
const OBSERVERS = 20;

/** Prints exactly `lines` lines of TEXT: cheap for the shell, so the figure is builder's cost. */
function command(lines: number): string {
  return `yes '${TEXT}' | head -n ${lines}`;
}

/** Runs the command under /bin/sh with stdout read from a pipe and dropped; resolves with the ms. */
function shellToPipe(script: string, lines: number): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-ec', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let bytes = 0;
    child.stdout.on('data', (chunk: Buffer) => { bytes += chunk.length; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0 || bytes !== lines * 60) reject(new Error(`the baseline printed ${bytes} bytes and exited ${code}`));
      else resolve(performance.now() - started);
    });
  });
}

/** The ms between the server's `dispatch` and `finish` log lines for run `uuid`. */
function serverTime(server: BenchServer, uuid: string): number | null {
  const at = (event: string): number | null => {
    const match = new RegExp(`^(\\S+) ${event} run=${uuid}`, 'm').exec(server.stderr());
    return match === null ? null : Date.parse(match[1]!);
  };
  const dispatched = at('dispatch');
  const finished = at('finish');
  return dispatched === null || finished === null ? null : finished - dispatched;
}

/** Counts the lines of a console file without reading it into memory. */
async function countLines(file: string): Promise<number> {
  let lines = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    for (let at = chunk.indexOf(10); at >= 0; at = chunk.indexOf(10, at + 1)) lines++;
  }
  return lines;
}

/**
 * Starts `builder-client observe UUID --raw` `count` times; resolves once every one is attached to
 * the queued run, with a promise of their end that rejects unless each saw the run end (exit 0: a
 * cut-off observer exits 2) and printed exactly the console (counted here, byte by byte).
 */
async function startObservers(address: string, uuid: string, count: number, lines: number): Promise<{ done: Promise<void> }> {
  let attached = 0;
  const observers = Array.from({ length: count }, () => {
    const child = spawn(process.execPath, [path.join(BIN, 'builder-client.js'), '--remote', address, 'observe', uuid, '--raw'], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BUILDER_CONFIG_DIRS: '' },
    });
    let bytes = 0;
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { bytes += chunk.length; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (!stderr.includes('observing run') && (stderr + d).includes('observing run')) attached++;
      stderr = (stderr + d).slice(-10_000);
    });
    return new Promise<void>((resolve, reject) => child.on('close', (code) => {
      if (code === 0 && bytes === lines * 60) resolve();
      else reject(new Error(`an observer exited ${code} after ${bytes} of ${lines * 60} bytes: ${stderr}`));
    }));
  });
  const done = Promise.all(observers).then(() => {});
  done.catch(() => {});
  await Promise.race([until(() => (attached === count ? true : null), 'the observers to attach', 60_000), done]);
  return { done };
}

/** One job of `lines` lines with `observers` observers; resolves with the server's ms for it. */
async function runJob(server: BenchServer, client: Client, tmp: string, lines: number, observers: number): Promise<number> {
  const name = `console-${observers}`;
  // Queued with no worker connected, so that the observers are attached before the run starts.
  const { uuid } = await client.call({
    type: 'schedule', name, platform: 'bench', source: { kind: 'script', script: `${command(lines)}\n` },
    period: { kind: 'never' }, replace: false, timeoutSeconds: null,
  }, 'queued');
  if (uuid === null) throw new Error('nothing was queued');
  const watching = observers > 0 ? (await startObservers(server.address, uuid, observers, lines)).done : Promise.resolve();
  const worker = startProgram('builder-worker.js', ['bench', '--remote', server.address, '--tmp-dir', tmp], {}, workerNodeArgs());
  try {
    const ms = await until(() => serverTime(server, uuid), `run ${uuid} to finish`);
    if ((await worker.exited) !== 0) throw new Error(`the worker failed: ${worker.stderr()}`);
    await watching;
    // Durable and complete: the file holds every line, and the database agrees.
    const { run } = await client.call({ type: 'show', uuid }, 'show-result');
    const inFile = await countLines(path.join(server.stateDir, 'console', uuid.slice(0, 2), `${uuid}.log`));
    if (run.outcome?.kind !== 'exited' || run.outcome.code !== 0 || run.consoleLines !== lines || inFile !== lines) {
      throw new Error(`run ${uuid}: outcome ${JSON.stringify(run.outcome)}, ${run.consoleLines} lines recorded, ${inFile} in the file, ${lines} printed`);
    }
    return ms;
  } finally {
    if (worker.child.exitCode === null) worker.child.kill('SIGKILL');
  }
}

export async function consoleBench({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const lines = quick ? 200_000 : 2_000_000;
  const baselines: number[] = [];
  for (let i = 0; i < 3; i++) baselines.push(await shellToPipe(command(lines), lines));
  const baseline = median(baselines);
  const server = await startServer(path.join(tmp, 'state'));
  try {
    const client = await Client.open(server.address);
    const pid = server.child.pid!;
    const before = memoryOf(pid).rssMb;
    const results: Result[] = [];
    for (const observers of [0, OBSERVERS]) {
      const cpu = cpuMsOf(pid);
      const ms = await runJob(server, client, tmp, lines, observers);
      results.push(cost(`console-${lines}-lines-${observers}-observers`, ms, 'ms', baseline, 0.5));
      // The server's own CPU time for the run: steadier than the time on a shared machine, and what
      // the observers cost the server itself.
      results.push(report(`console-${lines}-lines-${observers}-observers-server-cpu`, cpuMsOf(pid) - cpu, 'ms'));
    }
    client.close();
    const { peakMb } = memoryOf(pid);
    results.push(report('console-server-peak-rss', peakMb, 'MB'));
    results.push(limit('console-server-rss-growth', peakMb - before, 'MB', 100));
    return results;
  } finally {
    await server.stop();
  }
}
