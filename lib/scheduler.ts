/**
 * Wakes at the exact time the earliest schedule falls due — one timer, re-armed after every change —
 * rather than polling on a tick. When it fires, the store queues every due job and moves each schedule
 * on in one transaction; the server then hands the new runs to waiting workers.
 */
import type { DueJob, Enqueued, Store } from './store.js';
import { loadCronParser, nextDue } from './period.js';

// setTimeout cannot wait longer than 2^31-1 ms (about 24.8 days); a later due time is reached in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;

export class Scheduler {
  private timer: NodeJS.Timeout | null = null;
  private armedFor: number | null = null;

  constructor(private readonly store: Store, private readonly onQueued: (runs: Enqueued[]) => void,
    private readonly onError: (error: Error) => void = () => {}, private readonly clock: () => number = Date.now) {
    loadCronParser();
  }

  /** Queues whatever is due now, then sets the timer for the next due time. Call after every change. */
  rearm(): void {
    const now = this.clock();
    const queued = this.store.enqueueDue(now, (job: DueJob) => nextDue(job.period, now, job.nextDue ?? now));
    if (queued.length > 0) this.onQueued(queued);
    const due = this.store.earliestDue();
    if (due === this.armedFor && this.timer !== null) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.armedFor = due;
    if (due === null) return;
    const delay = Math.min(Math.max(due - this.clock(), 0), MAX_TIMER_MS);
    this.timer = setTimeout(() => this.wake(), delay);
  }

  private wake(): void {
    this.timer = null;
    this.armedFor = null;
    try {
      this.rearm();
    } catch (error) {
      // The store refused (a full disk, say): say so and try again shortly; nothing due is lost,
      // since next_due only moves in the same transaction that queues the job.
      this.onError(error as Error);
      this.timer = setTimeout(() => this.wake(), 1000);
    }
  }

  /** When the timer will next fire, or null when nothing is scheduled. */
  get nextWake(): number | null {
    return this.armedFor;
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
