/**
 * Container engines for the tests. In CI (CI=true) an engine that is missing, or an image that was
 * not built, fails the tests instead of skipping them: .ci/run installs and prepares both.
 */
import { spawnSync } from 'node:child_process';

export const BASE_IMAGE = 'builder/debian:12';

/** Null when `engine` answers and has the base image; otherwise why not. */
export function engineProblem(engine: 'docker' | 'podman'): string | null {
  const result = spawnSync(engine, ['image', 'inspect', '--format', '{{.Id}}', BASE_IMAGE], { encoding: 'utf8', timeout: 60_000 });
  if (result.error !== undefined) return `${engine} is not installed`;
  if (result.status !== 0) return `${engine} has no ${BASE_IMAGE} (run BUILDER_ENGINE=${engine} debian/build-base-image.sh): ${result.stderr.trim()}`;
  return null;
}

/** Whether to run the tests for `engine`; throws in CI when it cannot. */
export function engineUsable(engine: 'docker' | 'podman'): boolean {
  const problem = engineProblem(engine);
  if (problem !== null && process.env.CI === 'true') throw new Error(`CI=true but ${problem}`);
  return problem === null;
}

/** Names of the containers (running or not) carrying a label, e.g. `builder.run=UUID`. */
export function containersLabelled(engine: 'docker' | 'podman', label: string): string[] {
  const result = spawnSync(engine, ['ps', '--all', '--filter', `label=${label}`, '--format', '{{.Names}}'], { encoding: 'utf8', timeout: 60_000 });
  if (result.status !== 0) throw new Error(`${engine} ps failed: ${result.stderr}`);
  return result.stdout.split('\n').filter((name) => name !== '');
}
