/**
 * `npm run bench [-- --quick] [-- --only NAME,...]`: builder's benchmarks, each with its baseline
 * measured in the same run. Every figure is printed on one line as it is measured, and the whole set
 * goes to bench/results.json as [{ name, value, unit, baseline, ratio, target }] (see common.ts for
 * what ratio and target mean). BENCHMARKS.md explains each benchmark and holds the latest full run.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { artifacts } from './artifacts.js';
import { clientLatency } from './client.js';
import { type BenchOptions, HERE, type Result, formatResult, tempDir } from './common.js';
import { consoleBench } from './console.js';
import { dispatch } from './dispatch.js';
import { e2e } from './e2e.js';
import { schedulerBench } from './scheduler.js';
import { startupBench } from './startup.js';

const BENCHMARKS: Record<string, (options: BenchOptions) => Promise<Result[]>> = {
  dispatch,
  e2e,
  console: consoleBench,
  artifacts,
  scheduler: schedulerBench,
  startup: startupBench,
  client: clientLatency,
};

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const onlyAt = argv.indexOf('--only');
const only = onlyAt >= 0 ? (argv[onlyAt + 1] ?? '').split(',') : Object.keys(BENCHMARKS);
const unknown = only.filter((name) => !(name in BENCHMARKS));
if (unknown.length > 0) {
  process.stderr.write(`bench: unknown benchmark ${unknown.join(', ')}: choose from ${Object.keys(BENCHMARKS).join(', ')}\n`);
  process.exit(1);
}

console.log(`# ${quick ? 'quick' : 'full'} run on ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${new Date().toISOString()}`);
const results: Result[] = [];
let failed = false;
for (const name of only) {
  const tmp = tempDir(name);
  const started = performance.now();
  try {
    for (const result of await BENCHMARKS[name]!({ quick, tmp })) {
      results.push(result);
      console.log(formatResult(result));
    }
    console.log(`# ${name}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    failed = true;
    console.log(`# ${name} failed: ${(error as Error).stack ?? error}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
fs.writeFileSync(path.resolve(HERE, '..', '..', 'bench', 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
process.exit(failed ? 1 : 0);
