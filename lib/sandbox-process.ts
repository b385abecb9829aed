/**
 * The plain-process sandbox: a fresh temporary directory per job, the script written into it with
 * mode 0500, run as `/bin/sh -e` in its own process group with stdin from /dev/null. The whole group
 * is killed when the job ends, times out, is cancelled or the server is lost, so no background
 * process outlives its job.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TarSource } from '../protocol/artifacts.js';
import type { Outcome } from '../protocol/types.js';
import { PROGRESS_NAME, SCRIPT_NAME, TOOLS_NAME, collectJobDirectory, makeJobDirectory, removeJobDirectorySoon } from './job-directory.js';
import { LineSplitter, pauseOutput } from './line-splitter.js';
import type { JobSpec, KillReason, RunHooks, Sandbox } from './sandbox.js';

/** Seconds a shell must stay stopped (checked once a second) before the run ends as `stopped`. */
export const STOPPED_CHECKS = 3;
/** The console note when a stopped shell is ended. */
export const STOPPED_NOTE = `the job's shell has been stopped for ${STOPPED_CHECKS}s; ending it`;

/**
 * Whether a process is stopped (state T). Linux tells in /proc; elsewhere (FreeBSD) ps(1) does. The
 * signal that stopped it cannot be learnt this way: it is reported as SIGSTOP.
 */
export function isStopped(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) === 'T';
  } catch {
    if (os.platform() === 'linux') return false;
    const ps = spawnSync('ps', ['-o', 'state=', '-p', String(pid)], { encoding: 'utf8' });
    return ps.status === 0 && ps.stdout.trim().startsWith('T');
  }
}

/** Variables passed through from the worker's environment; everything else is left out. */
const PASSED_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TERM'];

export interface ProcessSandboxOptions {
  /** Where the builder-XXXXXX directories are made (default: the OS temp dir). */
  tmpDir?: string;
  /** Milliseconds between SIGTERM and SIGKILL when a job is stopped. */
  killGraceMs?: number;
  /** Milliseconds after which a partial line (no newline yet) is sent anyway. */
  partialLineMs?: number;
  /** Milliseconds to keep reading output after the shell exited (for processes outside its group). */
  drainMs?: number;
}

export class ProcessSandbox implements Sandbox {
  private dir: string | null = null;
  private job: JobSpec | null = null;
  private child: ChildProcess | null = null;
  private killedFor: KillReason | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private splitters: LineSplitter[] = [];
  private drainTimer: NodeJS.Timeout | null = null;
  /** The shell exited and its group was killed: never signal that process group id again. */
  private groupGone = false;
  private stopReading: ((why: string) => void) | null = null;
  /** Set when the shell stayed stopped: the run is reported as `stopped`. */
  private stoppedBy: number | null = null;

  constructor(private readonly options: ProcessSandboxOptions = {}) {}

  get workDir(): string | null {
    return this.dir;
  }

  progressFile(): string | null {
    return this.dir === null ? null : path.join(this.dir, PROGRESS_NAME);
  }

  async prepare(job: JobSpec): Promise<void> {
    this.job = job;
    this.dir = await makeJobDirectory(job.script, this.options.tmpDir);
  }

