/**
 * The project's shell scripts outside freebsd/ (tested in freebsd.test.ts): all pass shellcheck,
 * and the base-image script is a no-op when its image exists and says plainly what is wrong.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BASE_IMAGE, engineUsable } from './containers.js';
import { ROOT } from './harness.js';

const SCRIPTS = [
  '.ci/run', 'test/prepare-host.sh', 'debian/build-base-image.sh', 'debian/build-worker-image.sh',
  'debian/bin/builder-server', 'debian/bin/builder-worker', 'debian/bin/builder-client',
  'debian/builder.postinst', 'debian/builder.prerm', 'debian/builder.postrm',
];

function sh(script: string, env: NodeJS.ProcessEnv = {}, args: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync('sh', [path.join(ROOT, script), ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('shell scripts', () => {
  it.each(SCRIPTS)('%s passes shellcheck', (script) => {
    const result = spawnSync('shellcheck', [path.join(ROOT, script)], { encoding: 'utf8' });
    if (result.error !== undefined && process.env.CI !== 'true') return;
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  });
});

describe('debian/build-base-image.sh', () => {
  it('refuses an unknown engine in one line, changing nothing', () => {
    expect(sh('debian/build-base-image.sh', { BUILDER_ENGINE: 'lxc' })).toEqual({
      status: 1, stdout: '', stderr: "build-base-image: BUILDER_ENGINE must be docker or podman, not 'lxc'\n",
    });
  });

  it('says when the engine cannot be reached', () => {
    const result = sh('debian/build-base-image.sh', { DOCKER_HOST: 'unix:///nonexistent/docker.sock' });
    expect(result.status).toBe(1);
    expect(result.stderr).toBe('build-base-image: docker cannot reach its daemon; is it running? (docker info says why)\n');
  });

  describe.runIf(engineUsable('docker') && engineUsable('podman'))('with the image built', () => {
    it.each(['docker', 'podman'])('is a no-op in %s when the image exists', (engine) => {
      const before = spawnSync(engine, ['image', 'inspect', '--format', '{{.Id}}', BASE_IMAGE], { encoding: 'utf8' }).stdout;
      expect(sh('debian/build-base-image.sh', { BUILDER_ENGINE: engine })).toEqual({
        status: 0, stdout: `build-base-image: ${BASE_IMAGE} already exists in ${engine}; nothing to do\n`, stderr: '',
      });
      expect(spawnSync(engine, ['image', 'inspect', '--format', '{{.Id}}', BASE_IMAGE], { encoding: 'utf8' }).stdout).toBe(before);
    });
  });
});
