/**
 * What only a container sandbox promises, for docker and podman alike: the job sees nothing of the
 * host, limits hold and are reported, no container outlives its job, and a worker that starts after
 * a crash removes what the crashed one left — but never a live worker's container.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BASE_IMAGE, containersLabelled } from './containers.js';
import {
  type ServerHandle, client, killAll, scheduleScript, show, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';
import { consoleOf } from './sandbox-conformance.js';

export function containerSuite(engine: 'docker' | 'podman'): void {
  describe(`${engine} sandbox`, () => {
    let dir: string;
    let server: ServerHandle;
    const sandbox = ['--sandbox', engine, '--image', BASE_IMAGE];
    const noContainerFor = (uuid: string): Promise<true> => waitFor(`no container for run ${uuid}`,
      () => containersLabelled(engine, `builder.run=${uuid}`).length === 0 || null, 30_000);

    beforeAll(async () => {
      dir = tempDir();
      server = await startServer(path.join(dir, 'state'));
    });
    afterEach(async () => {
      // Only workers: the server stays up for the whole file.
      await Promise.all([...running].map(async (proc) => {
        proc.kill('SIGKILL');
        await proc.exit;
      }));
      running.clear();
    });
    afterAll(async () => {
      await killAll();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const running = new Set<ReturnType<typeof startWorker>>();
    const worker = (extra: string[] = []): ReturnType<typeof startWorker> => {
      const proc = startWorker(server, [...sandbox, ...extra], undefined, dir);
      running.add(proc);
      return proc;
    };

    it('shows the job nothing of the host: only its own directory, no network by default', async () => {
      const secret = path.join(dir, 'host-secret.txt');
      fs.writeFileSync(secret, 'do not read\n');
      const uuid = await scheduleScript(server, dir, 'peek', [
        `if [ -e ${secret} ]; then echo "sees ${secret}"; else echo "no host secret"; fi`,
        `if [ -e ${dir} ]; then echo "sees the worker's directory"; else echo "no worker directory"; fi`,
        'pwd',
        'ls -A .',
        'ls /sys/class/net',
        '',
      ].join('\n'));
      expect((await worker().exit).code).toBe(0);
      expect((await show(server, uuid)).outcome).toEqual({ kind: 'exited', code: 0 });
      expect((await consoleOf(server, uuid)).map((line) => line.text)).toEqual([
        'no host secret', 'no worker directory', '/build', '.builder-bin', '.builder-progress', '.builder-script.sh', 'lo',
      ]);
    });

    it('stops a fork bomb at the pids limit and reports the failed forks', async () => {
      const uuid = await scheduleScript(server, dir, 'fork-bomb',
        'bomb() { bomb | bomb & }\nbomb\nwhile :; do sleep 1; done\n', ['--timeout', '8s']);
      expect((await worker(['--pids', '64']).exit).code).toBe(0);
      const run = await show(server, uuid);
      // Either the shell itself could not fork (sh -e ends it) or the timeout did; never the host.
      expect(run.outcome?.kind === 'timeout' || (run.outcome?.kind === 'exited' && run.outcome.code !== 0)).toBe(true);
      expect((await consoleOf(server, uuid)).some((line) => line.stream === '!' && /can't fork|cannot fork|Resource temporarily unavailable/i.test(line.text))).toBe(true);
      await noContainerFor(uuid);
      // The worker's host still forks: the next job runs as usual.
      const next = await scheduleScript(server, dir, 'after-bomb', 'echo fine\n');
      expect((await worker(['--pids', '64']).exit).code).toBe(0);
      expect((await show(server, next)).outcome).toEqual({ kind: 'exited', code: 0 });
    });

    it('reports a job killed for exceeding its memory limit, with that reason', async () => {
      const uuid = await scheduleScript(server, dir, 'memory-hog', 'echo start\nhead -c 400m /dev/zero | tail > /dev/null\necho not reached\n');
      expect((await worker(['--memory', '64m']).exit).code).toBe(0);
      expect((await show(server, uuid)).outcome).toEqual({
        kind: 'signalled', signal: 9, message: 'out of memory: the job exceeded its memory limit of 64m',
      });
      // The shell says which of its commands was killed.
      expect(await consoleOf(server, uuid)).toEqual([{ stream: '|', text: 'start' }, { stream: '!', text: 'Killed' }]);
      expect((await client(server, ['show', uuid])).stdout).toContain('signalled 9: out of memory: the job exceeded its memory limit of 64m');
    });

    it('leaves no container behind after a timeout or a cancel', async () => {
      const timedOut = await scheduleScript(server, dir, 'timing-out', 'sleep 60\n', ['--timeout', '1s']);
      expect((await worker().exit).code).toBe(0);
      expect((await show(server, timedOut)).outcome).toEqual({ kind: 'timeout', seconds: 1 });
      expect(containersLabelled(engine, `builder.run=${timedOut}`)).toEqual([]);

      const cancelled = await scheduleScript(server, dir, 'cancelled', 'echo up\nsleep 60\n');
      const proc = worker();
      await waitForState(server, cancelled, 'running');
      await waitFor('its container', () => containersLabelled(engine, `builder.run=${cancelled}`).length === 1 || null);
      expect((await client(server, ['cancel', cancelled])).code).toBe(0);
      expect((await proc.exit).code).toBe(0);
      expect((await show(server, cancelled)).outcome?.kind).toBe('cancelled');
      expect(containersLabelled(engine, `builder.run=${cancelled}`)).toEqual([]);
    });

    it('a worker killed with SIGKILL leaves a container that the next start removes, and never a live worker\'s', async () => {
      const uuid = await scheduleScript(server, dir, 'orphan', 'echo up\nsleep 300\n', ['--timeout', '20s']);
      const first = worker();
      await waitForState(server, uuid, 'running');
      await waitFor('its container', () => containersLabelled(engine, `builder.run=${uuid}`).length === 1 || null);
      first.kill('SIGKILL');
      await first.exit;
      // The job's container runs on without its worker.
      expect(containersLabelled(engine, `builder.run=${uuid}`)).toEqual([`builder-${uuid}`]);
      // The server queues the job again as a new run; a live worker takes it…
      const second = worker();
      await waitFor('the second worker to report the leftover', () => /removed leftover container \w+ of run (\S+)/.exec(second.stderr)?.[1], 30_000)
        .then((run) => expect(run).toBe(uuid));
      expect(containersLabelled(engine, `builder.run=${uuid}`)).toEqual([]);
      const rerun = await waitFor('the re-queued run to start', async () => {
        const runs = JSON.parse((await client(server, ['results', 'orphan', '--json'])).stdout) as { uuid: string; state: string }[];
        return runs.find((run) => run.uuid !== uuid && run.state === 'running')?.uuid;
      }, 30_000);
      await waitFor('its container', () => containersLabelled(engine, `builder.run=${rerun}`).length === 1 || null);
      // …and a third worker starting meanwhile leaves that live worker's container alone.
      const third = startProcess('builder-worker.js', ['another-platform', '--remote', server.address, ...sandbox]);
      running.add(third);
      await waitFor('the third worker to connect', () => third.stderr.includes('connected to') || null);
      expect(third.stderr).not.toContain('removed leftover');
      expect(containersLabelled(engine, `builder.run=${rerun}`)).toEqual([`builder-${rerun}`]);
      expect((await client(server, ['cancel', rerun])).code).toBe(0);
      expect((await second.exit).code).toBe(0);
      await noContainerFor(rerun);
    });

    it('says in one line when the image or the engine is missing', async () => {
      const missingImage = startProcess('builder-worker.js', ['x', '--remote', server.address, '--sandbox', engine, '--image', 'builder/no-such-image:1']);
      expect((await missingImage.exit).code).toBe(4);
      expect(missingImage.stderr).toBe(`builder-worker: image builder/no-such-image:1 is not in ${engine}'s image store: `
        + 'build it (debian/build-base-image.sh makes builder/debian:12) or pull it\n');
      const unreachable = engine === 'docker' ? { DOCKER_HOST: 'unix:///nonexistent/docker.sock' } : { CONTAINER_HOST: 'unix:///nonexistent/podman.sock' };
      const noDaemon = startProcess('builder-worker.js', ['x', '--remote', server.address, ...sandbox], unreachable);
      expect((await noDaemon.exit).code).toBe(4);
      expect(noDaemon.stderr).toMatch(new RegExp(`^builder-worker: cannot reach ${engine === 'docker' ? 'the docker daemon' : 'podman'}: .+\n$`));
    });
  });
}
