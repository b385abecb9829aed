/**
 * artifacts — what a run's artifacts cost on their way worker → server (upload) and server → client
 * (`builder-client fetch`): one big file (1 GiB; quick: 128 MiB) in MB/s, and many small files
 * (10,000; quick: 1,000) in files/s. Real processes, real loopback TCP, real files; every fetched
 * byte is checked by SHA-256 against what the job wrote, so a broken transfer fails the benchmark
 * instead of being measured.
 *
 * How each transfer is timed:
 * - Upload: the worker uploads after the job's script ends and before it reports `finished`, so it
 *   is the time from the script's last command (which prints the time, `date +%s%N`) to the run's
 *   end as the server records it (finishedAt, set once every file is stored and the run committed).
 *   It includes the worker walking the job directory and reading the files, the tar stream in
 *   chunk frames, and the server hashing and writing each file.
 * - Fetch: from the server's `fetch` log line (the request has arrived) to the client's exit, after
 *   it has written, hashed and renamed every file. The client's own start-up (loading its modules,
 *   dialling) is left out, as the baseline's is.
 * - Baseline for the big file: the same bytes over raw loopback TCP from a sender process (a file
 *   read stream piped into the socket) to a receiver process (the socket piped into a file write
 *   stream), timed by the receiver from the connection to the file's last write, in the same run.
 *
 * Every timed transfer, ours and the baseline's, starts with the page cache written back (`sync`; the
 * job runs it after writing its files), and the fastest of several counts: the big upload and fetch
 * twice each, the baseline four times (before, between and after them). On the machine of
 * BENCHMARKS.md, writing a GiB into the page cache took from 0.3 s to 1.2 s of system time depending
 * on what the machine's memory had done before (the same program, one run after the other), and a
 * single timing measured that order as much as the code. The fastest is what the code can do.
 *
 * Memory: the worker's and the server's peak RSS during the big transfer (the server's high-water
 * mark is reset just before, via /proc/PID/clear_refs). A file is streamed, never held: both must
 * stay under 200 MB — an idle worker or server is 60–90 MB, which leaves room for socket and parser
 * buffers and garbage not yet collected, but not for even the quick run's 128 MiB file.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Client } from '../lib/client.js';
import type { RunDetail } from '../protocol/types.js';
import { BIN, type BenchOptions, type BenchServer, type Result, limit, memoryOf, rate, report, startProgram, startServer, until } from './common.js';

const MB = 1e6;
/** Each big transfer of ours is timed this many times, and the fastest counts (see the header). */
const ROUNDS = 2;

async function sha256Of(file: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}