  run(hooks: RunHooks): Promise<Outcome> {
    const job = this.job;
    const dir = this.dir;
    if (job === null || dir === null) return Promise.resolve({ kind: 'error', message: 'the sandbox was not prepared' });
    const started = Date.now();
    const env: NodeJS.ProcessEnv = {};
    for (const key of PASSED_ENV) if (process.env[key] !== undefined) env[key] = process.env[key];
    Object.assign(env, job.env ?? {}, {
      BUILDER_UUID: job.uuid, BUILDER_JOB: job.name, BUILDER_PLATFORM: job.platform, BUILDER_PROGRESS: path.join(dir, PROGRESS_NAME),
    });
    env.PATH = env.PATH === undefined || env.PATH === '' ? path.join(dir, TOOLS_NAME) : `${path.join(dir, TOOLS_NAME)}:${env.PATH}`;

    return new Promise((resolve) => {
      let child: ChildProcess;
      try {
        child = spawn('/bin/sh', ['-e', path.join(dir, SCRIPT_NAME)], {
          cwd: dir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
        });
      } catch (error) {
        resolve({ kind: 'error', message: `cannot start /bin/sh: ${(error as Error).message}` });
        return;
      }
      this.child = child;
      const timeout = setTimeout(() => this.kill({ kind: 'timeout' }), job.timeoutSeconds * 1000);
      // Node never reports a stopped child (waitpid without WUNTRACED), so look: a shell that stays
      // stopped (kill -STOP $$) would otherwise hang until its timeout. Reported as `stopped`.
      let stoppedChecks = 0;
      const stopWatch = setInterval(() => {
        if (child.pid === undefined || this.groupGone || this.killedFor !== null) return;
        stoppedChecks = isStopped(child.pid) ? stoppedChecks + 1 : 0;
        if (stoppedChecks < STOPPED_CHECKS) return;
        hooks.lines([{ at: Date.now() - started, stream: 'builder', text: STOPPED_NOTE }]);
        this.stoppedBy = os.constants.signals.SIGSTOP;
        this.signalGroup('SIGKILL');
      }, 1000);
      const partialMs = this.options.partialLineMs ?? 100;
      const out = new LineSplitter('out', started, hooks.lines, partialMs);
      const err = new LineSplitter('err', started, hooks.lines, partialMs);
      this.splitters = [out, err];
      const readError = (which: string) => (error: Error): void => {
        hooks.lines([{ at: Date.now() - started, stream: 'builder', text: `cannot read the job's ${which}: ${error.message}` }]);
      };
      child.stdout?.on('data', (chunk: Buffer) => out.push(chunk));
      child.stderr?.on('data', (chunk: Buffer) => err.push(chunk));
      child.stdout?.on('error', readError('stdout'));
      child.stderr?.on('error', readError('stderr'));

      let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
      let finished = false;
      const finish = (): void => {
        if (finished) return;
        finished = true;
        clearTimeout(timeout);
        clearInterval(stopWatch);
        if (this.killTimer !== null) clearTimeout(this.killTimer);
        if (this.drainTimer !== null) clearTimeout(this.drainTimer);
        out.end();
        err.end();
        resolve(this.outcome(exit, job));
      };
      // After the shell has exited, its pipes close once every process holding them has gone. One
      // that left the process group (setsid) may hold them forever: stop reading after a grace period.
      this.stopReading = (why: string): void => {
        if (finished) return;
        hooks.lines([{ at: Date.now() - started, stream: 'builder', text: why }]);
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish();
      };
      const armDrain = (ms: number): void => {
        this.drainTimer = setTimeout(() => {
          if (this.splitters.some((splitter) => splitter.paused)) armDrain(ms);
          else this.stopReading?.('a process outside the job\'s process group kept its output open; stopped reading it');
        }, ms);
      };
      child.on('error', (error) => {
        clearTimeout(timeout);
        clearInterval(stopWatch);
        finished = true;
        resolve({ kind: 'error', message: `cannot run the job: ${error.message}` });
      });
      child.on('exit', (code, signal) => {
        exit = { code, signal };
        // Whatever the script left running in its process group ends with it; their output that is
        // already in the pipes is still read before 'close'. After this, the group is not signalled
        // again: its id may be reused by an unrelated process.
        this.signalGroup('SIGKILL');
        this.groupGone = true;
        // A stopped job (timeout, cancel) gets less time: it already ran over.
        armDrain(this.killedFor !== null ? 200 : (this.options.drainMs ?? 2000));
      });
      child.on('close', finish);
    });
  }

  private outcome(exit: { code: number | null; signal: NodeJS.Signals | null } | null, job: JobSpec): Outcome {
    if (this.killedFor?.kind === 'timeout') return { kind: 'timeout', seconds: job.timeoutSeconds };
    if (this.killedFor?.kind === 'cancel') return { kind: 'cancelled', message: this.killedFor.message };
    if (this.stoppedBy !== null) return { kind: 'stopped', signal: this.stoppedBy };
    if (exit === null) return { kind: 'error', message: 'the job ended without an exit status' };
    if (exit.code !== null) return { kind: 'exited', code: exit.code };
    const signal = exit.signal === null ? 0 : (os.constants.signals[exit.signal] ?? 0);
    return signal > 0 ? { kind: 'signalled', signal } : { kind: 'error', message: `the job ended with unknown signal ${String(exit.signal)}` };
  }

  kill(reason: KillReason): void {
    if (this.child === null) return;
    if (this.groupGone) {
      // The shell has exited but something outside its group holds the output open.
      this.killedFor ??= reason;
      this.stopReading?.('the job was stopped; not waiting for its output to close');
      return;
    }
    this.killedFor ??= reason;
    if (reason.kind === 'lost') {
      this.signalGroup('SIGKILL');
      return;
    }
    this.signalGroup('SIGTERM');
    this.signalGroup('SIGCONT');
    this.killTimer ??= setTimeout(() => this.signalGroup('SIGKILL'), this.options.killGraceMs ?? 5000);
  }

  private signalGroup(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined || this.groupGone) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // ESRCH: the group is already gone.
    }
  }

  setPaused(paused: boolean): void {
    pauseOutput(paused, this.splitters, [this.child?.stdout, this.child?.stderr]);
  }

  async *collect(notes: (text: string) => void): AsyncGenerator<TarSource> {
    if (this.dir !== null) yield* collectJobDirectory(this.dir, notes);
  }

  async cleanUp(report: (problem: string) => void = () => {}): Promise<void> {
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    this.signalGroup('SIGKILL');
    if (this.dir === null) return;
    const dir = this.dir;
    this.dir = null;
    removeJobDirectorySoon(dir, report);
  }
}
