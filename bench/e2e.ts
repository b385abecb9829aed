/**
 * e2e — N real `/bin/sh -ec true` jobs through a real server and 2 real workers in --loop mode,
 * against spawning the same N shells directly from Node, 2 at a time.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Client } from '../lib/client.js';
import { type BenchOptions, type Result, rate, startProgram, startServer, until } from './common.js';

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

export async function e2e({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const count = quick ? 200 : 2000;
  const server = await startServer(path.join(tmp, 'state'));
  const workers: ReturnType<typeof startProgram>[] = [];
  try {
    const client = await Client.open(server.address);
    let last = '';
    for (let i = 0; i < count; i++) {
      const reply = await client.call({
        type: 'schedule', name: `e2e-${i}`, platform: 'bench', source: { kind: 'script', script: 'true\n' },
        period: { kind: 'never' }, replace: false, timeoutSeconds: null,
      }, 'queued');
      last = reply.uuid ?? '';
    }
    fs.mkdirSync(path.join(tmp, 'jobs'));
    const started = performance.now();
    for (let i = 0; i < 2; i++) workers.push(startProgram('builder-worker.js', ['bench', '--remote', server.address, '--loop', '--tmp-dir', path.join(tmp, 'jobs')]));
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
    const baseline = await spawnDirectly(count, 2);
    return [rate(`e2e-${count}-jobs-2-workers`, count / (elapsed / 1000), 'jobs/s', count / (baseline / 1000), 0.8)];
  } finally {
    for (const worker of workers) worker.child.kill('SIGKILL');
    await server.stop();
  }
}
