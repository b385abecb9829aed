/**
 * Retention's second half: the store removes old runs' rows in the transaction that finishes a
 * newer run (Store.pruneLocked) and lists their files as garbage; this deletes those files — an
 * artifact file only when no run references its hash any more — and hands free database pages
 * back to the file system on a schedule.
 *
 * Files are deleted only while no upload is in progress, in one synchronous pass: an upload that
 * stored a file under a hash but has not committed its rows yet can never lose that file.
 */
import fs from 'node:fs';
import type { ServerContext } from './server.js';

const RETRY_MS = 2000;

export class Retention {
  private retry: NodeJS.Timeout | null = null;
  private vacuumTimer: NodeJS.Timeout | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;

  constructor(private readonly context: ServerContext) {}

  /** At start: applies --keep-runs to every job, deletes what is listed, starts the vacuum and checkpoint timers. */
  start(vacuumIntervalSeconds: number): void {
    const removed = this.context.store.pruneAll();
    if (removed > 0) this.context.log('retention', { removed, reason: 'start' });
    this.collect();
    this.vacuumTimer = setInterval(() => this.context.dispatcher.guarded('vacuum', () => this.vacuum()), vacuumIntervalSeconds * 1000);
    this.vacuumTimer.unref();
    // Once a second: the WAL stays small, and no commit pays for copying it (see Store.checkpoint).
    this.checkpointTimer = setInterval(() => this.context.dispatcher.guarded('checkpoint', () => this.context.store.checkpoint()), 1000);
    this.checkpointTimer.unref();
  }

  stop(): void {
    if (this.retry !== null) clearTimeout(this.retry);
    if (this.vacuumTimer !== null) clearInterval(this.vacuumTimer);
    if (this.checkpointTimer !== null) clearInterval(this.checkpointTimer);
  }

  /** Deletes the files of removed runs now, or soon if an upload is in progress. */
  collect(): void {
    const { store, artifacts, consoles, dispatcher, log } = this.context;
    if (dispatcher.uploading) {
      this.retry ??= setTimeout(() => {
        this.retry = null;
        dispatcher.guarded('collecting garbage', () => this.collect());
      }, RETRY_MS);
      return;
    }
    for (;;) {
      const garbage = store.garbage();
      const total = garbage.artifacts.length + garbage.consoles.length + garbage.referenced.length;
      if (total === 0) return;
      for (const sha256 of garbage.artifacts) fs.rmSync(artifacts.fileOf(sha256), { force: true });
      for (const uuid of garbage.consoles) fs.rmSync(consoles.fileOf(uuid), { force: true });
      store.clearGarbage('artifact', [...garbage.artifacts, ...garbage.referenced]);
      store.clearGarbage('console', garbage.consoles);
      log('garbage', { artifacts: garbage.artifacts.length, consoles: garbage.consoles.length, kept: garbage.referenced.length });
    }
  }

  /** Also collects what runs removed outside a finish left (a cancel, a replaced job). */
  vacuum(): void {
    this.collect();
    const { freedPages } = this.context.store.vacuum();
    if (freedPages > 0) this.context.log('vacuum', { freedPages });
  }
}
