/**
 * startup — a server that has been running for months: a state directory with R finished runs
 * (1,000,000; quick: 100,000) of S schedules (100,000; quick: 10,000), S/10 runs queued, and 8 runs
 * that were running when the server stopped (with their console files). The server runs with
 * --keep-runs (retention on, as a farm keeping a million runs would have it; no job has more runs than
 * it keeps, so a start prunes nothing, as after any restart but the first).
 *
 * (a) Start-up: from spawning builder-server until the whole answer to a first `info` has arrived
 *     (read raw, over a connection opened as soon as it listens: decoding it is the client's part,
 *     measured in (b)). Target: under 2 s, however long the history. Reported alongside: the time
 *     until it listens, and both for an empty state directory (the floor Node and our modules set).
 * (b) `builder-client --remote ADDR info --json`, the real command line, against that server: the
 *     wall time a user waits, next to `node -e 0`. Target: under 2 s for a command run by hand, even
 *     listing 100,000 jobs and 10,000 queued runs (a reply of about 26 MB): a big farm's operators
 *     should not learn to avoid it.
 * (c) The server's part: `info` over a connection already open (no process start, no hello), read raw,
 *     against the smallest request there is (`workers`, with no workers) over the same connection:
 *     the protocol's own round trip. Target: info under 500 ms: the server is single-threaded, so
 *     while it builds the answer no worker gets a job and no run's end is recorded. Reported too: the
 *     same request through the Client class in this process (decoded and checked against the schema).
 *
 * The state is built with the server's own schema (the Store class opens it once, so every migration
 * has run), then filled with plain INSERTs in transactions of 100,000 rows with syncs and the
 * journal off: a million rows in half a minute rather than the months real traffic takes. Nothing is
 * cached between runs; each builds its own directory under the benchmark's tmp.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { encodeFrame } from '../protocol/frame.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import { Client } from '../lib/client.js';
import { BIN, type BenchOptions, type BenchServer, type Result, limit, median, memoryOf, report, startServer, timedNode } from './common.js';
import { PLATFORMS, freshState, insertSchedules, jobName } from './scheduler.js';

const DAY = 86400_000;
/** Retention on, as a farm with a million runs would have it; no job has more, so a start prunes nothing. */
const KEEP_RUNS = 5000;

/** How finished runs ended, by share: mostly fine, a few failures, timeouts, cancels and lost workers. */
const OUTCOMES: [number, string][] = [
  [0.88, '{"kind":"exited","code":0}'], [0.05, '{"kind":"exited","code":1}'], [0.02, '{"kind":"exited","code":2}'],
  [0.02, '{"kind":"timeout","seconds":7200}'], [0.015, '{"kind":"cancelled","message":"cancelled by a client"}'],
  [0.01, '{"kind":"worker-lost","message":"worker stopped answering (no heartbeat for 30s)"}'],
  [0.005, '{"kind":"signalled","signal":9,"message":"killed: out of memory"}'],
];

function outcome(): string {
  let x = Math.random();
  for (const [share, json] of OUTCOMES) {
    if (x < share) return json;
    x -= share;
  }
  return OUTCOMES[0]![1];
}

