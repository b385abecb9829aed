/**
 * dispatch — durable job round trips per second through the real server: COUNT jobs are queued
 * first, then K workers (the real worker code with a sandbox that runs nothing, in one process) take
 * them one by one and report each finished; a job counts once the server has acknowledged its
 * outcome, which it does only after committing it.
 *
 * Baseline: beanstalkd with a binlog, the same COUNT jobs put first (payloads as large as our job
 * message), then K connections doing reserve → delete (DELETED is its acknowledgement). Durability
 * classes are matched: our default (WAL, no fsync per commit) against beanstalkd's default -f 50
 * (fsync at most every 50 ms), and our --strict (fsync before every acknowledgement) against -f 0
 * (fsync on every binlog write).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { encodeFrame } from '../protocol/frame.js';
import { Client } from '../lib/client.js';
import { Beanstalk } from './beanstalk.js';
import { type BenchOptions, HERE, type Result, freePort, rate, startServer, until, workerNodeArgs } from './common.js';

/** beanstalkd from Debian's archive: installed here if missing (the benchmark runs as root in CI). */
function beanstalkdPath(): string {
  const find = (): string | null => {
    try {
      return execFileSync('sh', ['-c', 'command -v beanstalkd'], { encoding: 'utf8' }).trim() || null;
    } catch {
      return null;
    }
  };
  const found = find();
  if (found !== null) return found;
  if (process.getuid?.() !== 0) throw new Error('beanstalkd is not installed: run `apt-get install -y beanstalkd` as root');
  process.stdout.write('# installing beanstalkd (apt-get install -y beanstalkd)\n');
  execFileSync('sh', ['-c', 'apt-get install -y beanstalkd >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y beanstalkd >/dev/null)'], { stdio: 'inherit' });
  const installed = find();
  if (installed === null) throw new Error('apt-get install -y beanstalkd did not provide beanstalkd');
  return installed;
}

/** Runs dispatch-workers.js to its end; resolves with the milliseconds it reports. */
function runWorkers(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...workerNodeArgs(), path.join(HERE, 'dispatch-workers.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err = (err + d).slice(-10_000); });
    child.on('close', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`dispatch workers (${args.join(' ')}) exited ${code}: ${err}`))));
  });
}

/** The size of a job message as our server sends it, so that beanstalkd carries as many bytes. */
function jobMessageBytes(): number {
  return encodeFrame({
    type: 'job', uuid: '01234567-89ab-cdef-0123-456789abcdef', name: 'dispatch-19999', platform: 'bench', script: 'true\n', timeoutSeconds: 3600,
  }).length;
}

export async function ours(tmp: string, strict: boolean, k: number, count: number): Promise<number> {
  const server = await startServer(path.join(tmp, `state-${strict ? 'strict' : 'default'}-${k}`), strict ? ['--strict'] : []);
  try {
    const client = await Client.open(server.address);
    // Queued before the clock starts, in pipelined batches.
    for (let from = 0; from < count; from += 500) {
      const ids: number[] = [];
      for (let i = from; i < Math.min(count, from + 500); i++) {
        ids.push(client.send({
          type: 'schedule', name: `dispatch-${i}`, platform: 'bench', source: { kind: 'script', script: 'true\n' },
          period: { kind: 'never' }, replace: false, timeoutSeconds: null,
        }));
      }
      for (const id of ids) await client.receive(id);
    }
    client.close();
    return await runWorkers(['builder', server.address, String(k), String(count)]);
  } finally {
    await server.stop();
  }
}

async function beanstalkd(tmp: string, binary: string, fsyncMs: number, k: number, count: number): Promise<number> {
  const binlog = path.join(tmp, `binlog-${fsyncMs}-${k}`);
  fs.mkdirSync(binlog);
  const port = await freePort();
  const child: ChildProcess = spawn(binary, ['-l', '127.0.0.1', '-p', String(port), '-b', binlog, '-f', String(fsyncMs)], { stdio: 'ignore' });
  try {
    const producer = await until(() => Beanstalk.open(port).catch(() => null), 'beanstalkd to listen', 10_000);
    const payload = Buffer.alloc(jobMessageBytes(), 'x');
    for (let i = 0; i < count; i++) await producer.put(payload);
    producer.close();
    return await runWorkers(['beanstalk', String(port), String(k), String(count)]);
  } finally {
    child.kill('SIGKILL');
  }
}

/**
 * A floor (dispatch-floor.js), with the same K: the frame floor's light clients, or the real workers
 * (the worker floor). Resolves with the milliseconds the workers report.
 */
async function floor(tmp: string, clients: 'frames' | 'workers', k: number, count: number): Promise<number> {
  const child = spawn(process.execPath, [path.join(HERE, 'dispatch-floor.js'), path.join(tmp, `floor-${clients}-${k}.log`)], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const port = await until(() => (out.includes('\n') ? Number(out.trim()) : null), 'the floor server to listen', 10_000);
    return await runWorkers(clients === 'frames' ? ['floor', String(port), String(k), String(count)] : ['builder', `127.0.0.1:${port}`, String(k), String(count)]);
  } finally {
    child.kill('SIGKILL');
  }
}

export async function dispatch({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const count = quick ? 1000 : 20_000;
  const binary = beanstalkdPath();
  const results: Result[] = [];
  for (const strict of [false, true]) {
    for (const k of [1, 8]) {
      const ourMs = await ours(tmp, strict, k, count);
      const theirMs = await beanstalkd(tmp, binary, strict ? 0 : 50, k, count);
      results.push(rate(`dispatch-${strict ? 'strict' : 'default'}-k${k}`, count / (ourMs / 1000), 'jobs/s', count / (theirMs / 1000), strict ? 3 : 1));
      if (strict) continue;
      // Reported, not targets: how close any Node server with our frames gets to beanstalkd -f 50,
      // with clients as light as beanstalkd's, and with the real workers.
      results.push(rate(`dispatch-node-floor-k${k}`, count / ((await floor(tmp, 'frames', k, count)) / 1000), 'jobs/s', count / (theirMs / 1000), 0));
      results.push(rate(`dispatch-worker-floor-k${k}`, count / ((await floor(tmp, 'workers', k, count)) / 1000), 'jobs/s', count / (theirMs / 1000), 0));
    }
  }
  return results;
}
