/**
 * The container sandbox: every job in a fresh docker or podman container made for it from one
 * image, with the run's working directory bind-mounted at /build, optional memory, CPU and process
 * limits, and no network unless asked. The container is removed when the job ends, whatever
 * happened; containers are labelled with their worker, so a worker that starts after a crash
 * removes what its predecessor left.
 *
 * Both engines are driven through their command-line tools, which accept the same arguments for
 * everything used here.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TarSource } from '../protocol/artifacts.js';
import type { Outcome } from '../protocol/types.js';
import {
  ENV_NAME, PROGRESS_NAME, SCRIPT_NAME, TOOLS_NAME, collectJobDirectory, makeJobDirectory, removeJobDirectory, shellExports,
} from './job-directory.js';
import { LineSplitter, pauseOutput } from './line-splitter.js';
import type { JobSpec, KillReason, RunHooks, Sandbox } from './sandbox.js';
import { STOPPED_CHECKS, STOPPED_NOTE, isStopped } from './sandbox-process.js';

export const CONTAINER_ENGINES = ['docker', 'podman'] as const;
export type ContainerEngine = (typeof CONTAINER_ENGINES)[number];
export const CONTAINER_NETWORKS = ['none', 'host'] as const;
export type ContainerNetwork = (typeof CONTAINER_NETWORKS)[number];

/** Where the job's working directory appears inside its container. */
export const CONTAINER_WORKDIR = '/build';
/** Label naming the worker that made a container: `HOSTNAME/PID`. */
const WORKER_LABEL = 'builder.worker';

export interface ContainerOptions {
  engine: ContainerEngine;
  image: string;
  /** Memory limit as the engine takes it (`512m`, `2g`); swap is not allowed beyond it. */
  memory?: string;
  /** CPUs, e.g. `2` or `0.5`. */
  cpus?: string;
  /** Most processes (and threads) the job may have at once. */
  pids?: number;
  network: ContainerNetwork;
  /** Where the builder-XXXXXX working directories are made (default: the OS temp dir). */
  tmpDir?: string;
  /** Milliseconds between SIGTERM and SIGKILL when a job is stopped. */
  killGraceMs?: number;
  /** Milliseconds after which a partial line (no newline yet) is sent anyway. */
  partialLineMs?: number;
}

/** Why the container engine cannot be used at all; the worker says it in one line and exits. */
export class SandboxUnavailable extends Error {}

interface EngineResult { code: number; stdout: string; stderr: string }

/** Runs one engine command to completion. A missing engine is code 127 with a message saying so. */
function engineCommand(engine: ContainerEngine, args: string[], timeoutMs = 120_000): Promise<EngineResult> {
  return new Promise((resolve) => {
    execFile(engine, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error !== null && (error as NodeJS.ErrnoException).code === 'ENOENT') {
        resolve({ code: 127, stdout: '', stderr: `${engine} is not installed or not on PATH (apt-get install -y ${engine === 'docker' ? 'docker.io' : 'podman'})` });
        return;
      }
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      resolve({ code, stdout, stderr: error !== null && stderr.trim() === '' ? error.message : stderr });
    });
  });
}

/** The first meaningful line of an engine's complaint. */
function firstLine(text: string): string {
  return text.split('\n').map((line) => line.trim()).find((line) => line !== '')?.replace(/^Error:\s*/, '') ?? 'no reason given';
}

/** What a failed engine command means, in words that say what to do. */
function explain(engine: ContainerEngine, image: string, result: EngineResult): string {
  const reason = firstLine(result.stderr);
  if (/no such image|image not known|unable to find image|not found: manifest|repository does not exist/i.test(reason)) {
    return `image ${image} is not in ${engine}'s image store: build it (debian/build-base-image.sh makes builder/debian:12) or pull it`;
  }
  if (result.code === 127) return reason;
  if (/cannot connect|connection refused|permission denied.*sock|daemon running/i.test(reason)) {
    return `cannot reach ${engine === 'docker' ? 'the docker daemon' : 'podman'}: ${reason}`;
  }
  return `${engine}: ${reason}`;
}

