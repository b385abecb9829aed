/**
 * The worker inside a throw-away container: the image built by debian/build-worker-image.sh runs one
 * job end to end against a server on the host — started with testcontainers, and started exactly
 * as builder-worker@.service starts it.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { GenericContainer, Wait } from 'testcontainers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { containersLabelled, engineUsable } from './containers.js';
import { ROOT, type ServerHandle, json, killAll, ok, show, startServer, tempDir } from './harness.js';
import { consoleOf, fetchedArtifacts } from './sandbox-conformance.js';

const IMAGE = 'builder/worker:debian-12';

function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 600_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe.runIf(engineUsable('docker'))('the worker image', () => {
  let dir: string;
  let server: ServerHandle;

  beforeAll(async () => {
    const built = run('sh', ['debian/build-worker-image.sh', 'debian']);
    if (built.status !== 0) throw new Error(`build-worker-image.sh failed: ${built.stderr}`);
    expect(built.stdout).toBe(`build-worker-image: building ${IMAGE} from builder/debian:12 with docker\nbuild-worker-image: ${IMAGE} is ready\n`);
    dir = tempDir();
    server = await startServer(path.join(dir, 'state'));
  }, 600_000);
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A job whose console tells what it built, and where: the artifact's hash must match it. */
  async function scheduleBuild(name: string): Promise<string> {
    const script = path.join(dir, `${name}.sh`);
    fs.writeFileSync(script, 'echo "debian $(cat /etc/debian_version) as $(id -un)"\nmkdir out\nhead -c 200000 /dev/urandom > out/random.bin\nsha256sum out/random.bin\n');
    return (await ok(server, ['schedule', name, 'debian-12', script])).trim();
  }

  async function expectBuilt(uuid: string): Promise<void> {
    const runInfo = await show(server, uuid);
    expect(runInfo.outcome).toEqual({ kind: 'exited', code: 0 });
    const lines = (await consoleOf(server, uuid)).map((line) => line.text);
    const debianVersion = spawnSync('docker', ['run', '--rm', '--network', 'none', 'builder/debian:12', 'cat', '/etc/debian_version'], { encoding: 'utf8' }).stdout.trim();
    expect(lines[0]).toBe(`debian ${debianVersion} as root`);
    const hash = /^([0-9a-f]{64}) {2}out\/random\.bin$/.exec(lines[1] ?? '')?.[1];
    expect(hash).toBeDefined();
    expect(runInfo.artifacts).toEqual([{ path: 'out/random.bin', size: 200_000, sha256: hash }]);
    expect(await fetchedArtifacts(server, uuid, dir)).toEqual({ 'out/random.bin': hash });
  }

  it('runs one job end to end and exits 0 (started with testcontainers, host network)', async () => {
    const uuid = await scheduleBuild('in-testcontainer');
    const container = await new GenericContainer(IMAGE)
      .withNetworkMode('host')
      .withCommand(['builder-worker', 'debian-12', '--remote', server.address])
      .withWaitStrategy(Wait.forOneShotStartup())
      .withStartupTimeout(120_000)
      .start();
    await container.stop({ remove: true });
    await expectBuilt(uuid);
    // The one-job worker said goodbye: listed as gone, with why.
    const workers = await json<{ platform: string; status: string; reason: string }[]>(server, ['workers']);
    expect(workers).toEqual([expect.objectContaining({ platform: 'debian-12', status: 'gone', reason: 'connection closed' })]);
  });

  it('runs as builder-worker@debian-12.service starts it: one job per docker run --rm', async () => {
    const unit = fs.readFileSync(path.join(ROOT, 'debian', 'builder-worker@.service'), 'utf8');
    const execStart = /^ExecStart=(.+)$/m.exec(unit)?.[1];
    expect(execStart).toBeDefined();
    // systemd's expansion for this instance and the unit's defaults, then the same words.
    const values: Record<string, string> = {
      BUILDER_WORKER_PULL: 'never', BUILDER_WORKER_DOCKER_ARGS: '', BUILDER_WORKER_IMAGE: IMAGE, BUILDER_REMOTE: server.address, BUILDER_WORKER_ARGS: '',
    };
    const words = (execStart ?? '').replaceAll('%i', 'debian-12').split(/\s+/)
      .map((word) => word.replace(/^\$\{?(\w+)\}?$/, (_, name: string) => values[name] ?? `<unset ${name}>`))
      .filter((word) => word !== '');
    expect(words.slice(0, 3)).toEqual(['/usr/bin/docker', 'run', '--rm']);
    const uuid = await scheduleBuild('as-the-unit-does');
    const result = run('docker', words.slice(1));
    expect(result.stderr).toContain(`as-the-unit-does (run ${uuid}) exited 0`);
    expect(result.status).toBe(0);
    await expectBuilt(uuid);
    // --rm: nothing of the worker's container is left.
    expect(spawnSync('docker', ['ps', '--all', '--quiet', '--filter', 'name=builder-worker-debian-12'], { encoding: 'utf8' }).stdout).toBe('');
    expect(containersLabelled('docker', 'builder.worker')).toEqual([]);
  });

  it('builds the ubuntu image from its Containerfile (on the local Debian base: no registry here)', () => {
    const built = run('sh', ['debian/build-worker-image.sh', 'ubuntu'], { BUILDER_BASE: 'builder/debian:12', BUILDER_TAG: 'builder/worker:ubuntu-check' });
    expect(built.status, built.stderr).toBe(0);
    const help = run('docker', ['run', '--rm', '--network', 'none', 'builder/worker:ubuntu-check', 'builder-worker', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('builder-worker PLATFORM [options]');
    run('docker', ['rmi', 'builder/worker:ubuntu-check']);
  }, 600_000);
});