/** Builds the state directory: schedules, finished runs with some artifacts, the queue, interrupted runs. */
export function buildState(stateDir: string, schedules: number, finished: number, queued: number, running: number): void {
  const db = freshState(stateDir);
  // Nothing to protect while building: no journal, no syncs (the server reopens it in WAL mode).
  db.pragma('journal_mode = OFF');
  const now = Date.now();
  insertSchedules(db, schedules, now - 200 * DAY, (i) => ({
    nextDue: now + 60_000 + Math.floor(Math.random() * DAY),
    period: i % 3 === 0 ? { kind: 'cron', expression: '0 3 * * *' } : { kind: 'every', seconds: 86400 },
  }));
  const insertRun = db.prepare(`INSERT INTO runs (uuid, job, platform, state, worker, source, script, queued_at, started_at, finished_at, outcome,
    console_lines, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
  const insertArtifact = db.prepare('INSERT INTO artifacts (run_uuid, path, size, sha256) VALUES (?, ?, ?, ?)');
  const job = (i: number): { name: string; platform: string; source: string; script: string } => {
    const script = `git clone --depth 1 https://git.example.org/project-${i % 700}.git src\ncd src\nmake -j4 test\n`;
    return { name: jobName(i), platform: PLATFORMS[i % PLATFORMS.length]!, source: JSON.stringify({ kind: 'script', script }), script };
  };
  // Ninety days of history, oldest first (as rows are appended in life); some jobs run far more
  // often than others.
  const start = now - 90 * DAY;
  const step = (90 * DAY) / finished;
  for (let from = 0; from < finished; from += 100_000) {
    db.transaction(() => {
      for (let r = from; r < Math.min(finished, from + 100_000); r++) {
        const { name, platform, source, script } = job(Math.floor(schedules * Math.random() ** 2));
        const uuid = randomUUID();
        const queuedAt = Math.floor(start + r * step);
        const startedAt = queuedAt + Math.floor(Math.random() * 60_000);
        const lines = Math.floor(Math.exp(Math.random() * 10));
        insertRun.run(uuid, name, platform, 'finished', `worker-${r % 40}`, source, script, queuedAt, startedAt,
          startedAt + 30_000 + Math.floor(Math.random() * 1800_000), outcome(), lines, null);
        if (r % 50 === 0) {
          for (let a = 0; a < 1 + (r % 3); a++) {
            insertArtifact.run(uuid, `dist/project-${a}.tar.gz`, 1_000_000 + r, randomUUID().replaceAll('-', '').repeat(2));
          }
        }
      }
    })();
  }
  db.transaction(() => {
    // The queue: S/10 distinct jobs waiting, queued in the last hour; then the runs interrupted.
    for (let q = 0; q < queued + running; q++) {
      const { name, platform, source, script } = job((q * 7) % schedules);
      const uuid = randomUUID();
      const queuedAt = now - 3600_000 + q;
      if (q < queued) {
        insertRun.run(uuid, name, platform, 'queued', null, null, null, queuedAt, null, null, null, 0, q);
      } else {
        insertRun.run(uuid, name, platform, 'running', `worker-${q % 40}`, source, script, queuedAt, queuedAt + 1000, null, null, 0, null);
        const file = path.join(stateDir, 'console', uuid.slice(0, 2), `${uuid}.log`);
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, Array.from({ length: 2000 }, (_, i) => `${i * 10} o compiling unit ${i} of 2000\n`).join(''));
      }
    }
  })();
  db.pragma('journal_mode = WAL');
  db.close();
  // A server restarting after months finds its database at rest on disk, not half a gigabyte of
  // dirty pages the kernel is still writing back while the clock runs: write it out first.
  execFileSync('sync');
}

/**
 * A client connection that reads each reply as one frame without decoding it: the time it measures
 * is the server's (and the loopback's), not msgpack decoding and schema checks in this process.
 */