/** This worker's name on its containers. */
export function workerLabel(pid = process.pid): string {
  return `${os.hostname()}/${pid}`;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A live pid may have been reused by something else: only a builder-worker counts (where /proc tells).
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('builder-worker');
  } catch {
    return true;
  }
}

/**
 * Checks that the engine answers and has the image, then removes containers left on this host by
 * workers that are gone (a crash, SIGKILL, power loss). Throws SandboxUnavailable with one line.
 * Returns what was removed, one line each.
 */
export async function prepareContainerEngine(options: ContainerOptions): Promise<string[]> {
  const { engine, image } = options;
  const check = await engineCommand(engine, ['image', 'inspect', '--format', '{{.Id}}', image], 60_000);
  if (check.code !== 0) throw new SandboxUnavailable(explain(engine, image, check));
  const listed = await engineCommand(engine, ['ps', '--all', '--quiet', '--no-trunc', '--filter', `label=${WORKER_LABEL}`]);
  if (listed.code !== 0) throw new SandboxUnavailable(explain(engine, image, listed));
  const ids = listed.stdout.split('\n').filter((id) => id !== '');
  if (ids.length === 0) return [];
  const inspected = await engineCommand(engine, ['inspect', '--format',
    `{{.Id}} {{index .Config.Labels "${WORKER_LABEL}"}} {{index .Config.Labels "builder.run"}}`, ...ids]);
  const removed: string[] = [];
  const host = os.hostname();
  for (const line of inspected.stdout.split('\n')) {
    const [id, worker, run] = line.split(' ');
    if (id === undefined || worker === undefined) continue;
    const slash = worker.lastIndexOf('/');
    if (worker.slice(0, slash) !== host) continue;
    const pid = Number(worker.slice(slash + 1));
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) continue;
    const rm = await engineCommand(engine, ['rm', '--force', id]);
    if (rm.code !== 0 && !/no such container/i.test(rm.stderr)) throw new SandboxUnavailable(`cannot remove leftover container ${id.slice(0, 12)}: ${firstLine(rm.stderr)}`);
    removed.push(`removed leftover container ${id.slice(0, 12)} of run ${run ?? '?'} (its worker, ${worker}, is gone)`);
  }
  return removed;
}

/** Limits that podman would otherwise raise beyond what this host lets it set (runc then fails). */
function podmanLimits(): string[] {
  const limits = fs.readFileSync('/proc/self/limits', 'utf8');
  const soft = (label: string): string | null => new RegExp(`^${label}\\s+(\\d+)`, 'm').exec(limits)?.[1] ?? null;
  const args: string[] = [];
  const files = soft('Max open files');
  if (files !== null) args.push('--ulimit', `nofile=${files}:${files}`);
  // More processes than pids can exist is meaningless; values above pid_max were refused here.
  let procs = Number(soft('Max processes') ?? 'NaN');
  const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  if (Number.isFinite(pidMax)) procs = Number.isFinite(procs) ? Math.min(procs, pidMax) : pidMax;
  if (Number.isFinite(procs)) args.push('--ulimit', `nproc=${procs}:${procs}`);
  return args;
}

/** The kernel's count of processes killed for lack of memory, host-wide (Linux; null elsewhere). */
function oomKills(): number | null {
  try {
    const match = /^oom_kill (\d+)$/m.exec(fs.readFileSync('/proc/vmstat', 'utf8'));
    return match === null ? null : Number(match[1]);
  } catch {
    return null;
  }
}

interface ContainerState { Status: string; ExitCode: number; OOMKilled: boolean; Error: string; Pid: number; StartedAt: string }