/** Random bytes (so that a misplaced or repeated chunk shows in the hash), written 1 MiB at a time. */
function writeRandomFile(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  const block = Buffer.allocUnsafe(1024 * 1024);
  try {
    for (let written = 0; written < bytes; written += block.length) {
      crypto.randomFillSync(block);
      fs.writeSync(fd, block, 0, Math.min(block.length, bytes - written));
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Resets a process's peak RSS to its current RSS (Linux; without permission the peak stays). */
function resetPeak(pid: number): void {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // The figure then also covers what came before.
  }
}

const RECEIVER = `
const net = require('node:net'), fs = require('node:fs');
const server = net.createServer((socket) => {
  const started = performance.now();
  const out = fs.createWriteStream(process.argv[1], { highWaterMark: 256 * 1024 });
  socket.pipe(out).on('finish', () => { process.stdout.write('ms ' + (performance.now() - started) + '\\n'); server.close(); });
});
server.listen(0, '127.0.0.1', () => process.stdout.write('port ' + server.address().port + '\\n'));
`;
const SENDER = `
const net = require('node:net'), fs = require('node:fs');
const socket = net.connect(Number(process.argv[2]), '127.0.0.1', () => fs.createReadStream(process.argv[1], { highWaterMark: 256 * 1024 }).pipe(socket));
`;

function stdoutOf(child: ChildProcess): () => string {
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { out += d; });
  return () => out;
}

/** The baseline: `file` from a sender process to a receiver process writing `target`; resolves with the ms. */
async function rawTcp(file: string, target: string): Promise<number> {
  const receiver = spawn(process.execPath, ['-e', RECEIVER, target], { stdio: ['ignore', 'pipe', 'inherit'] });
  const out = stdoutOf(receiver);
  const exited = new Promise<number | null>((resolve) => receiver.on('close', resolve));
  const port = await until(() => /port (\d+)/.exec(out())?.[1] ?? null, 'the receiver to listen', 30_000);
  const sender = spawn(process.execPath, ['-e', SENDER, file, port], { stdio: 'inherit' });
  const [code] = await Promise.all([exited, new Promise((resolve) => sender.on('close', resolve))]);
  const ms = Number(/ms (\S+)/.exec(out())?.[1]);
  if (code !== 0 || !Number.isFinite(ms) || fs.statSync(target).size !== fs.statSync(file).size) throw new Error('the raw TCP baseline failed');
  return ms;
}

/** Runs `script` as a job on the waiting worker; resolves with the finished run and the upload ms. */
async function runJob(server: BenchServer, client: Client, name: string, script: string): Promise<{ run: RunDetail; uploadMs: number }> {
  // The script's last line prints when it ended, in ns since the epoch (this machine's clock, as
  // the server's finishedAt is).
  const { uuid } = await client.call({
    type: 'schedule', name, platform: 'bench', source: { kind: 'script', script: `${script}\necho "script-end $(date +%s%N)"\n` },
    period: { kind: 'never' }, replace: false, timeoutSeconds: null,
  }, 'queued');
  if (uuid === null) throw new Error('nothing was queued');
  await until(() => (new RegExp(`^\\S+ finish run=${uuid}`, 'm').test(server.stderr()) ? true : null), `run ${uuid} to finish`);
  const { run } = await client.call({ type: 'show', uuid }, 'show-result');
  const consoleText = fs.readFileSync(path.join(server.stateDir, 'console', uuid.slice(0, 2), `${uuid}.log`), 'utf8');
  const ended = /script-end (\d+)/.exec(consoleText)?.[1];
  if (run.outcome?.kind !== 'exited' || run.outcome.code !== 0 || ended === undefined || run.finishedAt === null) {
    throw new Error(`run ${uuid} failed: ${JSON.stringify(run.outcome)}\n${consoleText.slice(-2000)}`);
  }
  return { run, uploadMs: run.finishedAt - Number(BigInt(ended) / 1_000_000n) };
}

/** `builder-client fetch UUID -o DIR`; resolves with the ms from the request's arrival to the client's exit. */
async function fetchRun(server: BenchServer, uuid: string, dir: string): Promise<number> {
  const fetcher = startProgram('builder-client.js', ['--remote', server.address, 'fetch', uuid, '-o', dir]);
  const code = await fetcher.exited;
  const exitedAt = Date.now();
  if (code !== 0) throw new Error(`fetch exited ${code}: ${fetcher.stderr()}`);
  const logged = new RegExp(`^(\\S+) fetch peer=\\S+ run=${uuid}`, 'm').exec(server.stderr())?.[1];
  if (logged === undefined) throw new Error('the server did not log the fetch');
  return exitedAt - Date.parse(logged);
}

export async function artifacts({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const bigBytes = (quick ? 128 : 1024) * 1024 * 1024;
  const smallCount = quick ? 1_000 : 10_000;
  const source = path.join(tmp, 'source.bin');
  writeRandomFile(source, bigBytes);
  const sourceSha = await sha256Of(source);
  const results: Result[] = [];

  // The same bytes in the same chunk size as builder's (256 KiB), timed before the uploads, after
  // each, and after the fetches, so that it meets the same states of the page cache as they do.
  const baselines: number[] = [];
  const baseline = async (): Promise<void> => {
    execFileSync('sync');
    baselines.push(await rawTcp(source, path.join(tmp, 'baseline.bin')));
    fs.rmSync(path.join(tmp, 'baseline.bin'));
  };
  await baseline();

  const server = await startServer(path.join(tmp, 'state'));
  fs.mkdirSync(path.join(tmp, 'jobs'));
  const worker = startProgram('builder-worker.js', ['bench', '--remote', server.address, '--loop', '--tmp-dir', path.join(tmp, 'jobs')]);
  try {
    const client = await Client.open(server.address);
    const serverPid = server.child.pid!;
    const workerPid = worker.child.pid!;

    // One big file, twice: the job copies it into its directory (the copy is before the script's end).
    const uploads: number[] = [];
    let uploaded: RunDetail | null = null;
    let uploadPeak = 0;
    for (let round = 1; round <= ROUNDS; round++) {
      resetPeak(serverPid);
      const big = await runJob(server, client, `artifacts-big-${round}`, `cp ${source} big.bin\nsync`);
      uploadPeak = Math.max(uploadPeak, memoryOf(serverPid).peakMb);
      const stored = big.run.artifacts;
      if (stored.length !== 1 || stored[0]!.sha256 !== sourceSha || stored[0]!.size !== bigBytes) {
        throw new Error(`the server stored ${JSON.stringify(stored)}, not big.bin (${bigBytes} bytes, ${sourceSha})`);
      }
      uploads.push(big.uploadMs);
      uploaded = big.run;
      await baseline();
    }
    const workerPeak = memoryOf(workerPid).peakMb;
    const fetches: number[] = [];
    let fetchPeak = 0;
    for (let round = 1; round <= ROUNDS; round++) {
      resetPeak(serverPid);
      execFileSync('sync');
      fetches.push(await fetchRun(server, uploaded!.uuid, path.join(tmp, 'fetched-big')));
      fetchPeak = Math.max(fetchPeak, memoryOf(serverPid).peakMb);
      if ((await sha256Of(path.join(tmp, 'fetched-big', 'big.bin'))) !== sourceSha) throw new Error('the fetched big.bin differs from the original');
      fs.rmSync(path.join(tmp, 'fetched-big'), { recursive: true });
    }
    await baseline();
    const bigFetchMs = Math.min(...fetches);
    const baselineRate = bigBytes / MB / (Math.min(...baselines) / 1000);
    const size = `${bigBytes / 1024 / 1024}MiB`;
    results.push(rate(`artifacts-upload-${size}`, bigBytes / MB / (Math.min(...uploads) / 1000), 'MB/s', baselineRate, 0.5));
    results.push(rate(`artifacts-fetch-${size}`, bigBytes / MB / (bigFetchMs / 1000), 'MB/s', baselineRate, 0.5));
    results.push(limit('artifacts-worker-peak-rss', workerPeak, 'MB', 200));
    results.push(limit('artifacts-server-peak-rss-upload', uploadPeak, 'MB', 200));
    results.push(limit('artifacts-server-peak-rss-fetch', fetchPeak, 'MB', 200));

    // Many small files, each with its own content (so that a mix-up shows in the hashes).
    const small = await runJob(server, client, 'artifacts-small',
      `mkdir small\ni=0\nwhile [ $i -lt ${smallCount} ]; do echo "small artifact $i" > small/$i.txt; i=$((i+1)); done`);
    if (small.run.artifacts.length !== smallCount) throw new Error(`${small.run.artifacts.length} of ${smallCount} small files were stored`);
    const smallFetchMs = await fetchRun(server, small.run.uuid, path.join(tmp, 'fetched-small'));
    for (let i = 0; i < smallCount; i++) {
      const want = crypto.createHash('sha256').update(`small artifact ${i}\n`).digest('hex');
      const got = crypto.createHash('sha256').update(fs.readFileSync(path.join(tmp, 'fetched-small', 'small', `${i}.txt`))).digest('hex');
      if (got !== want) throw new Error(`the fetched small/${i}.txt differs from what the job wrote`);
    }
    results.push(report(`artifacts-upload-${smallCount}-files`, smallCount / (small.uploadMs / 1000), 'files/s'));
    results.push(report(`artifacts-fetch-${smallCount}-files`, smallCount / (smallFetchMs / 1000), 'files/s'));
    client.close();
    return results;
  } finally {
    worker.child.kill('SIGKILL');
    await server.stop();
  }
}