export class RawClient {
  // Chunks of the reply being read, kept apart until it is whole: concatenating each chunk onto the
  // rest would copy a 30 MB reply hundreds of times.
  private chunks: Buffer[] = [];
  private bytes = 0;
  private expected = -1;
  private waiting: ((bytes: number) => void) | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
      if (this.expected < 0 && this.bytes >= 4) this.expected = 4 + Buffer.concat(this.chunks).readUInt32BE(0);
      if (this.expected >= 0 && this.bytes >= this.expected) {
        // One request at a time, so a reply never shares a chunk with the next one.
        const [size, resolve] = [this.expected, this.waiting];
        this.chunks = [];
        this.bytes = 0;
        this.expected = -1;
        this.waiting = null;
        resolve?.(size);
      }
    });
  }

  static async open(address: string): Promise<RawClient> {
    const at = address.lastIndexOf(':');
    const socket = net.connect({ host: address.slice(0, at), port: Number(address.slice(at + 1)) });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new RawClient(socket);
    await client.request({ type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'builder-bench' });
    return client;
  }

  /** Sends one message; resolves with the size of the frame that answers it, once it is all here. */
  request(message: Record<string, unknown>): Promise<number> {
    const reply = new Promise<number>((resolve) => { this.waiting = resolve; });
    this.socket.write(encodeFrame(message));
    return reply;
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * Spawns a server on `stateDir`; resolves with the ms until it listens and until a first info has
 * reached us whole (read raw: decoding it is the client's cost, measured with the real client below).
 */
async function timeToInfo(stateDir: string): Promise<{ ms: number; listenMs: number; server: BenchServer }> {
  const started = performance.now();
  const server = await startServer(stateDir, ['--keep-runs', String(KEEP_RUNS)]);
  const listenMs = performance.now() - started;
  try {
    const client = await RawClient.open(server.address);
    await client.request({ type: 'info', id: 1 });
    const ms = performance.now() - started;
    client.close();
    return { ms, listenMs, server };
  } catch (error) {
    await server.stop();
    throw error;
  }
}

export async function startupBench({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const schedules = quick ? 10_000 : 100_000;
  const finished = quick ? 100_000 : 1_000_000;
  const queued = schedules / 10;
  const running = 8;
  const repeats = quick ? 3 : 5;

  const empty = await timeToInfo(path.join(tmp, 'empty'));
  await empty.server.stop();

  const stateDir = path.join(tmp, 'state');
  const building = performance.now();
  buildState(stateDir, schedules, finished, queued, running);
  const buildMs = performance.now() - building;
  const bytes = fs.statSync(path.join(stateDir, 'builder.sqlite')).size;

  const { ms: startupMs, listenMs, server } = await timeToInfo(stateDir);
  try {
    const client = await Client.open(server.address);
    const { info } = await client.call({ type: 'info' }, 'info-result');
    const waiting = Object.values(info.queues).reduce((n, entries) => n + entries.length, 0);
    // The interrupted runs were queued again at start-up (their jobs were not waiting already).
    if (info.jobs.length !== schedules || waiting < queued) throw new Error(`info lists ${info.jobs.length} jobs and ${waiting} queued runs`);
    const decodedMs: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const t = performance.now();
      await client.call({ type: 'info' }, 'info-result');
      decodedMs.push(performance.now() - t);
    }
    client.close();
    const raw = await RawClient.open(server.address);
    const infoMs: number[] = [];
    const roundTripMs: number[] = [];
    let infoBytes = 0;
    for (let i = 0; i < repeats * 2; i++) {
      let t = performance.now();
      infoBytes = await raw.request({ type: 'info', id: 2 * i + 1 });
      infoMs.push(performance.now() - t);
      t = performance.now();
      await raw.request({ type: 'workers', id: 2 * i + 2 });
      roundTripMs.push(performance.now() - t);
    }
    raw.close();
    const cliMs: number[] = [];
    const bareMs: number[] = [];
    for (let i = 0; i < repeats; i++) {
      cliMs.push(await timedNode([path.join(BIN, 'builder-client.js'), '--remote', server.address, 'info', '--json']));
      bareMs.push(await timedNode(['-e', '0']));
    }
    const tag = `${finished}-runs-${schedules}-schedules`;
    return [
      report(`startup-build-state-${tag}`, buildMs, 'ms'),
      report(`startup-state-size-${tag}`, bytes / 2 ** 20, 'MB'),
      report('startup-to-info-empty-state', empty.ms, 'ms'),
      report(`startup-to-listening-${tag}`, listenMs, 'ms'),
      limit(`startup-to-info-${tag}`, startupMs, 'ms', 2000),
      limit(`startup-client-info-json-${tag}`, median(cliMs), 'ms', 2000),
      report('startup-node-e-0', median(bareMs), 'ms'),
      limit(`startup-info-server-${tag}`, median(infoMs), 'ms', 500),
      report(`startup-info-reply-size-${tag}`, infoBytes / 2 ** 20, 'MB'),
      report('startup-round-trip-workers', median(roundTripMs), 'ms'),
      report(`startup-info-decoded-in-process-${tag}`, median(decodedMs), 'ms'),
      report(`startup-server-rss-after-info-${tag}`, memoryOf(server.child.pid!).rssMb, 'MB'),
    ];
  } finally {
    await server.stop();
  }
}