export class ContainerSandbox implements Sandbox {
  private dir: string | null = null;
  /** The engine's working directory while the job runs (see run()); removed with the job's. */
  private scratch: string | null = null;
  private job: JobSpec | null = null;
  private name: string | null = null;
  private created = false;
  private child: ChildProcess | null = null;
  private finished = false;
  private killedFor: KillReason | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private splitters: LineSplitter[] = [];
  private stoppedBy: number | null = null;
  private reclaimed = false;

  constructor(private readonly options: ContainerOptions, private readonly worker = workerLabel()) {}

  get workDir(): string | null {
    return this.dir;
  }

  progressFile(): string | null {
    return this.dir === null ? null : path.join(this.dir, PROGRESS_NAME);
  }

  async prepare(job: JobSpec): Promise<void> {
    this.job = job;
    this.dir = await makeJobDirectory(job.script, this.options.tmpDir);
    this.scratch = await fs.promises.mkdtemp(path.join(this.options.tmpDir ?? os.tmpdir(), 'builder-engine-'));
    const { engine, image, memory, cpus, pids, network } = this.options;
    const name = `builder-${job.uuid}`;
    const args = ['create', '--name', name,
      '--label', `${WORKER_LABEL}=${this.worker}`, '--label', `builder.run=${job.uuid}`, '--label', `builder.job=${job.name}`,
      // An init as PID 1: it passes SIGTERM on to the shell (PID 1 would ignore it) and reaps orphans.
      '--init', '--network', network, '--security-opt', 'no-new-privileges',
      // The console comes through the attached streams; a second copy in the engine's log is waste.
      '--log-driver', 'none',
      '--volume', `${this.dir}:${CONTAINER_WORKDIR}`, '--workdir', CONTAINER_WORKDIR,
      '--env', `BUILDER_UUID=${job.uuid}`, '--env', `BUILDER_JOB=${job.name}`, '--env', `BUILDER_PLATFORM=${job.platform}`,
      '--env', `BUILDER_PROGRESS=${CONTAINER_WORKDIR}/${PROGRESS_NAME}`];
    if (memory !== undefined) args.push('--memory', memory, '--memory-swap', memory);
    if (cpus !== undefined) args.push('--cpus', cpus);
    if (pids !== undefined) args.push('--pids-limit', String(pids));
    if (engine === 'podman') args.push(...podmanLimits());
    // The job's variables (secrets too) go in a file the container reads and removes before the
    // script starts: never on a command line, in the engine's environment or in `inspect`.
    // builder-progress goes first on the image's own PATH; the script then runs in the same process.
    const env = job.env ?? {};
    let prelude = '';
    if (Object.keys(env).length > 0) {
      await fs.promises.writeFile(path.join(this.dir, ENV_NAME), shellExports(env), { mode: 0o600 });
      prelude = `. ${CONTAINER_WORKDIR}/${ENV_NAME}; rm -f ${CONTAINER_WORKDIR}/${ENV_NAME}; `;
    }
    args.push(image, '/bin/sh', '-c', `${prelude}PATH="${CONTAINER_WORKDIR}/${TOOLS_NAME}:$PATH"; export PATH; exec /bin/sh -e ${CONTAINER_WORKDIR}/${SCRIPT_NAME}`);
    const result = await engineCommand(engine, args);
    if (result.code !== 0) throw new Error(`cannot create the job's container: ${explain(engine, image, result)}`);
    this.name = name;
    this.created = true;
  }

