/**
 * Webhooks: when a run is queued, starts and finishes, every URL of its job (`schedule --notify`)
 * and of the server (`builder-server --notify`) receives a POST with a JSON document about the run.
 *
 * A delivery is written to SQLite inside the transaction of the event it announces, so a crash can
 * neither lose one nor announce an event that did not happen. Sending is asynchronous and never
 * holds up dispatch. Each URL gets its events one at a time, oldest first; a failed attempt is
 * retried after a wait that doubles each time, up to --notify-attempts attempts, then recorded as
 * failed (logged, and listed by `show`) and the URL's next event goes out.
 */
import crypto from 'node:crypto';
import { describeOutcome, runStatus } from '../protocol/types.js';
import type { RunSummary } from '../protocol/types.js';
import type { ServerContext } from './server.js';
import type { PendingDelivery, RunEvent } from './store.js';
import { SOFTWARE } from './version.js';
import { pathUri } from './web-render.js';

/** How long one attempt may take before it counts as failed. */
const ATTEMPT_TIMEOUT_MS = 10_000;
/** At most this many deliveries in flight at once (each to a different URL). */
const MAX_IN_FLIGHT = 16;
/** The longest wait between two attempts. */
const MAX_BACKOFF_MS = 3600_000;

/** The signature header: `sha256=` and the hex HMAC-SHA256 of the body under the shared secret. */
export const SIGNATURE_HEADER = 'x-builder-signature-256';

export function signBody(secret: Buffer, body: string): string {
  return `sha256=${crypto.createHmac('sha256', secret).update(body).digest('hex')}`;
}

export class Notifier {
  private readonly inFlight = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private woken = false;
  private stopped = false;

  constructor(private readonly context: ServerContext) {}

  /** The base of links in bodies: --public-url, else the web view's address, else none. */
  private get base(): string | null {
    const { publicUrl, http, tls } = this.context.options;
    if (publicUrl !== null) return publicUrl.replace(/\/+$/, '');
    if (http === null) return null;
    return `${tls === null ? 'http' : 'https'}://${this.context.webAddress ?? http}`;
  }

  /**
   * The store's run-event hook, called inside the event's transaction: records one delivery per
   * URL. Cheap when no URL is configured (one lookup of the job's URLs).
   */
  record(event: RunEvent, uuid: string): void {
    const { store, options } = this.context;
    const urls = [...new Set([...options.notify, ...store.notifyOfRun(uuid)])];
    if (urls.length === 0) return;
    const run = store.getRun(uuid);
    if (run === null) return;
    store.addDeliveries(uuid, event, urls, JSON.stringify(this.body(event, run)), Date.now());
    this.wakeSoon();
  }

  /** The document a receiver gets. Times are ISO 8601 in UTC, as in the CLI's --json. */
  private body(event: RunEvent, run: RunSummary): Record<string, unknown> {
    const base = this.base;
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    const artifacts = event === 'finished' ? this.context.store.artifactsOf(run.uuid) : [];
    return {
      event,
      job: run.job,
      run: run.uuid,
      platform: run.platform,
      status: runStatus(run),
      outcome: run.outcome,
      outcomeText: run.state === 'finished' ? describeOutcome(run.outcome) : run.state,
      worker: run.worker,
      queuedAt: iso(run.queuedAt),
      startedAt: iso(run.startedAt),
      finishedAt: iso(run.finishedAt),
      links: base === null ? null : {
        run: `${base}/run/${run.uuid}`,
        console: `${base}/run/${run.uuid}/console`,
        job: `${base}/job/${encodeURIComponent(run.job)}`,
      },
      artifacts: artifacts.map((artifact) => ({
        ...artifact,
        url: base === null ? null : `${base}/run/${run.uuid}/artifact/${pathUri(artifact.path)}`,
      })),
    };
  }

  /** Starts sending what was left pending by a previous server. */
  start(): void {
    this.wake();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
  }

  /** Looks at the queue once the current transaction has committed. */
  private wakeSoon(): void {
    if (this.woken) return;
    this.woken = true;
    setImmediate(() => {
      this.woken = false;
      this.wake();
    });
  }

  /** Sends each URL's oldest pending delivery that is due, and sets a timer for the next one due. */
  private wake(): void {
    if (this.stopped) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const now = Date.now();
    let nextAt = Infinity;
    try {
      for (const delivery of this.context.store.deliveryHeads()) {
        if (this.inFlight.has(delivery.url)) continue;
        if (delivery.nextAt > now) {
          nextAt = Math.min(nextAt, delivery.nextAt);
          continue;
        }
        if (this.inFlight.size >= MAX_IN_FLIGHT) break;
        this.inFlight.add(delivery.url);
        void this.send(delivery).finally(() => {
          this.inFlight.delete(delivery.url);
          this.wakeSoon();
        });
      }
    } catch (error) {
      this.context.log('error', { during: 'webhooks', problem: (error as Error).message });
      nextAt = now + 5000;
    }
    if (Number.isFinite(nextAt)) {
      this.timer = setTimeout(() => this.wake(), Math.min(Math.max(nextAt - now, 0), 2 ** 31 - 1));
    }
  }

  private async send(delivery: PendingDelivery): Promise<void> {
    const { options, log, store } = this.context;
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'user-agent': SOFTWARE,
      'x-builder-event': delivery.event,
      'x-builder-delivery': String(delivery.id),
    };
    if (options.notifySecret !== null) headers[SIGNATURE_HEADER] = signBody(options.notifySecret, delivery.body);
    let problem: string | null = null;
    try {
      const response = await fetch(delivery.url, {
        method: 'POST', headers, body: delivery.body, redirect: 'manual', signal: AbortSignal.timeout(ATTEMPT_TIMEOUT_MS),
      });
      await response.arrayBuffer().catch(() => undefined);
      if (response.status < 200 || response.status > 299) problem = `HTTP ${response.status}${response.statusText === '' ? '' : ` ${response.statusText}`}`;
    } catch (error) {
      problem = fetchProblem(error);
    }
    if (this.stopped) return;
    const attempt = delivery.attempts + 1;
    const now = Date.now();
    const fields = { run: delivery.run, event: delivery.event, url: delivery.url, attempt: `${attempt}/${options.notifyAttempts}` };
    try {
      if (problem === null) {
        store.deliveryAttempt(delivery.id, { state: 'delivered', error: null, retryAt: now }, now);
        log('notify', { ...fields, result: 'delivered' });
      } else if (attempt >= options.notifyAttempts) {
        store.deliveryAttempt(delivery.id, { state: 'failed', error: problem, retryAt: now }, now);
        log('notify', { ...fields, result: 'failed', problem, note: 'no more attempts' });
      } else {
        const wait = Math.min(options.notifyBackoffMs * 2 ** (attempt - 1), MAX_BACKOFF_MS);
        store.deliveryAttempt(delivery.id, { state: 'pending', error: problem, retryAt: now + wait }, now);
        log('notify', { ...fields, result: 'retry', problem, retryInMs: wait });
      }
    } catch (error) {
      log('error', { during: 'webhooks', problem: (error as Error).message });
    }
  }
}

/** What went wrong with a request, in a few words: ECONNREFUSED, a timeout, a bad certificate... */
function fetchProblem(error: unknown): string {
  if (error instanceof DOMException && error.name === 'TimeoutError') return `no answer within ${ATTEMPT_TIMEOUT_MS / 1000}s`;
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}
