/**
 * The one interface through which a worker runs a job, whatever isolates it (a plain process group
 * today; containers and jails plug in behind the same five steps). A sandbox is used once:
 * prepare → run → (kill) → collect → cleanUp.
 */
import type { TarSource } from '../protocol/artifacts.js';
import type { ConsoleChunk, Outcome } from '../protocol/types.js';

export interface JobSpec {
  uuid: string;
  name: string;
  platform: string;
  script: string;
  timeoutSeconds: number;
  /** Variables for the job (secrets included), on top of builder's own BUILDER_*. */
  env?: Record<string, string>;
}

export interface RunHooks {
  /** Console lines as they come, in order, as chunks (lines of one read together). Called often; must not block. */
  lines(chunks: ConsoleChunk[]): void;
}

/** Why a job is being stopped from outside; decides the outcome that is reported. */
export type KillReason = { kind: 'cancel'; message: string } | { kind: 'timeout' } | { kind: 'lost' };

export interface Sandbox {
  /** Creates the working directory and writes the script. Throws with a reason the run fails with. */
  prepare(job: JobSpec): Promise<void>;
  /** Runs the script to its end (or until killed) and says how it ended. Never rejects. */
  run(hooks: RunHooks): Promise<Outcome>;
  /** Stops the job's whole process group: SIGTERM, then SIGKILL after the grace period. */
  kill(reason: KillReason): void;
  /** Pauses or resumes reading the job's output (backpressure from a slow server connection). */
  setPaused(paused: boolean): void;
  /** The files the job left behind, as tar sources; `notes` receives what was skipped and why. */
  collect(notes: (text: string) => void): AsyncGenerator<TarSource>;
  /** Where the job writes its progress lines on this host ($BUILDER_PROGRESS), once prepared. */
  progressFile(): string | null;
  /** Removes everything the job left. Never throws; what could not be removed goes to `report`. */
  cleanUp(report?: (problem: string) => void): Promise<void>;
}