  run(hooks: RunHooks): Promise<Outcome> {
    const job = this.job;
    const name = this.name;
    if (job === null || name === null) return Promise.resolve({ kind: 'error', message: 'the sandbox was not prepared' });
    const started = Date.now();
    if (this.killedFor !== null) return Promise.resolve(this.outcome(null, '', job));
    const note = (text: string): void => hooks.lines([{ at: Date.now() - started, stream: 'builder', text }]);

    const oomBefore = oomKills();
    return new Promise((resolve) => {
      // podman's conmon (2.1 on cgroup v1) writes an `oom` file into its working directory when the
      // kernel kills a process of the container for memory: a directory of the job's own, not ours.
      const child = spawn(this.options.engine, ['start', '--attach', name], { stdio: ['ignore', 'pipe', 'pipe'], cwd: this.scratch ?? undefined });
      this.child = child;
      const timeout = setTimeout(() => this.kill({ kind: 'timeout' }), job.timeoutSeconds * 1000);
      const partialMs = this.options.partialLineMs ?? 100;
      const out = new LineSplitter('out', started, hooks.lines, partialMs);
      const err = new LineSplitter('err', started, hooks.lines, partialMs);
      this.splitters = [out, err];
      // The engine's own complaints arrive on stderr too; kept to explain a container that never ran.
      let stderrHead = '';
      child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
      child.stderr.on('data', (chunk: Buffer) => {
        if (stderrHead.length < 4096) stderrHead += chunk.toString('utf8');
        err.push(chunk);
      });
      const stopWatch = this.watchForStop(name, note);
      let done = false;
      const finish = async (error: string | null): Promise<void> => {
        if (done) return;
        done = true;
        clearTimeout(timeout);
        clearInterval(stopWatch);
        out.end();
        err.end();
        const state = await this.inspect(name);
        this.finished = true;
        if (this.killTimer !== null) clearTimeout(this.killTimer);
        const oomAfter = oomKills();
        const oomDuringRun = (oomBefore !== null && oomAfter !== null && oomAfter > oomBefore)
          || (this.scratch !== null && fs.existsSync(path.join(this.scratch, 'oom')));
        resolve(error !== null ? { kind: 'error', message: error } : this.outcome(state, stderrHead, job, oomDuringRun));
      };
      child.on('error', (error) => void finish(`cannot run ${this.options.engine}: ${error.message}`));
      child.on('close', () => void finish(null));
    });
  }

  /**
   * A shell that stops itself (kill -STOP $$) would hang its container until the timeout, as the
   * init does not report it: look at the shell, the init's child, as the plain sandbox does.
   */
  private watchForStop(name: string, note: (text: string) => void): NodeJS.Timeout {
    let shell: number | null = null;
    let checks = 0;
    return setInterval(() => {
      void (async () => {
        if (this.finished || this.killedFor !== null || this.stoppedBy !== null) return;
        if (shell === null) {
          const state = await this.inspect(name);
          if (state === null || state.Pid <= 0) return;
          try {
            shell = Number(fs.readFileSync(`/proc/${state.Pid}/task/${state.Pid}/children`, 'utf8').trim().split(' ')[0]) || null;
          } catch {
            return;
          }
          if (shell === null) return;
        }
        checks = isStopped(shell) ? checks + 1 : 0;
        if (checks < STOPPED_CHECKS || this.finished) return;
        note(STOPPED_NOTE);
        this.stoppedBy = os.constants.signals.SIGSTOP;
        this.signal('KILL');
      })();
    }, 1000);
  }

  private async inspect(name: string): Promise<ContainerState | null> {
    const result = await engineCommand(this.options.engine, ['inspect', '--format', '{{json .State}}', name], 30_000);
    if (result.code !== 0) return null;
    try {
      return JSON.parse(result.stdout) as ContainerState;
    } catch {
      return null;
    }
  }

