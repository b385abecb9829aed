/**
 * `npm run bench [-- --quick]`: benchmarks with their baselines measured in the same run.
 * Each prints one line per figure and the whole set goes to bench/results.json as
 * [{ name, value, unit, baseline, ratio, target }] (ratio = baseline time / our time: higher is better).
 *
 * e2e — N real `/bin/sh -ec true` jobs through a real server and 2 real workers in --loop mode,
 * against spawning the same N shells directly from Node with the same parallelism.
 * client — the wall time of `builder-client info` against `node -e 0`, run one after the other,
 * alternating so that both see the same machine (target: at most 1.5 times as long).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../lib/client.js';

interface Result {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  ratio: number;
  target: number;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, '..', 'bin');
const quick = process.argv.includes('--quick');

function startNode(script: string, args: string[]): { child: ReturnType<typeof spawn>; stderr: () => string } {
  const child = spawn(process.execPath, [path.join(BIN, script), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-100_000); });
  return { child, stderr: () => stderr };
}

async function until<T>(probe: () => T | null | Promise<T | null>, what: string, timeoutMs = 600_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Spawns `count` shells running `true`, `parallel` at a time; resolves with the elapsed ms. */
async function spawnDirectly(count: number, parallel: number): Promise<number> {
  const started = performance.now();
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < count) {
      next++;
      await new Promise<void>((resolve, reject) => {
        const child = spawn('/bin/sh', ['-ec', 'true'], { stdio: 'ignore', detached: true });
        child.on('error', reject);
        child.on('close', () => resolve());
      });
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
  return performance.now() - started;
}

async function e2e(count: number): Promise<Result> {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'builder-bench-'));
  const server = startNode('builder-server.js', ['--listen', '127.0.0.1:0', '--state-dir', path.join(state, 'state')]);
  try {
    const address = await until(() => /listening address=(\S+)/.exec(server.stderr())?.[1] ?? null, 'the server');
    const client = await Client.open(address);
    let last = '';
    for (let i = 0; i < count; i++) {
      const reply = await client.call({
        type: 'schedule', name: `e2e-${i}`, platform: 'bench', source: { kind: 'script', script: 'true\n' },
        period: { kind: 'never' }, replace: false, timeoutSeconds: null,
      }, 'queued');
      last = reply.uuid ?? '';
    }
    const started = performance.now();
    const workers = [0, 1].map(() => startNode('builder-worker.js', ['bench', '--remote', address, '--loop', '--tmp-dir', state]));
    // Wait for the last run queued to end (observing costs the server nothing while waiting), then
    // make sure nothing else is left; polling info all along would load the machine being measured.
    const observing = client.send({ type: 'observe', uuid: last });
    while ((await client.receive(observing)).type !== 'run-end');
    await until(async () => {
      const { info } = await client.call({ type: 'info' }, 'info-result');
      return (info.queues.bench?.length ?? 0) === 0 && info.running.length === 0 ? true : null;
    }, 'all runs to finish');
    const elapsed = performance.now() - started;
    client.close();
    for (const worker of workers) worker.child.kill('SIGKILL');
    const baseline = await spawnDirectly(count, 2);
    const value = count / (elapsed / 1000);
    const baseValue = count / (baseline / 1000);
    return { name: `e2e-${count}-jobs-2-workers`, value: round(value), unit: 'jobs/s', baseline: round(baseValue), ratio: round(value / baseValue), target: 0.8 };
  } finally {
    server.child.kill('SIGKILL');
    fs.rmSync(state, { recursive: true, force: true });
  }
}

/** Runs a command to its end; resolves with the elapsed ms, rejects if it fails. */
function timed(args: string[]): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: 'ignore', env: { ...process.env, BUILDER_CONFIG_DIRS: '' } });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`${args.join(' ')} exited ${code}`))));
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function clientLatency(count: number): Promise<Result> {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'builder-bench-'));
  const server = startNode('builder-server.js', ['--listen', '127.0.0.1:0', '--state-dir', path.join(state, 'state')]);
  try {
    const address = await until(() => /listening address=(\S+)/.exec(server.stderr())?.[1] ?? null, 'the server');
    const ours: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < count; i++) {
      ours.push(await timed([path.join(BIN, 'builder-client.js'), '--remote', address, 'info']));
      bare.push(await timed(['-e', '0']));
    }
    const value = median(ours);
    const baseline = median(bare);
    return { name: 'client-info', value: round(value), unit: 'ms', baseline: round(baseline), ratio: round(baseline / value), target: round(1 / 1.5) };
  } finally {
    server.child.kill('SIGKILL');
    fs.rmSync(state, { recursive: true, force: true });
  }
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

const results: Result[] = [];
results.push(await e2e(quick ? 200 : 2000));
results.push(await clientLatency(quick ? 15 : 50));
for (const r of results) {
  console.log(`${r.name}: ${r.value} ${r.unit} (baseline ${r.baseline} ${r.unit}, ratio ${r.ratio}, target ≥ ${r.target})`);
}
fs.writeFileSync(path.resolve(HERE, '..', '..', 'bench', 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
process.exit(0);