  private outcome(state: ContainerState | null, stderrHead: string, job: JobSpec, oomDuringRun = false): Outcome {
    if (this.killedFor?.kind === 'timeout') return { kind: 'timeout', seconds: job.timeoutSeconds };
    if (this.killedFor?.kind === 'cancel') return { kind: 'cancelled', message: this.killedFor.message };
    if (this.stoppedBy !== null) return { kind: 'stopped', signal: this.stoppedBy };
    if (state === null) return { kind: 'error', message: 'the job\'s container vanished before its exit status was read' };
    if (state.Status !== 'exited' || state.StartedAt.startsWith('0001-')) {
      return { kind: 'error', message: `the job's container did not run: ${state.Error !== '' ? state.Error : firstLine(stderrHead)}` };
    }
    const code = state.ExitCode;
    // Docker says when the kernel killed a process of the container for its memory limit. Podman
    // on cgroup v1 does not: there a SIGKILL in a container with a memory limit, while conmon left
    // its `oom` file or the host's OOM-kill count rose, is taken as the same (with only the count
    // to go by, a simultaneous OOM elsewhere on the host could be mistaken for it).
    const oomKilled = state.OOMKilled || (oomDuringRun && this.options.memory !== undefined && code === 128 + 9);
    if (oomKilled && code !== 0) {
      return { kind: 'signalled', signal: 9, message: `out of memory: the job exceeded its memory limit of ${this.options.memory ?? 'the host'}` };
    }
    // Inside a container the shell's status comes through the init, which turns "killed by signal
    // N" into 128+N; an explicit `exit 129` … `exit 192` cannot be told apart from it.
    if (code > 128 && code <= 128 + 64) return { kind: 'signalled', signal: code - 128 };
    return { kind: 'exited', code };
  }

  kill(reason: KillReason): void {
    if (this.finished) return;
    this.killedFor ??= reason;
    if (this.child === null) return;
    if (reason.kind === 'lost') {
      this.signal('KILL');
      return;
    }
    this.signal('TERM');
    this.killTimer ??= setTimeout(() => this.signal('KILL'), this.options.killGraceMs ?? 5000);
  }

  /** Signals the container's init; retried while the container is still starting. */
  private signal(signal: 'TERM' | 'KILL', attempt = 0): void {
    if (this.name === null || this.finished) return;
    void engineCommand(this.options.engine, ['kill', '--signal', signal, this.name], 30_000).then((result) => {
      if (result.code !== 0 && !this.finished && attempt < 40) setTimeout(() => this.signal(signal, attempt + 1), 250);
    });
  }

  setPaused(paused: boolean): void {
    pauseOutput(paused, this.splitters, [this.child?.stdout, this.child?.stderr]);
  }

  async *collect(notes: (text: string) => void): AsyncGenerator<TarSource> {
    if (this.dir === null) return;
    await this.reclaim(notes);
    yield* collectJobDirectory(this.dir, notes);
  }

  /**
   * Jobs run as root in their container. A worker that is not root gets the files back (to read
   * and remove them) through one more short container that changes their owner.
   */
  private async reclaim(report: (problem: string) => void): Promise<void> {
    const uid = process.getuid?.() ?? 0;
    if (uid === 0 || this.reclaimed || this.dir === null) return;
    this.reclaimed = true;
    const result = await engineCommand(this.options.engine, ['run', '--rm', '--network', 'none', '--log-driver', 'none',
      '--volume', `${this.dir}:${CONTAINER_WORKDIR}`, this.options.image, 'chown', '-R', `${uid}:${process.getgid?.() ?? 0}`, CONTAINER_WORKDIR]);
    if (result.code !== 0) report(`cannot hand the job's files back to the worker: ${firstLine(result.stderr)}`);
  }

  async cleanUp(report: (problem: string) => void = () => {}): Promise<void> {
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    this.finished = true;
    if (this.created && this.name !== null) {
      this.created = false;
      const rm = await engineCommand(this.options.engine, ['rm', '--force', this.name]);
      if (rm.code !== 0 && !/no such container/i.test(rm.stderr)) report(`could not remove the job's container ${this.name}: ${firstLine(rm.stderr)}`);
    }
    if (this.dir === null) return;
    await this.reclaim(report);
    const dir = this.dir;
    this.dir = null;
    await removeJobDirectory(dir, report);
    if (this.scratch !== null) await fs.promises.rm(this.scratch, { recursive: true, force: true }).catch(() => {});
    this.scratch = null;
  }
}
